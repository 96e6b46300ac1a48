"""Text output: one line per wrong record, malformed or truncated line, and the summary."""

from __future__ import annotations

from typing import Any

from vmxaddr.trace.format import Recorded


def verdict_text(v: dict[str, Any]) -> str | None:
    """One line for a wrong record, a malformed or truncated line; None for the rest."""
    if v["type"] == "malformed":
        return f"line {v['line']}: malformed: {v['reason']}"
    if v["type"] == "truncated":
        return f"line {v['line']}: truncated: {v['reason']}"
    if v.get("status") != "wrong":
        return None
    where = f"line {v['line']}" + (f" rip {v['rip']}" if "rip" in v else "") + f" {v['instruction'] or v['exit_reason']}"
    parts = []
    hw = v["hardware"]
    if hw["verdict"] == "inconsistent":
        ds = []
        for d in hw["differences"]:
            if d["field"] == "instruction_info":
                bits = ", ".join(f"{b['name']} [{b['bits']}] {b['recorded']} not {b['expected']}" for b in d["bits"])
                ds.append(f"instruction_info {d['recorded']} not {d['expected']} ({bits})")
            elif "recorded" in d:
                ds.append(f"{d['field']} {d['recorded']} not {d['expected']}" + (f" ({d['detail']})" if "detail" in d else ""))
            else:
                ds.append(d["detail"])
        parts.append(f"hardware inconsistent with {hw['decoded']}: " + "; ".join(ds) if "decoded" in hw
                     else "hardware inconsistent: " + "; ".join(ds))
    hv = v["hypervisor"]
    if hv["verdict"] == "wrong":
        exp = hv["expected"]
        rec = Recorded(hv["recorded"]["kind"], hv["recorded"].get("vector"), hv["recorded"].get("error_code"),
                       int(hv["recorded"]["linear_address"], 16) if "linear_address" in hv["recorded"] else None)
        want = exp["outcome"]
        if "linear_address" in exp:
            want += f" {exp['linear_address']}" if want == "ok" else f" (linear address {exp['linear_address']})"
        parts.append(f"hypervisor wrong: {rec.short()}, {hv['against']} says {want}")
    fp = v["fingerprint"]
    if fp.get("verdict") == "matched":
        parts.append("answer matches " + ", ".join(fp["models"]))
    elif fp.get("verdict") == "unmatched":
        parts.append("answer matches no registered model")
    return f"{where}: " + "; ".join(parts)


def summary_text(s: dict[str, Any]) -> str:
    """The summary as text: counts per verdict, and the models every record's answer matches."""
    def counts(c: dict[str, int], order: tuple[str, ...]) -> str:
        return ", ".join(f"{c.get(k, 0)} {k.replace('-', ' ')}" for k in order)

    out = [f"checked {s['exit_records']} exit records ({s['state_records']} state records, {s['lines']} lines) "
           f"against {s['against']}: {s['wrong_records']} wrong"]
    # "explained" (a named processor's documented quirks) only where a trace has some
    hw_order = ("consistent", "explained", "inconsistent", "not-checkable") if s["hardware"].get("explained") \
        else ("consistent", "inconsistent", "not-checkable")
    out.append("  hardware:   " + counts(s["hardware"], hw_order))
    if s["hardware_fields_differing"]:
        out.append("    fields differing: " + ", ".join(f"{k} {n}" for k, n in s["hardware_fields_differing"].items()))
    out.append("  hypervisor: " + counts(s["hypervisor"], ("correct", "wrong", "not-checkable")))
    for key in ("hardware", "hypervisor"):
        why = s["not_checkable_because"][key]
        if why:
            out.append(f"    {key} not checkable: " + ", ".join(f"{k} {n}" for k, n in sorted(why.items(), key=lambda x: -x[1])))
    fp = s["fingerprint"]
    if fp["wrong_records"] and s["models_compared"]:
        top = ", ".join(f"{k} {n}/{fp['wrong_records']}" for k, n in list(fp["matches_on_wrong_records"].items())[:8])
        out.append(f"  fingerprint of the wrong answers: {top or 'no registered model matches'}")
        if fp["consistent_with_every_wrong_record"]:
            out.append("    every wrong answer matches: " + ", ".join(fp["consistent_with_every_wrong_record"]))
    if fp["mode"] != "none" and not s.get("models_compared", 1):
        out.append("  fingerprint: no models to compare (only the reference is registered)")
    elif fp["mode"] == "all" and fp["records"]:
        every = fp["consistent_with_every_record"]
        out.append(f"  models consistent with all {fp['records']} checkable answers: {', '.join(every) or 'none'}")
    if s.get("reference_errors"):
        out.append(f"  the reference model {s['against']} failed on {s['reference_errors']} records (it raised, crashed "
                   f"or hung), which are not checked (first: {s['reference_error_first']})")
    if s.get("input_error"):
        out.append(f"  the input broke off: {s['input_error']} (nothing after it was checked)")
    if s["malformed_lines"]:
        out.append(f"  malformed lines: {s['malformed_lines']}")
    if s["truncated_final_line"]:
        out.append(f"  truncated final line {s['truncated_final_line']} (not checked)")
    if s["states_evicted"]:
        out.append(f"  state records evicted from the table: {s['states_evicted']} (see --max-states)")
    return "\n".join(out)

