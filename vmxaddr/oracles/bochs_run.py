"""Running Bochs 2.7 on a ROM image of vmxaddr.oracles.bochs_guest and reading back one record
per VM exit from its log: the tools it needs, the bochsrc, the run under a pseudo-terminal with
a time limit, and the log parser. `boot` does all of it for a list of cases."""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from vmxaddr.errors import BochsError, BochsUnavailable
from vmxaddr.oracles.bochs_guest import CPU_MODEL, BochsRun, Case, Record, build_image

# --------------------------------------------------------------------------- tools

REQUIRED_TOOLS = ("bochs", "as", "ld", "objcopy", "nm", "size")
BIOS_DIR = Path("/usr/share/bochs")
PLUGIN_DIRS = (
    Path("/usr/lib/x86_64-linux-gnu/bochs/plugins"),
    Path("/usr/lib/bochs/plugins"),
)


def missing_tools() -> list[str]:
    """Names of the programs/files the oracle needs that are not installed."""
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if not (BIOS_DIR / "VGABIOS-lgpl-latest").exists():
        missing.append("bochs (VGABIOS-lgpl-latest)")
    if _display_library() is None:
        missing.append("a bochs display library (bochs-term)")
    return missing


def _display_library() -> str | None:
    """Debian's bochs has no 'nogui'; 'term' on a pseudo-terminal is headless enough.
    The rfb library (a VNC server on a local port, always in the bochs package) is
    the fallback."""
    for d in PLUGIN_DIRS:
        if (d / "libbx_term_gui.so").exists() or (d / "libbx_term_gui.so.0").exists():
            return "term"
    for d in PLUGIN_DIRS:
        if (d / "libbx_rfb_gui.so").exists() or (d / "libbx_rfb_gui.so.0").exists():
            return 'rfb, options="timeout=0"'
    return None

# -------------------------------------------------------------------- running

_BOCHSRC = """\
megs: 32
romimage: file={rom}
vgaromimage: file={bios_dir}/VGABIOS-lgpl-latest
cpu: model={model}, reset_on_triple_fault=0, ips=100000000
display_library: {display}
port_e9_hack: enabled=1
log: {log}
panic: action=fatal
error: action=report
info: action=ignore
debug: action=ignore
speaker: enabled=0
sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy
plugin_ctrl: unmapped=1, biosdev=0, speaker=0, extfpuirq=0, parallel=0, serial=0, gameport=0, iodebug=0
"""

