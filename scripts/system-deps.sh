#!/usr/bin/env bash
# Install the system packages the Bochs oracle needs (issue 8), the site's browser test (issue 17) and
# the LLVM oracle and APX scan tests (issue 23: llvm-19's libLLVM-19, llvm-mc-19, llvm-objdump-19).
# Idempotent; run as root (CI runs as root). Debian bookworm's bochs 2.7 is built
# with VMX but without the `nogui` display library; the oracle uses `term` (bochs-term)
# on a pseudo-terminal. Listing bochs-term with bochs also keeps apt from pulling bochs-wx.
set -euo pipefail

need=()
command -v bochs >/dev/null 2>&1 || need+=(bochs)
# the oracle's display: `term` on a pseudo-terminal (the rfb fallback waits ~30 s per boot)
ls /usr/lib/*/bochs/plugins/libbx_term_gui.so* >/dev/null 2>&1 || need+=(bochs-term)
[ -e /usr/share/bochs/BIOS-bochs-latest ] || need+=(bochsbios)
command -v as >/dev/null 2>&1 && command -v ld >/dev/null 2>&1 && command -v objcopy >/dev/null 2>&1 || need+=(binutils)
# the site's in-browser page (issue 17): Chromium drives it in tests/test_site.py; npm fetches Pyodide
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v npm >/dev/null 2>&1 || need+=(npm)
# the LLVM 19 decoder oracle (libLLVM-19.so via ctypes) and the APX scan tests (llvm-mc-19 assembles
# REX2 forms, llvm-objdump-19 is their yardstick); bookworm has 19.1.7
command -v llvm-mc-19 >/dev/null 2>&1 && command -v llvm-objdump-19 >/dev/null 2>&1 || need+=(llvm-19)
# the live KVM (issue 22): gcc with a static libc builds the /dev/kvm client, the stub and the
# Bochs preload library; dpkg-deb unpacks Debian's kernel and tools (nothing else is installed)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)

if [ ${#need[@]} -eq 0 ]; then
    echo "system-deps: bochs, bochs-term, bochsbios, binutils, chromium, chromium-driver, npm, llvm-19, gcc and libc6-dev already installed"
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
