"""Running Debian's Bochs 2.7 on the live ISO: one boot that ends in a saved state, then restored
runs that each load one job (the client + its input) and dump the output.

Bochs saves its state only from a GUI's button. `csrc/preload.c` (LD_PRELOAD) answers the
debugger's readline() from a script and adds `!save`, `!load`, `!dump`, `!mark`: the boot's
script continues to the stub's magic breakpoint (KVM loaded, buffer mapped) and saves there; a
restored run's script loads the job, continues to the next magic breakpoint and dumps.

Bochs 2.7 restore bug (see docs/live-kvm.md): timers are re-registered in plugin order, and the
saved configuration lists USB before the serial port, so serial timer state lands on the USB
timer. The bochsrc here loads no USB controller at all, and `_fix_config` moves `serial` first
in the saved plugin list should one be there.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmxaddr.live.images import CSRC, PROBES, LiveError, ToolMissing, _run, build, image_dir, live_dir, require

BOCHS = "bochs-bin"
CPU_MODEL = "corei7_skylake_x"
BUF_VA = 0x200000000  # stub.c
BUF_SIZE = 96 << 20
CLIENT_MARKS = ("exec", "vcpu", "vmxon", "first", "cases", "written")  # client.c mark()

BOCHSRC = """\
megs: 512
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
cpu: model={model}, reset_on_triple_fault=0
pci: enabled=1, chipset=i440fx
ata0-master: type=cdrom, path={iso}, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev={serial}
clock: sync=none, time0=1
magic_break: enabled=1
display_library: term
log: {log}
panic: action=fatal
error: action=report
info: action=ignore
debug: action=ignore
speaker: enabled=0
plugin_ctrl: unmapped=1, biosdev=0, speaker=0, extfpuirq=0, parallel=0, gameport=0, iodebug=0, \
usb_uhci=0, usb_ohci=0, usb_ehci=0, usb_xhci=0, e1000=0, ne2k=0, sb16=0, es1370=0
"""


def preload_library() -> Path:
    """libvmxaddr_bochs.so, built from csrc/preload.c, cached by the source's SHA-256."""
    src = CSRC / "preload.c"
    key = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    out = live_dir() / "native" / f"preload-{key}.so"
    if not out.is_file():
        require("gcc")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        _run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(tmp), str(src), "-ldl"], "gcc preload.c")
        tmp.rename(out)
    return out


def require_bochs() -> None:
    """Raise ToolMissing unless Debian's bochs is installed."""
    if shutil.which(BOCHS) is None:
        raise ToolMissing("missing: bochs (install with scripts/system-deps.sh)")


@dataclass
class BochsResult:
    """One Bochs process run: its exit status, output, and CPU times marked at each stage."""
    returncode: int
    stdout: str
    marks: dict[str, tuple[float, float, float]]  # label -> (user, sys, wall) of the Bochs process
    cpu_seconds: float  # user + sys of the Bochs process
    wall_seconds: float
    preload: list[str] = field(default_factory=list)  # VMXADDR-PRELOAD lines
    max_rss_mb: float = 0.0  # the largest resident set of this process' children so far (Bochs)


def _drain(fd: int, sink: list[bytes]) -> None:
    try:
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            if sum(len(x) for x in sink) < (1 << 20):
                sink.append(b)
    except OSError:
        pass


