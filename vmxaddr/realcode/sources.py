"""Hypervisor sources from Debian's archive, fetched with the ordinary apt clients into a cache.

    fetch("linux-6.1")  -> Fetched (package, version, SHA-256 of what was downloaded, the files kept)
    cached()            -> every Fetched already in the cache
    lookup("linux-6.1") -> the cached Fetched, or None (absent, or a file changed since it was fetched)
    unusable("linux-6.1") -> why not, and what to do

The cache is `$VMXADDR_CACHE` (default `~/.cache/vmxaddr`): `sources/<name>/manifest.json` and
`sources/<name>/files/<path in the tree>`. Nothing fetched enters the repository.

Two kinds of source:
  * "deb": `apt-get download PACKAGE=VERSION` of a binary package that ships the tree as a
    tarball (linux-source-6.1 holds /usr/src/linux-source-6.1.tar.xz); only the files a model
    needs are unpacked, tar stopping at the last of them (about 1 s instead of 7 s for the whole
    138 MB xz stream); the .deb is deleted afterwards, its SHA-256 kept.
  * "dsc": `apt-get source --download-only PACKAGE=VERSION` with a private apt configuration
    under the cache (its own sources directory holding a deb-src entry for each Debian archive the
    system already uses, its own lists and package cache, passed with -o options): the system's
    apt configuration is read, never written. The upstream tarball's files are unpacked the same way.

Versions: each source lists pinned versions; the first one the archive offers is used, else the
archive's newest, and the manifest says which (`pinned`). Security updates move the newest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class SourceError(RuntimeError):
    """A source cannot be fetched or read; the message says why and what to do."""


def cache_dir() -> Path:
    """The cache directory: $VMXADDR_CACHE, else ~/.cache/vmxaddr."""
    return Path(os.environ.get("VMXADDR_CACHE") or Path.home() / ".cache" / "vmxaddr")


def unwritable(e: OSError) -> str:
    """One line for a cache that cannot be written (a file, read-only, full, not ours)."""
    where = f" ({e.filename})" if e.filename and str(e.filename) != str(cache_dir()) else ""
    return (f"cannot write the cache {cache_dir()} (VMXADDR_CACHE): {e.strerror or e}{where}; "
            "set VMXADDR_CACHE to a writable directory")


@dataclass(frozen=True)
class SourceSpec:
    """A hypervisor source vmxaddr knows how to fetch: name, Debian package, preferred versions, the
    files kept."""
    name: str  # linux-6.1
    kind: str  # "deb" or "dsc"
    package: str  # linux-source-6.1, or the source package name
    pins: tuple[str, ...]  # preferred versions, first available wins
    members: tuple[str, ...]  # paths inside the tree to keep
    summary: str
    tarball: str = ""  # deb: the tarball inside the package; dsc: a glob for the upstream tarball


SOURCES: dict[str, SourceSpec] = {}


def register_source(spec: SourceSpec) -> None:
    """Add a source to SOURCES (tests register their own)."""
    SOURCES[spec.name] = spec


register_source(SourceSpec(
    "linux-6.1", "deb", "linux-source-6.1", ("6.1.176-1",),
    ("arch/x86/kvm/vmx/nested.c", "arch/x86/kvm/vmx/vmx.c"),
    "Linux 6.1 (Debian bookworm's kernel): KVM's get_vmx_mem_address()",
    "usr/src/linux-source-6.1.tar.xz"))
register_source(SourceSpec(
    "linux-6.12", "deb", "linux-source-6.12", ("6.12.117-1~deb12u1",),
    ("arch/x86/kvm/vmx/nested.c", "arch/x86/kvm/vmx/vmx.c"),
    "Linux 6.12 (Debian bookworm-security's backport): KVM's get_vmx_mem_address() and vmx_get_untagged_addr()",
    "usr/src/linux-source-6.12.tar.xz"))
register_source(SourceSpec(
    "xen-4.17", "dsc", "xen", ("4.17.5+72-g01140da4e8-1",),
    ("xen/arch/x86/hvm/vmx/vvmx.c", "xen/arch/x86/include/asm/hvm/vmx/vvmx.h"),
    "Xen 4.17 (Debian bookworm): nested VMX's decode_vmx_inst()", "xen_*.orig.tar.*"))


@dataclass(frozen=True)
class Fetched:
    """A fetched source in the cache: package, version, where its files are, their digests."""
    name: str
    package: str
    version: str
    pinned: bool  # the version is one of the spec's pins (else: the archive's newest)
    downloads: dict[str, str]  # file name -> SHA-256 of what apt-get fetched
    files: dict[str, str]  # path in the tree -> SHA-256
    root: str  # directory holding the files
    seconds: dict[str, float] = field(default_factory=dict)  # download, extract
    fetched_at: str = ""

    def path(self, member: str) -> Path:
        """The cached path of file `member` of the source tree."""
        return Path(self.root) / member

    def to_json(self) -> dict[str, Any]:
        """The fetched source as JSON (for `vmxaddr sources list --json`)."""
        return asdict(self)


def _source_dir(name: str) -> Path:
    return cache_dir() / "sources" / name


def lookup(name: str) -> Fetched | None:
    """The cached source `name`, if every file it lists is there with the SHA-256 recorded when it
    was fetched; else None (`unusable` says why)."""
    return _check(name)[0]


def unusable(name: str) -> str | None:
    """Why the cached source `name` cannot be used, with what to do; None when it can."""
    f, why = _check(name)
    if f is not None:
        return None
    if why is None:
        return f"it is not in the cache ({cache_dir()}): run `vmxaddr sources fetch {name}` first"
    return f"the cached copy is broken: {why}; run `vmxaddr sources fetch {name}` to repair it"


def _stamp(digest: str, path: Path) -> list[Any]:
    """What a verified file is remembered by: any write changes its ctime, a replacement its inode."""
    st = path.stat()
    return [digest, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _remember(root: Path, verified: dict[str, Any]) -> None:
    try:
        tmp = root / f".verified.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(verified))
        os.replace(tmp, root / "verified.json")
    except OSError:
        pass  # a read-only cache: files are hashed at every load


def _check(name: str) -> tuple[Fetched | None, str | None]:
    """(the cached source, None), or (None, None) when absent, or (None, what is wrong with it).
    Hashing a file is remembered in verified.json beside the manifest, by _stamp."""
    root = _source_dir(name)
    manifest = root / "manifest.json"
    try:
        f = Fetched(**json.loads(manifest.read_text()))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, TypeError) as e:
        return None, f"its manifest {manifest} is unreadable ({getattr(e, 'strerror', None) or type(e).__name__})"
    try:
        verified = json.loads((root / "verified.json").read_text())
        verified = verified if isinstance(verified, dict) else {}
    except (OSError, ValueError):
        verified = {}
    changed = False
    for member, digest in f.files.items():
        path = f.path(member)
        try:
            stamp = _stamp(digest, path)
            if verified.get(member) == stamp:
                continue
            if _sha256(path) != digest:
                return None, f"{path} changed after it was fetched (its SHA-256 is not the one in {manifest})"
        except OSError as e:
            return None, f"{path}: {e.strerror}"
        verified[member] = stamp
        changed = True
    if changed:
        _remember(root, verified)
    return f, None


def cached() -> list[Fetched]:
    """The sources of SOURCES that are in the cache."""
    return [f for f in (lookup(n) for n in SOURCES) if f is not None]


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None, timeout: float = 900) -> str:
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive"))
    except FileNotFoundError:
        raise SourceError(f"{what}: {cmd[0]} not found (a Debian-based system with apt is needed)") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what}: {cmd[0]} timed out") from None
    if proc.returncode != 0:
        err = [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "W:"))] or proc.stderr.splitlines()[-3:]
        raise SourceError(f"{what}: {' '.join(cmd[:2])} failed: {' / '.join(err) or 'exit ' + str(proc.returncode)}")
    return proc.stdout


def versions(package: str, apt_options: Sequence[str] = (), source: bool = False) -> list[str]:
    """The versions of `package` the configured archives offer, newest first (`apt-cache madison`)."""
    out = _run(["apt-cache", *apt_options, "madison", package], f"looking up {package}")
    seen: list[str] = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and parts[0] == package and (("Sources" in parts[2]) == source) and parts[1] not in seen:
            seen.append(parts[1])
    return seen


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read a MiB at a time."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_sha256 = sha256_file  # the name this module's own calls look up (tests/test_sources_verify.py counts them)


def _choose(spec: SourceSpec, offered: list[str], config_hint: str) -> tuple[str, bool]:
    if not offered:
        raise SourceError(f"{spec.package} is not in the configured apt suites (`apt-cache policy {spec.package}` "
                          f"lists no version){config_hint}")
    for pin in spec.pins:
        if pin in offered:
            return pin, True
    return offered[0], False


_DECOMPRESS = {".xz": "-J", ".gz": "-z", ".bz2": "-j", ".tgz": "-z"}


def _unpack_tree(stream_cmd: Sequence[str], tarball: str, members: Sequence[str], dest: Path, what: str) -> dict[str, str]:
    """Pipe the tree tarball named `tarball` (xz, gzip or bzip2) from `stream_cmd` into tar,
    keeping `members` (matched below the tarball's top directory); path -> SHA-256."""
    flag = _DECOMPRESS.get(Path(tarball).suffix, "")
    dest.mkdir(parents=True, exist_ok=True)
    patterns = [f"*/{m}" for m in members]
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        src = subprocess.Popen(list(stream_cmd), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        tar = subprocess.run(["tar", "-x", *([flag] if flag else []), "-f", "-", "--occurrence=1", "--wildcards", "-C", tmp, *patterns],
                             stdin=src.stdout, capture_output=True, text=True)
        assert src.stdout is not None
        src.stdout.close()
        src.kill()  # tar stops reading after the last member: the producer gets SIGPIPE anyway
        src.wait()
        got: dict[str, str] = {}
        for m in members:
            hits = list(Path(tmp).glob(f"*/{m}"))
            if not hits:
                raise SourceError(f"{what}: {m} is not in the tarball ({tar.stderr.strip()[:200]})")
            target = dest / m
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(hits[0]), target)
            got[m] = _sha256(target)
    return got


def _fetch_deb(spec: SourceSpec, work: Path, progress: Callable[[str], None]) -> tuple[str, bool, dict[str, str], Path, float]:
    version, pinned = _choose(spec, versions(spec.package), "")
    progress(f"downloading {spec.package}={version}")
    t0 = time.monotonic()
    _run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", f"{spec.package}={version}"],
         f"downloading {spec.package}={version}", cwd=work)
    debs = list(work.glob("*.deb"))
    if len(debs) != 1:
        raise SourceError(f"apt-get download {spec.package}={version} left {len(debs)} .deb files")
    return version, pinned, {debs[0].name: _sha256(debs[0])}, debs[0], time.monotonic() - t0


