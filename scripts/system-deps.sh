#!/usr/bin/env bash
# Install the system packages the Bochs oracle needs (issue 8).
# Idempotent; run as root (CI runs as root). Debian bookworm's bochs 2.7 is built
# with VMX. `bochs` depends on some GUI package (bochs-wx | bochs-gui); bochs-term is the
# lightest one providing bochs-gui. The nogui display library itself is built into bochs.
set -euo pipefail

need=()
command -v bochs >/dev/null 2>&1 || need+=(bochs bochs-term)
[ -e /usr/share/bochs/BIOS-bochs-latest ] || need+=(bochsbios)
command -v as >/dev/null 2>&1 && command -v ld >/dev/null 2>&1 && command -v objcopy >/dev/null 2>&1 || need+=(binutils)

if [ ${#need[@]} -eq 0 ]; then
    echo "system-deps: bochs, bochsbios and binutils already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# apt-get update only when the package lists have never been fetched or the
# install fails on a stale list.
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    $SUDO apt-get update -q
fi
if ! $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
echo "system-deps: installed ${need[*]}"