def run_bochs(args: list[str], script: list[str], workdir: Path, timeout: float,
              serial_marks: bool = False) -> BochsResult:
    """Run bochs-bin with the preload library answering the debugger from `script`; with
    `serial_marks`, every serial line is timed (workdir/serial-marks: CPU-s TAB line)."""
    require_bochs()
    (workdir / "script").write_text("\n".join(script) + "\n")
    marks = workdir / "marks"
    marks.unlink(missing_ok=True)
    env = dict(os.environ, TERM="dumb", LD_PRELOAD=str(preload_library()),
               VMXADDR_BOCHS_SCRIPT=str(workdir / "script"), VMXADDR_BOCHS_MARKS=str(marks))
    if serial_marks:
        env["VMXADDR_BOCHS_SERIAL_MARKS"] = str(workdir / "serial-marks")
    env.pop("DISPLAY", None)
    master, slave = pty.openpty()  # the term display wants a terminal
    sink: list[bytes] = []
    drainer = threading.Thread(target=_drain, args=(master, sink), daemon=True)
    drainer.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen([BOCHS, "-q", *args], stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise LiveError(f"bochs timed out after {timeout:.0f} s (log: {workdir})") from None
    finally:
        os.close(slave)
        os.close(master)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = out.decode(errors="replace")
    got: dict[str, tuple[float, float, float]] = {}
    if marks.is_file():
        for line in marks.read_text().splitlines():
            label, u, s, w = line.split()
            got[label] = (float(u), float(s), float(w))
    pre = [ln.strip() for ln in text.splitlines() if "VMXADDR-PRELOAD" in ln or "vmxaddr-preload" in ln]
    return BochsResult(proc.returncode, text, got, cpu, wall, pre, round(after.ru_maxrss / 1024, 1))


# -- the saved state -----------------------------------------------------------------------------

def state_dir(name: str, shadow: bool = False) -> Path:
    """Where the saved Bochs state of `name` (booted to the client's prompt) is kept."""
    return image_dir(name) / ("state-shadow" if shadow else "state")


def _state_key(manifest: dict[str, object]) -> str:
    # the preload library only takes the snapshot: it is not part of what was saved
    return hashlib.sha256(json.dumps([manifest["iso_sha256"], BOCHSRC, CPU_MODEL]).encode()).hexdigest()


def _fix_config(config: Path) -> None:
    """Bochs 2.7 restore bug: put `serial` first in the saved plugin list (see module doc)."""
    lines = config.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("plugin_ctrl:") and "serial" in line:
            head, _, rest = line.partition(":")
            items = [x.strip() for x in rest.split(",") if x.strip()]
            ser = [x for x in items if x.startswith("serial")]
            lines[i] = head + ": " + ", ".join(ser + [x for x in items if not x.startswith("serial")])
    config.write_text("\n".join(lines) + "\n")


def saved_state(name: str, progress: callable = lambda s: None, timeout: float = 3600.0,  # type: ignore[valid-type]
                force: bool = False) -> Path:
    """The saved state of release `name` (booted once, KVM loaded, stub waiting), built if absent
    or if the ISO, the Bochs settings or the preload library changed."""
    manifest = build(name, progress)  # the cached image, rebuilt if a pin or the stub changed
    sdir = state_dir(name)
    meta = sdir / "vmxaddr-state.json"
    key = _state_key(manifest)
    if not force and meta.is_file():
        try:
            if json.loads(meta.read_text()).get("key") == key:
                return sdir
        except ValueError:
            pass
    shutil.rmtree(sdir, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="vmxaddr-boot-"))
    conf = work / "bochsrc"
    conf.write_text(BOCHSRC.format(model=CPU_MODEL, iso=image_dir(name) / "live.iso", serial=work / "serial.txt",
                                   log=work / "bochs.log"))
    tmp_state = image_dir(name) / "state.tmp"
    shutil.rmtree(tmp_state, ignore_errors=True)
    tmp_state.mkdir()
    progress(f"booting {name} under Bochs to save its state (~110 CPU-s; log {work})")
    res = run_bochs(["-f", str(conf)], ["!mark start", "c", "!mark stub", f"!save {tmp_state}", "!mark saved"],
                    work, timeout, serial_marks=True)
    serial = (work / "serial.txt").read_text(errors="replace") if (work / "serial.txt").exists() else ""
    if "stub" not in res.marks or "saved" not in res.marks or not (tmp_state / "config").is_file():
        raise LiveError(f"the boot did not reach the stub (log {work}); serial tail: {serial[-600:]!r}")
    if "VMXADDR-INIT nested=Y" not in serial:
        raise LiveError(f"kvm_intel did not load with nested=1 (serial: {serial[-600:]!r})")
    _fix_config(tmp_state / "config")
    lines = (work / "serial-marks").read_text(errors="replace").splitlines() if (work / "serial-marks").exists() else []
    timed = [(float(t), text) for t, _, text in (ln.partition("\t") for ln in lines) if t]
    info = {"key": key, "iso_sha256": manifest["iso_sha256"], "boot_cpu_seconds": round(res.cpu_seconds, 2),
            "boot_wall_seconds": round(res.wall_seconds, 2), "marks": res.marks,
            "serial_lines": timed,
            "serial": [ln for ln in serial.splitlines() if ln.startswith("VMXADDR")],
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp_state / "vmxaddr-state.json").write_text(json.dumps(info, indent=1))
    tmp_state.rename(sdir)
    shutil.rmtree(work, ignore_errors=True)
    return sdir


