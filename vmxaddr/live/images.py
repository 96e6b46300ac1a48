"""`vmxaddr live build`: a bootable ISO of Debian's own kernel, KVM modules and vmxaddr's stub.

Everything comes from Debian's archive with `apt-get download PACKAGE=VERSION` + `dpkg -x` into
`$VMXADDR_CACHE/live/` (nothing is installed on the host, nothing enters the repository):

  * the kernel image package of the same Debian version as the real-code source of that name
    (`vmxaddr sources`: linux-6.1 = linux-source-6.1 6.1.176-1 -> linux-image-6.1.0-50-amd64
    6.1.176-1), for vmlinuz and irqbypass/kvm/kvm-intel (6.12 ships .ko.xz: decompressed here);
  * busybox-static (the initramfs' shell and insmod), isolinux + syslinux-common (the CD boot
    loader: Bochs has no -kernel option), xorriso and the libraries it links (the ISO).

The initramfs (gzip'd newc cpio) is written here in Python; the stub (csrc/stub.c) is compiled
with the host's `gcc -static`. The manifest records every package, version and SHA-256, and the
image is rebuilt only when one of them (or the stub's source) changes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmxaddr.errors import LiveError as LiveError  # (defined in the leaf module; importable from here)
from vmxaddr.errors import ToolMissing as ToolMissing
from vmxaddr.realcode.sources import cache_dir
from vmxaddr.realcode.sources import sha256_file as sha256

CSRC = Path(__file__).with_name("csrc")


@dataclass(frozen=True)
class Release:
    """A Debian kernel release the live harness builds: its packages, versions and module directory."""
    name: str  # as in `vmxaddr sources`
    package: str
    version: str
    kver: str  # /lib/modules/<kver>


# Move both pins together if one disappears from the archive (docs/live-kvm.md).
RELEASES: dict[str, Release] = {
    "linux-6.1": Release("linux-6.1", "linux-image-6.1.0-50-amd64", "6.1.176-1", "6.1.0-50-amd64"),
    "linux-6.12": Release("linux-6.12", "linux-image-6.12.117+deb12-amd64", "6.12.117-1~deb12u1",
                          "6.12.117+deb12-amd64"),
}
TOOL_PACKAGES = ("busybox-static", "isolinux", "syslinux-common", "xorriso", "libisoburn1", "libburn4",
                 "libisofs6", "libjte2")
MODULES = ("kernel/virt/lib/irqbypass", "kernel/arch/x86/kvm/kvm", "kernel/arch/x86/kvm/kvm-intel")
# No `quiet`: the decompressor then writes "Decompressing Linux... done." to the early serial
# console (earlyprintk), which times the decompression; loglevel=1 keeps the kernel's own lines off
# the slow emulated UART. Every line is timed in Bochs CPU-s (preload.c, the boot's phases).
KERNEL_ARGS = "console=ttyS0,115200 earlyprintk=ttyS0,115200 mitigations=off nokaslr panic=-1 loglevel=1"
# SERIAL: isolinux writes its banner and "Loading ..." lines to COM1 too (the end of the BIOS phase)
ISOLINUX_CFG = f"""SERIAL 0 115200
DEFAULT live
PROMPT 0
TIMEOUT 0
LABEL live
  KERNEL /vmlinuz
  APPEND initrd=/initrd.img {KERNEL_ARGS}
"""

INIT = """#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
$B mount -t tracefs nodev /sys/kernel/tracing
$B mkdir -p /tmp
echo VMXADDR-INIT modules
$B insmod /lib/irqbypass.ko
echo VMXADDR-INIT irqbypass.ko loaded
$B insmod /lib/kvm.ko
echo VMXADDR-INIT kvm.ko loaded
$B insmod /lib/kvm-intel.ko nested=1 enable_shadow_vmcs=0
echo VMXADDR-INIT kvm-intel.ko loaded
T=/sys/kernel/tracing
echo 0 > $T/tracing_on
echo 40960 > $T/buffer_size_kb
PROBE_LINES
echo 1 > $T/events/vmxl/enable
echo VMXADDR-INIT probes=$($B grep -c vmxl $T/kprobe_events)
echo VMXADDR-INIT nested=$($B cat /sys/module/kvm_intel/parameters/nested) ept=$($B cat /sys/module/kvm_intel/parameters/ept) shadow=$($B cat /sys/module/kvm_intel/parameters/enable_shadow_vmcs)
exec /stub
"""  # noqa: E501


# kprobe events registered and enabled at boot, before the state is saved (registering them in a
# restored run cost ~4 Bochs CPU-s); csrc/client.c registers the same ones if they are missing
# (bochsrun.client_binary compiles this tuple into it).
# Arguments on x86-64: %di, %si, %dx, %cx, %r8, %r9 (System V ABI).
PROBES = (
    "p:vmxl/setregs kvm:kvm_arch_vcpu_ioctl_set_regs rip=+128(%si):x64 fl=+136(%si):x64",
    "p:vmxl/gvma kvm_intel:get_vmx_mem_address qual=%si:x64 info=%dx:x32 wr=%cx:u8 len=%r8:s32",
    "r:vmxl/gvmar kvm_intel:get_vmx_mem_address ret=$retval:s32",
    "p:vmxl/rd kvm:kvm_read_guest_virt gva=%si:x64 n=%cx:u32",
    "p:vmxl/wr kvm:kvm_write_guest_virt_system gva=%si:x64 n=%cx:u32",
    "p:vmxl/qe kvm:kvm_queue_exception_e nr=%si:u32 ec=%dx:u32",
    "p:vmxl/q kvm:kvm_queue_exception nr=%si:u32",
)


def init_script() -> str:
    """The initramfs's /init, with the kprobe definitions filled in."""
    return INIT.replace("PROBE_LINES", "\n".join(f"echo '{p}' >> $T/kprobe_events" for p in PROBES))


