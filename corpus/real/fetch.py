"""Refresh the real-binary corpus: Debian's current kernel image and Xen hypervisor packages.

    python corpus/real/fetch.py [--update] [--keep] [--no-objdump]

1. resolves the current package names through the meta packages (linux-image-amd64 depends on
   linux-image-<abi>-amd64; xen-system-amd64 on xen-hypervisor-<ver>-amd64), falling back to a
   name search;
2. `apt-get download`s them into corpus/real/downloads/ (ignored by git; nothing is installed);
3. unpacks each with `dpkg-deb -x` into a temporary directory;
4. scans kvm-intel.ko (plain, .xz or .zst) and the Xen ELF image (/boot/xen-*.gz, a gzip'd ELF
   whose header says i386 although its code is 64-bit, so it is scanned with mode 64), and, for
   the kernel, the whole module tree for a per-module count;
5. when objdump is installed, checks that `objdump -d` (with -M x86-64 for Xen) finds the same
   VMX-family instructions;
6. writes corpus/real/<package>.json: package name and version, the path of each scanned file
   inside the package with its SHA-256, the findings and a summary.

--update runs `apt-get update` first (needed on a fresh machine; needs root). --keep keeps the
.deb files and the unpacked trees under corpus/real/downloads/.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from vmxaddr.scan import expand_paths, read_image, scan_file, scan_files, summarize  # noqa: E402

DOWNLOADS = HERE / "downloads"


def sh(*cmd: str, cwd: Path | None = None) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd).stdout


def depends_of(meta: str, pattern: str) -> str | None:
    try:
        out = sh("apt-cache", "depends", meta)
    except subprocess.CalledProcessError:
        return None
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(\S+)", line)
        if m and re.fullmatch(pattern, m.group(1)):
            return m.group(1)
    return None


def newest_by_name(pattern: str) -> str | None:
    out = sh("apt-cache", "search", "--names-only", pattern)
    names = [line.split(" - ")[0] for line in out.splitlines()]
    names = [n for n in names if re.fullmatch(pattern, n)]

    def key(name: str) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", name)]
    return max(names, key=key) if names else None


def resolve() -> dict[str, str]:
    kernel = depends_of("linux-image-amd64", r"linux-image-[0-9.]+-\d+-amd64") or newest_by_name(
        r"linux-image-[0-9.]+-\d+-amd64")
    xen = depends_of("xen-system-amd64", r"xen-hypervisor-[0-9.]+-amd64") or newest_by_name(
        r"xen-hypervisor-[0-9.]+-amd64")
    if not kernel or not xen:
        sys.exit("cannot resolve the package names (run with --update, or apt-get update, first)")
    return {"kernel": kernel, "xen": xen}


def download(package: str) -> Path:
    DOWNLOADS.mkdir(exist_ok=True)
    before = set(DOWNLOADS.glob(f"{package}_*.deb"))
    sh("apt-get", "download", package, cwd=DOWNLOADS)
    debs = sorted(set(DOWNLOADS.glob(f"{package}_*.deb")) | before, key=lambda p: p.stat().st_mtime)
    return debs[-1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("capstone", "iced-x86", "pyelftools", "vmxaddr"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if shutil.which("objdump"):
        out["objdump"] = sh("objdump", "--version").splitlines()[0]
    return out


def objdump_check(path: Path, mode: int | None, findings: list[dict[str, Any]]) -> dict[str, Any]:
    from benchmarks.scan_vs_objdump import parse_objdump, run_objdump

    data, how = read_image(str(path))
    with tempfile.TemporaryDirectory() as tmp:
        plain = path
        if how:
            plain = Path(tmp, "image.elf")
            plain.write_bytes(data)
        extra = ["-M", "x86-64"] if mode == 64 else []
        seconds, text = run_objdump([str(plain)], extra, 1)
        theirs = {(k[1], k[2], k[3]) for k in parse_objdump(text, {})}
    ours = {(f["section"], f["address"], f["mnemonic"]) for f in findings}
    return {"command": f"objdump -d {' '.join(extra)}".strip(), "objdump_count": len(theirs),
            "scanner_count": len(ours), "same_set": ours == theirs,
            "only_scanner": sorted(ours - theirs)[:20], "only_objdump": sorted(theirs - ours)[:20]}


def record(pkg: str, deb: Path, tree: Path, targets: list[tuple[Path, int | None]], check: bool,
           extra: dict[str, Any]) -> Path:
    version = sh("dpkg-deb", "-f", str(deb), "Version").strip()
    arch = sh("dpkg-deb", "-f", str(deb), "Architecture").strip()
    files, findings, checks = [], [], []
    for path, mode in targets:
        inside = "/" + str(path.relative_to(tree))
        res = scan_file(str(path), mode)
        if res.error:
            sys.exit(f"{inside}: {res.error}")
        info = {**res.info, "path": inside, "sha256": sha256(path), "findings": len(res.findings),
                "warnings": res.warnings, "rejected": res.rejected}
        files.append(info)
        for f in res.findings:
            findings.append({**f, "file": inside})
        if check and shutil.which("objdump"):
            checks.append({"path": inside, **objdump_check(path, mode, res.findings)})
        print(f"{pkg} {version}: {inside}: {len(res.findings)} instructions"
              + (f", objdump agrees: {checks[-1]['same_set']}" if checks else ""), file=sys.stderr)
    doc = {"package": pkg, "version": version, "architecture": arch, "deb": deb.name,
           "deb_sha256": sha256(deb), "fetched": datetime.date.today().isoformat(),
           "how": "apt-get download; dpkg-deb -x; vmxaddr scan (see corpus/real/README.md)",
           "tools": versions(), "files": files, "objdump_check": checks, **extra,
           "summary": summarize(findings), "findings": findings}
    out = HERE / f"{pkg}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return out


def module_tree(tree: Path) -> dict[str, Any]:
    mods = expand_paths([str(p) for p in sorted(tree.glob("lib/modules/*/kernel"))])
    per: dict[str, Any] = {}
    failed = []
    total: Counter[str] = Counter()
    for res in scan_files([(m, None) for m in mods], workers=2):
        if res.error:
            failed.append({"path": "/" + str(Path(res.path).relative_to(tree)), "error": res.error})
        elif res.findings:
            c = Counter(f["mnemonic"] for f in res.findings)
            total.update(c)
            per["/" + str(Path(res.path).relative_to(tree))] = dict(sorted(c.items()))
    return {"module_tree": {"modules_scanned": len(mods), "failed": failed,
                            "modules_with_findings": per, "by_mnemonic": dict(sorted(total.items()))}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--update", action="store_true", help="run apt-get update first")
    ap.add_argument("--keep", action="store_true", help="keep the downloads and unpacked trees")
    ap.add_argument("--no-objdump", action="store_true", help="skip the objdump cross-check")
    args = ap.parse_args()
    if args.update:
        sh("apt-get", "update")
    names = resolve()
    with tempfile.TemporaryDirectory(dir=DOWNLOADS if args.keep else None) as tmp:
        for role, pkg in names.items():
            deb = download(pkg)
            tree = Path(tmp, pkg)
            sh("dpkg-deb", "-x", str(deb), str(tree))
            if role == "kernel":
                kos = sorted(p for p in tree.glob("lib/modules/*/kernel/arch/x86/kvm/kvm-intel.ko*"))
                if not kos:
                    sys.exit(f"{pkg}: no kvm-intel.ko inside")
                out = record(pkg, deb, tree, [(kos[0], None)], not args.no_objdump, module_tree(tree))
            else:
                imgs = sorted(p for p in tree.glob("boot/xen-*") if not p.name.endswith((".efi", ".config")))
                if not imgs:
                    sys.exit(f"{pkg}: no /boot/xen-* image inside")
                out = record(pkg, deb, tree, [(imgs[0], 64)], not args.no_objdump, {})
            print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)
            if args.keep:
                shutil.copytree(tree, DOWNLOADS / pkg, dirs_exist_ok=True)
            else:
                deb.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