# (phase, the serial line that ends it): lines written by isolinux (SERIAL), the kernel's real-mode
# setup code, the kernel (its early console prints until `loglevel` is parsed) and init
# (images.INIT). The decompressor writes nothing to the serial port here, so decompression is timed
# to the kernel's first line; the stub's own line is still in the UART when the state is saved.
PHASE_ENDS = (("BIOS (to isolinux's banner)", "ISOLINUX"),
              ("isolinux: vmlinuz and initrd read from the CD", "Loading /initrd.img"),
              ("kernel setup code (real mode, EDD probe)", "Probing EDD"),
              ("kernel decompression, to the kernel's first line", "Linux version"),
              ("kernel init, to /init's first line", "VMXADDR-INIT modules"),
              ("insmod irqbypass.ko", "VMXADDR-INIT irqbypass.ko"),
              ("insmod kvm.ko", "VMXADDR-INIT kvm.ko"),
              ("insmod kvm-intel.ko nested=1", "VMXADDR-INIT kvm-intel.ko"),
              ("7 kprobe events registered and enabled", "VMXADDR-INIT probes="))


def boot_phases(timed: list[list[object]], marks: dict[str, list[float]]) -> list[tuple[str, float]]:
    """(phase, Bochs CPU-s) from a boot's timed serial lines ([CPU-s, line]) and its marks."""
    out: list[tuple[str, float]] = []
    prev = float(marks["start"][0]) + float(marks["start"][1]) if "start" in marks else 0.0
    for phase, needle in PHASE_ENDS:
        t = next((float(str(tt)) for tt, text in timed if needle in str(text)), None)
        if t is not None:
            out.append((phase, round(t - prev, 2)))
            prev = t
    if "stub" in marks:
        out.append(("exec /stub, its 96 MB buffer mapped and locked, to its magic breakpoint",
                    round(marks["stub"][0] + marks["stub"][1] - prev, 2)))
    return out


# -- a restored run ------------------------------------------------------------------------------

@dataclass
class JobResult:
    """One job on a restored state: the client's output file, its log and wait status, and the Bochs
    run."""
    output: bytes  # the client's OUT file
    log: str  # the client's standard output and error
    status: int  # the client's wait status
    bochs: BochsResult

    @property
    def restore_cpu_seconds(self) -> float:
        """CPU-s of Bochs from its start to the job loaded (the restore itself)."""
        m = self.bochs.marks.get("loaded")
        return m[0] + m[1] if m else float("nan")

    @property
    def job_cpu_seconds(self) -> float:
        """The CPU seconds Bochs spent between loading the job and its end (NaN without both marks)."""
        a, b = self.bochs.marks.get("loaded"), self.bochs.marks.get("done")
        return (b[0] + b[1] - a[0] - a[1]) if a and b else float("nan")


def client_binary() -> Path:
    """csrc/client.c + csrc/l1.S (the L1 guest's loop) compiled gcc -static, cached by the
    sources' SHA-256."""
    srcs = [CSRC / "client.c", CSRC / "l1.S", CSRC / "l1.h"]
    header = _probes_header().encode()
    key = hashlib.sha256(b"".join(s.read_bytes() for s in srcs) + header).hexdigest()[:16]
    out = live_dir() / "native" / f"client-{key}"
    if not out.is_file():
        require("gcc")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        with tempfile.TemporaryDirectory() as inc:
            (Path(inc) / "probes.h").write_bytes(header)
            _run(["gcc", "-O2", "-static", "-I", inc, "-o", str(tmp), str(srcs[0]), str(srcs[1])],
                 "gcc -static client.c l1.S")
        tmp.rename(out)
    return out