def debian_archives(etc: Path = Path("/etc/apt")) -> list[tuple[str, str, str, str]]:
    """(URI, suite, components, signed-by) of each `deb` entry the system's apt uses (deb822
    .sources files and one-line .list files)."""
    out: list[tuple[str, str, str, str]] = []
    files = sorted((etc / "sources.list.d").glob("*.sources")) if (etc / "sources.list.d").is_dir() else []
    for f in files:
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    out.append((uri, suite, fields.get("components", "main"), fields.get("signed-by", "")))
    lists = [etc / "sources.list"] + (sorted((etc / "sources.list.d").glob("*.list")) if (etc / "sources.list.d").is_dir() else [])
    for f in lists:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            m = re.match(r"\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
            if m:
                opts = m.group(1) or ""
                sb = re.search(r"signed-by=(\S+?)\]?(\s|$)", opts)
                out.append((m.group(2), m.group(3), m.group(4) or "main", sb.group(1) if sb else ""))
    return [a for a in out if "debian" in a[0]]


def private_apt(root: Path) -> list[str]:
    """A private apt configuration under `root` with a deb-src entry for each Debian archive the
    system uses; the -o options that select it (the system's configuration is not touched)."""
    parts = root / "sources.list.d"
    parts.mkdir(parents=True, exist_ok=True)
    (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    stanzas = []
    for uri, suite, comps, signed in debian_archives():
        st = f"Types: deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: {comps}\n"
        stanzas.append(st + (f"Signed-By: {signed}\n" if signed else ""))
    if not stanzas:
        raise SourceError("no Debian archive in the system's apt configuration to add a deb-src entry for")
    (parts / "vmxaddr.sources").write_text("\n".join(stanzas))
    return ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={parts}",
            "-o", f"Dir::State::Lists={root / 'lists'}", "-o", f"Dir::Cache={root / 'cache'}",
            "-o", "APT::Sandbox::User=root"]


def _fetch_dsc(spec: SourceSpec, work: Path, progress: Callable[[str], None]) -> tuple[str, bool, dict[str, str], Path, float]:
    opts = private_apt(cache_dir() / "apt")
    t0 = time.monotonic()
    progress("apt-get update (private deb-src lists)")
    _run(["apt-get", "-q", *opts, "update"], "updating the private deb-src lists")
    version, pinned = _choose(spec, versions(spec.package, opts, source=True), " (deb-src)")
    progress(f"downloading source {spec.package}={version}")
    _run(["apt-get", "-q", *opts, "source", "--download-only", f"{spec.package}={version}"],
         f"downloading source {spec.package}={version}", cwd=work)
    downloads = {p.name: _sha256(p) for p in sorted(work.iterdir()) if p.is_file()}
    tarballs = sorted(work.glob(spec.tarball))
    if not tarballs:
        raise SourceError(f"apt-get source {spec.package}={version} fetched no {spec.tarball}")
    return version, pinned, downloads, tarballs[0], time.monotonic() - t0


def fetch(name: str, progress: Callable[[str], None] | None = None, force: bool = False) -> Fetched:
    """Bring source `name` into the cache (a no-op when it is there, unless `force`)."""
    spec = SOURCES.get(name)
    if spec is None:
        raise SourceError(f"unknown source {name!r} (known: {', '.join(SOURCES)})")
    say = progress or (lambda _m: None)
    if not force:
        hit, broken = _check(name)
        if hit is not None:
            return hit
        if broken:  # a plain fetch repairs the cache
            say(f"the cached copy is broken ({broken}): fetching it again")
    try:
        root = _source_dir(name)
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{name}-") as tmp:
            work = Path(tmp)
            if spec.kind == "deb":
                version, pinned, downloads, archive, t_dl = _fetch_deb(spec, work, say)
                say(f"unpacking {', '.join(spec.members)}")
                t0 = time.monotonic()
                files = _unpack_tree(["sh", "-c", f'dpkg-deb --fsys-tarfile "$1" | tar -xO "./{spec.tarball}"', "sh",
                                      str(archive)], spec.tarball, spec.members, work / "files", name)
            else:
                version, pinned, downloads, archive, t_dl = _fetch_dsc(spec, work, say)
                say(f"unpacking {', '.join(spec.members)}")
                t0 = time.monotonic()
                files = _unpack_tree(["cat", str(archive)], archive.name, spec.members, work / "files", name)
            t_x = time.monotonic() - t0
            if root.exists():
                shutil.rmtree(root)
            root.mkdir()
            shutil.move(str(work / "files"), root / "files")
        f = Fetched(name, spec.package, version, pinned, downloads, files, str(root / "files"),
                    {"download": round(t_dl, 3), "extract": round(t_x, 3)},
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (root / "manifest.json").write_text(json.dumps(f.to_json(), indent=2) + "\n")
        _remember(root, {m: _stamp(d, f.path(m)) for m, d in files.items()})  # hashed while unpacking
    except OSError as e:
        raise SourceError(unwritable(e)) from None
    return f
