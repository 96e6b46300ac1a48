#!/usr/bin/env bash
# Issue 14, item 5: each Python port against the real code of the release it claims, 1,000,000
# fuzz cases per pair (seed 1), and the real code against the SDM. Fetches the sources first.
#   bash scripts/realcode_campaign.sh [CASES]      (default 1000000; progress on stderr)
# The same campaigns run as `pytest --run-slow tests/test_realcode_debian.py`.
set -euo pipefail
cases="${1:-1000000}"
vmxaddr sources fetch linux-6.1 linux-6.12
for pair in "kvm-linux-6.1 kvm-82277eee" "kvm-linux-6.12 kvm-703d794c"; do
    set -- $pair
    echo "== $1 (real code) against $2 (port), $cases cases"
    vmxaddr fuzz --model "$1" --against "$2" --seed 1 --max-examples "$cases" --hypothesis-examples 0
done