def live_dir() -> Path:
    """The cache directory of the live harness (images, tools, saved states)."""
    return cache_dir() / "live"


def require(*tools: str) -> None:
    """Raise ToolMissing naming the host tools of `tools` that are not on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise ToolMissing(f"missing: {', '.join(missing)} (install with scripts/system-deps.sh)")


def _run(cmd: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise LiveError(f"{what} failed: {' / '.join(tail)}")
    return p.stdout


def _download(specs: list[str], dest: Path, progress: Callable[[str], None]) -> dict[str, dict[str, str]]:
    """apt-get download each PACKAGE[=VERSION] into dest; {package: {version, deb, sha256}}."""
    require("apt-get", "dpkg", "dpkg-deb")
    dest.mkdir(parents=True, exist_ok=True)
    progress("apt-get download " + " ".join(specs))
    _run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", *specs], "apt-get download", cwd=dest)
    out: dict[str, dict[str, str]] = {}
    for deb in sorted(dest.glob("*.deb")):
        fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], "dpkg-deb -f").split("\n")
        pkg = fields[0].split(":", 1)[1].strip()
        ver = fields[1].split(":", 1)[1].strip()
        out[pkg] = {"version": ver, "deb": deb.name, "sha256": sha256(deb)}
    return out


def tools_dir() -> Path:
    """Where the harness's own tools (xorriso, unpacked from Debian's packages) are kept."""
    return live_dir() / "tools"


def ensure_tools(progress: Callable[[str], None]) -> dict[str, Any]:
    """busybox, isolinux, ldlinux.c32 and a runnable xorriso, extracted once into the cache."""
    root = tools_dir()
    manifest = root / "manifest.json"
    if manifest.is_file():
        try:
            return dict(json.loads(manifest.read_text()))
        except ValueError:
            pass
    shutil.rmtree(root, ignore_errors=True)
    (root / "root").mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="vmxaddr-live-") as tmp:
        debs = _download(list(TOOL_PACKAGES), Path(tmp), progress)
        for d in debs.values():
            _run(["dpkg", "-x", str(Path(tmp) / d["deb"]), str(root / "root")], "dpkg -x")
    info = {"packages": debs}
    manifest.write_text(json.dumps(info, indent=1))
    return info


def xorriso_cmd() -> tuple[list[str], dict[str, str]]:
    """The command and environment that run the unpacked xorriso."""
    root = tools_dir() / "root"
    env = dict(os.environ, LD_LIBRARY_PATH=str(root / "usr/lib/x86_64-linux-gnu"))
    return [str(root / "usr/bin/xorriso")], env


# -- initramfs ---------------------------------------------------------------------------------

def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 1) -> bytes:
    nb = name.encode() + b"\0"
    head = "070701" + "".join(f"{v:08x}" for v in (
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0))
    out = head.encode() + nb
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def write_initramfs(path: Path, files: dict[str, tuple[int, bytes]]) -> None:
    """A gzip'd newc cpio archive: directories first, /dev/console (the kernel opens it for init's
    standard streams before devtmpfs is mounted), then `files` ({path: (mode, bytes)})."""
    parts = []
    ino = 1
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib"):
        parts.append(_cpio_entry(d, 0o40755, ino=ino))
        ino += 1
    parts.append(_cpio_entry("dev/console", 0o20600, rdev=(5, 1), ino=ino))
    for name, (mode, data) in files.items():
        ino += 1
        parts.append(_cpio_entry(name, mode, data, ino=ino))
    parts.append(_cpio_entry("TRAILER!!!", 0, ino=0))
    path.write_bytes(gzip.compress(b"".join(parts), compresslevel=6, mtime=0))


def compile_static(source: Path, out: Path) -> None:
    """gcc -static (the host's gcc and static libc: scripts/system-deps.sh)."""
    require("gcc")
    _run(["gcc", "-O2", "-static", "-o", str(out), str(source)], f"gcc -static {source.name}")


# -- the image ---------------------------------------------------------------------------------

def image_dir(name: str) -> Path:
    """The cache directory of release `name`'s image."""
    return live_dir() / name


def lookup(name: str) -> dict[str, Any] | None:
    """The manifest of release `name`'s built image, or None when it is not built (or the ISO is
    missing)."""
    m = image_dir(name) / "manifest.json"
    try:
        info = dict(json.loads(m.read_text()))
    except (OSError, ValueError):
        return None
    if not (image_dir(name) / "live.iso").is_file():
        return None
    return info


def _stub_key() -> str:
    return hashlib.sha256((CSRC / "stub.c").read_bytes() + init_script().encode() + ISOLINUX_CFG.encode()).hexdigest()


def build(name: str, progress: Callable[[str], None] = lambda s: None, force: bool = False) -> dict[str, Any]:
    """Build (or find in the cache) the ISO for release `name`; returns its manifest."""
    if name not in RELEASES:
        raise LiveError(f"unknown release {name!r}; one of: {', '.join(RELEASES)}")
    rel = RELEASES[name]
    have = lookup(name)
    if have and not force and have.get("stub_key") == _stub_key() \
            and have["kernel"]["version"] == rel.version:
        return have
    t0 = time.monotonic()
    tools = ensure_tools(progress)
    t_tools = time.monotonic() - t0
    out = image_dir(name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="vmxaddr-live-") as tmp:
        tmpd = Path(tmp)
        debs = _download([f"{rel.package}={rel.version}"], tmpd / "deb", progress)
        t_dl = time.monotonic() - t0
        kpkg = debs[rel.package]
        if kpkg["version"] != rel.version:
            raise LiveError(f"apt-get gave {rel.package} {kpkg['version']}, not the pinned {rel.version}")
        progress(f"dpkg -x {kpkg['deb']}")
        x = tmpd / "x"
        _run(["dpkg", "-x", str(tmpd / "deb" / kpkg["deb"]), str(x)], "dpkg -x")
        iso = tmpd / "iso"
        iso.mkdir()
        shutil.copy(x / "boot" / f"vmlinuz-{rel.kver}", iso / "vmlinuz")
        files: dict[str, tuple[int, bytes]] = {}
        mods: dict[str, str] = {}
        for m in MODULES:
            base = x / "lib/modules" / rel.kver / m
            if base.with_suffix(".ko").is_file():
                data = base.with_suffix(".ko").read_bytes()
            elif Path(str(base) + ".ko.xz").is_file():
                data = lzma.decompress(Path(str(base) + ".ko.xz").read_bytes())
            else:
                raise LiveError(f"{rel.package} has no {m}.ko")
            leaf = Path(m).name + ".ko"
            files[f"lib/{leaf}"] = (0o100644, data)
            mods[leaf] = hashlib.sha256(data).hexdigest()
        troot = tools_dir() / "root"
        files["bin/busybox"] = (0o100755, (troot / "bin/busybox").read_bytes())
        files["init"] = (0o100755, init_script().encode())
        progress("gcc -static stub.c")
        compile_static(CSRC / "stub.c", tmpd / "stub")
        files["stub"] = (0o100755, (tmpd / "stub").read_bytes())
        write_initramfs(iso / "initrd.img", files)
        shutil.copy(troot / "usr/lib/ISOLINUX/isolinux.bin", iso / "isolinux.bin")
        shutil.copy(troot / "usr/lib/syslinux/modules/bios/ldlinux.c32", iso / "ldlinux.c32")
        (iso / "isolinux.cfg").write_text(ISOLINUX_CFG)
        progress("xorriso -as mkisofs")
        cmd, env = xorriso_cmd()
        _run([*cmd, "-as", "mkisofs", "-quiet", "-o", str(out / "live.iso"), "-b", "isolinux.bin",
              "-c", "boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", str(iso)],
             "xorriso", env=env)
        config = (x / "boot" / f"config-{rel.kver}").read_text(errors="replace")
    info = {
        "name": name,
        "kernel": {"package": rel.package, **kpkg},
        "kver": rel.kver,
        "tools": tools["packages"],
        "modules": mods,
        "iso_sha256": sha256(out / "live.iso"),
        "stub_key": _stub_key(),
        "kernel_args": KERNEL_ARGS,
        "kprobe_events": "CONFIG_KPROBE_EVENTS=y" in config,
        "seconds": {"tools": round(t_tools, 2), "download": round(t_dl, 2),
                    "total": round(time.monotonic() - t0, 2)},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "manifest.json").write_text(json.dumps(info, indent=1))
    return info
