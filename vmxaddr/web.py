"""The site's in-browser page (docs/try.md) calls `answer` under Pyodide: one JSON form in, one
JSON answer out, computed by the same code as `vmxaddr explain`.

The form's fields become `vmxaddr explain` arguments and go through the command line's own
parsing (vmxaddr.cli.add_case_options, case_from), so the page accepts exactly what the command
accepts and says so with the command's one-line errors. Only the standard library and vmxaddr's
pure-Python core are imported: Pyodide has no capstone (the decoder's guard is then off:
vmxaddr.decode.capstone_guard_on), and none of the fuzzing, scanning or oracle dependencies.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from typing import Any

FIELDS = ("bytes", "mode", "registers", "segments", "cpl", "cpu_mode", "rip", "model", "exit_qual", "si_di",
          "ignored_segment", "apx")


def argv_of(form: dict[str, Any]) -> list[str]:
    """The `vmxaddr explain` arguments the form stands for (registers and segment fields one per
    line or comma-separated, NAME=VALUE and SEG.FIELD=VALUE)."""
    argv = ["--mode", str(form.get("mode") or "").strip()]
    for key, flag in (("registers", "--reg"), ("segments", "--seg")):
        for item in str(form.get(key) or "").replace(",", "\n").split("\n"):
            if item.strip():
                argv += [flag, item.strip().replace(" ", "")]
    if str(form.get("apx") or "").strip().lower() in ("on", "1", "true", "yes"):
        argv.append("--apx")
    for key, flag in (("cpl", "--cpl"), ("cpu_mode", "--cpu-mode"), ("rip", "--rip"), ("model", "--model"),
                      ("exit_qual", "--exit-qual"), ("si_di", "--si-di"), ("ignored_segment", "--ignored-segment")):
        value = str(form.get(key) or "").strip()
        if value:
            argv += [flag, value]
    argv.append(str(form.get("bytes") or "").strip())
    return argv


def answer(form_json: str) -> str:
    """JSON in (the page's form), JSON out: {"ok": true, ...the case...} or {"ok": false, "error"}."""
    try:
        form = json.loads(form_json)
        if not isinstance(form, dict):
            raise ValueError("the form must be a JSON object")
    except ValueError as e:
        return json.dumps({"ok": False, "error": f"bad form: {e}"})
    argv = argv_of(form)
    command = "vmxaddr explain " + shlex.join(argv)
    try:
        obj = _answer(argv)
    except _Refused as e:
        return json.dumps({"ok": False, "error": str(e), "command": command})
    obj.update(ok=True, command=command)
    return json.dumps(obj)


class _Refused(Exception):
    pass


def _answer(argv: list[str]) -> dict[str, Any]:
    from vmxaddr.bytemap import breakdown
    from vmxaddr.bytemap import picture as bytes_picture
    from vmxaddr.case import case_json
    from vmxaddr.cli import Parser, UsageError, add_case_options, case_from
    from vmxaddr.decode import capstone_guard_on
    from vmxaddr.exitinfo import exit_fields_json
    from vmxaddr.explain import describe_exit, describe_instruction, explain_text
    from vmxaddr.models import UnknownModel, get
    from vmxaddr.models.base import InvalidExitInfo
    from vmxaddr.pictures import exit_fields_picture, flow_picture
    from vmxaddr.rules import RULES

    parser = Parser(prog="vmxaddr explain")
    add_case_options(parser)
    parser.add_argument("--model", default="sdm")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit:
        raise _Refused(err.getvalue().strip().replace(" (see vmxaddr explain --help)", "")) from None
    try:
        case = case_from(args)
        model = get(args.model)
        exit = case.exit
        result = case.run(model, explain=True)
    except (UsageError, UnknownModel, InvalidExitInfo) as e:
        raise _Refused(str(e)) from None
    bm = breakdown(case.instruction)
    steps = [{"rule": s.rule, "text": s.text, "title": RULES[s.rule].title if s.rule in RULES else "",
              "source": RULES[s.rule].source if s.rule in RULES else ""} for s in result.steps]
    o = result.outcome
    heading = f"{case.instruction.text()}: instruction information {exit.instruction_info:#010x}"
    return {
        "case": {**case_json(case, exit, result), **exit_fields_json(exit, case.instruction.code_size)},
        "decode": "\n".join(describe_instruction(case) + [""] + bm.text() + [""]
                             + describe_exit(exit, code_size=case.instruction.code_size)),  # as `vmxaddr decode`
        "text": explain_text(case, exit, result, args.model),
        "field_svg": str(exit_fields_picture(exit, heading, case.instruction.code_size)),
        "bytes_breakdown": bm.to_json(),
        "bytes_svg": str(bytes_picture(bm, f"{case.instruction.text()}: the bytes {case.instruction.raw.hex(' ')}")),
        "flow_svg": str(flow_picture(case, exit, result, args.model)),
        "steps": steps,
        "outcome": {"kind": o.kind, "verdict": {"ok": "no fault"}.get(o.kind, o.short()), "rule": o.rule,
                    "reason": o.reason, "title": RULES[o.rule].title if o.rule in RULES else ""},
        "effective_address": None if result.effective_address is None else f"{result.effective_address:#x}",
        "linear_address": None if result.linear_address is None else f"{result.linear_address:#x}",
        "instruction_info": f"{exit.instruction_info:#010x}",
        "exit_qualification": f"{exit.exit_qualification:#x}",
        "extended_info": None if exit.extended_info is None else f"{exit.extended_info:#018x}",
        "guard": capstone_guard_on(),
    }


def models() -> str:
    """The consumer models the page offers, as JSON [[name, summary], ...]."""
    from vmxaddr.models import REGISTRY

    return json.dumps([[m.name, m.summary] for m in REGISTRY.values() if m.kind == "consumer"])