_LINE_X = re.compile(
    r"^X ([0-9a-f]{8}) ([0-9a-f]{16}) ([0-9a-f]{8}) ([0-9a-f]{16}) ([0-9a-f]{2}) ([0-9a-f]{8})(?: ([0-9a-f]{16}))?$"
)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def run_image(rom: Path, workdir: Path, timeout: float = 120.0) -> str:
    """Boot Bochs on ``rom`` headless and return what the VMM wrote on port 0xE9."""
    display = _display_library()
    if display is None or shutil.which("bochs") is None:
        raise BochsUnavailable("bochs is not installed (scripts/system-deps.sh)")
    conf = workdir / "bochsrc"
    conf.write_text(_BOCHSRC.format(rom=rom, bios_dir=BIOS_DIR, model=CPU_MODEL,
                                    display=display, log=workdir / "bochs.log"))
    # Debian builds bochs with its debugger: it stops before the first
    # instruction, so feed it 'continue' (and 'quit' should it stop again).
    (workdir / "dbgcmds").write_text("c\nquit\n")
    master, slave = pty.openpty()  # the term display wants a terminal
    drainer = threading.Thread(target=_drain, args=(master,), daemon=True)
    drainer.start()
    env = dict(os.environ, TERM="dumb")
    env.pop("DISPLAY", None)
    try:
        proc = subprocess.Popen(
            ["bochs", "-q", "-f", str(conf), "-rc", str(workdir / "dbgcmds")],
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=env, start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise BochsError(f"bochs timed out after {timeout}s; output so far:\n"
                             + out.decode(errors="replace")[-2000:]) from None
        except BaseException:  # ^C: bochs runs in its own session, so the terminal's SIGINT missed it
            proc.kill()
            proc.wait()
            raise
    finally:
        os.close(slave)
        os.close(master)
    text = out.decode(errors="replace")
    if "\nEND" not in text and not text.startswith("END"):
        raise BochsError(did_not_finish(text, err, proc.returncode))
    return text


def did_not_finish(text: str, err: bytes, returncode: int | None) -> str:
    """The message for a run that ended before the VMM's END: how bochs ended and the line of
    its output that says most (a PANIC or error line, else its last), on the first line; the rest
    of the output after it."""
    if returncode is not None and returncode < 0:
        try:
            how = f"bochs was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"bochs was killed by signal {-returncode}"
    else:
        how = f"bochs exited with status {returncode}"
    said = (text[-3000:] + err.decode(errors="replace")[-2000:]).strip()
    lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
    if not lines:
        return f"the VMM did not finish: {how} and printed nothing"
    loud = [ln for ln in lines if re.search(r"PANIC|FATAL|ERROR|error", ln)]
    return f"the VMM did not finish: {how}; bochs said: {(loud or lines)[-1]}\n{said}"


def parse_log(text: str) -> tuple[str, list[tuple[int, Record]], list[str]]:
    """(CAP line, [(group, record)], other VMM lines such as failures)."""
    cap = ""
    recs: list[tuple[int, Record]] = []
    other: list[str] = []
    group = -1
    for raw in text.splitlines():
        # the debugger's own prompt text may share the line with our output
        line = raw.strip()
        if line.startswith("CAP "):
            cap = line[4:]
        elif line.startswith("G "):
            group = int(line[2:], 16)
        elif m := _LINE_X.match(line):
            reason, qual, info, rip, length, intr = (int(x, 16) for x in m.groups()[:6])
            gla = int(m.group(7), 16) if m.group(7) else None
            recs.append((group, Record(reason, qual, info, rip, length, intr, gla)))
        elif line.startswith(("LAUNCHFAIL", "RESUMEFAIL", "VMWRITEFAIL", "EXC", "NOVMX",
                              "VMXONFAIL")):
            other.append(line)
    return cap, recs, other


def run_bochs(cases: Sequence[Case | tuple], timeout: float = 300.0) -> list[Record | None]:
    """Run every case ((bytes, code size, registers) or Case) as guest code in one
    Bochs boot; one record per case, None where the case caused no VM exit."""
    return boot(cases, timeout).records


def boot(cases: Sequence[Case | tuple], timeout: float = 300.0,
         keep_dir: Path | None = None) -> BochsRun:
    """Like run_bochs, with the whole run: unmatched exits, the VMM's CAP line
    (secondary controls it could enable), the time, the raw port-0xE9 log."""
    cases = [c if isinstance(c, Case) else Case(*c) for c in cases]
    missing = missing_tools()
    if missing:
        raise BochsUnavailable("missing: " + ", ".join(missing)
                               + " (install with scripts/system-deps.sh)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmxaddr-bochs-") as tmp:
        workdir = Path(tmp) if keep_dir is None else keep_dir
        workdir.mkdir(parents=True, exist_ok=True)
        image = build_image(cases, workdir)
        text = run_image(image.rom, workdir, timeout=timeout)
    cap, recs, other = parse_log(text)
    bad = [o for o in other if not o.startswith("VMWRITEFAIL 202c")]
    if bad:
        raise BochsError("VMM reported: " + "; ".join(bad[:5]))
    # map (group, guest RIP) -> case
    lookup: dict[tuple[int, int], int] = {}
    cs_base = [0] * len(cases)
    for k, g in enumerate(image.groups):
        base = image.group_addr[k] if g.code_size == 16 else 0
        for i in g.cases:
            lookup[(k, image.insn_addr[i] - base)] = i
            cs_base[i] = base
    records: list[Record | None] = [None] * len(cases)
    extra: list[tuple[int, Record]] = []
    for k, r in recs:
        i = lookup.get((k, r.guest_rip))
        if r.basic_reason == 18 or i is None or records[i] is not None:
            if r.basic_reason != 18:
                extra.append((k, r))
            continue
        records[i] = r
    return BochsRun(records, extra, cap, time.monotonic() - t0, text, cs_base)