def _probes_header() -> str:
    """images.PROBES as C (the client registers them when the saved state has none), so the
    probe list is written once."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    names = [p.split()[0].split("/")[1] for p in PROBES]
    return ("static const char *PROBES[] = {" + ", ".join(map(q, PROBES)) + ", NULL};\n"
            "static const char *PROBE_NAMES[] = {" + ", ".join(map(q, names)) + ", NULL};\n")


def _run_dir(sdir: Path, work: Path) -> Path:
    """A private view of the saved state: links to its files, a config whose serial and log
    files are this run's."""
    rdir = work / "state"
    rdir.mkdir()
    for f in sdir.iterdir():
        if f.name != "config":
            (rdir / f.name).symlink_to(f)
    lines = []
    for line in (sdir / "config").read_text().splitlines():
        if line.startswith("com1:"):
            line = re_sub_dev(line, str(work / "serial.txt"))
        elif line.startswith("log:"):
            line = f"log: {work / 'bochs.log'}"
        lines.append(line)
    (rdir / "config").write_text("\n".join(lines) + "\n")
    return rdir


def re_sub_dev(line: str, path: str) -> str:
    """A bochsrc line with its `dev=` path replaced: a restored run writes the serial port to a file of
    its own."""
    import re

    return re.sub(r"dev=[^,]*", f"dev={path}", line)


def run_job(name: str, cases_blob: bytes, args: str = "", timeout: float = 3600.0,
            progress: callable = lambda s: None, keep: bool = False) -> JobResult:  # type: ignore[valid-type]
    """Restore release `name`'s saved state, run the client on `cases_blob`, return its output."""
    import struct

    sdir = saved_state(name, progress)
    exe = client_binary().read_bytes()
    if 4096 + len(exe) + len(cases_blob) > BUF_SIZE - (1 << 20):
        raise LiveError(f"job too large for the stub's buffer ({len(cases_blob)} bytes of cases)")
    work = Path(tempfile.mkdtemp(prefix="vmxaddr-run-"))
    try:
        head = struct.pack("<IIQQQiI", 0x4A4C4D56, 1, len(exe), len(cases_blob), 0, 0, 0)
        head += args.encode()[:255].ljust(256, b"\0")
        (work / "job.bin").write_bytes(head.ljust(4096, b"\0") + exe + cases_blob)
        rdir = _run_dir(sdir, work)
        # with the client's argument "marks" it stops at four more magic breakpoints (client.c)
        steps = [x for m in CLIENT_MARKS for x in ("c", f"!mark {m}")] if "marks" in args.split() else []
        script = ["!mark start", f"!load {work / 'job.bin'} {BUF_VA:x}", "!mark loaded", *steps, "c", "!mark done",
                  f"!dump {work / 'out.bin'} {BUF_VA:x}", "!mark dumped"]
        res = run_bochs(["-r", str(rdir)], script, work, timeout)
        if not (work / "out.bin").is_file() or "done" not in res.marks:
            raise LiveError(f"the restored run did not finish (bochs exit {res.returncode}; "
                            f"{'; '.join(res.preload) or res.stdout[-300:]!r}; dir {work})")
        data = (work / "out.bin").read_bytes()
        # struct job (stub.c): exe_len (reused: the log's length) at 8, out_len at 24, status at 32
        log_len, _in_len, out_len, status, out_magic = struct.unpack_from("<QQQiI", data, 8)
        if out_magic != 0x4F4C4D56:
            raise LiveError(f"the stub left no output (dir {work})")
        out = data[4096:4096 + out_len]
        log = data[4096 + out_len:4096 + out_len + log_len].decode(errors="replace").rstrip("\0")
        return JobResult(out, log, status, res)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
