"""Summarise `vmxaddr prove --json` outputs (one file per pair) as the tables of docs/proofs.md.

    python scripts/prove_matrix.py DIR/*.json

Per pair: forms, how many proved / unknown / error, how many shared another form's proof
(vmxaddr.prove.groups), the classes (with the number of forms showing each), CPU seconds per form
(max and mean over every form, and the total).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    rows, unknown = [], []
    for p in paths:
        d = json.loads(Path(p).read_text())
        forms = d["forms"]
        status: dict[str, int] = {}
        for f in forms:
            status[f["status"]] = status.get(f["status"], 0) + 1
        shared = sum(bool(f.get("shared_with")) for f in forms)
        classes: dict[str, int] = {}
        for f in forms:
            for c in f["classes"]:
                classes[c["class"]] = classes.get(c["class"], 0) + 1
            if f["status"] != "proved":
                unknown.append(f"{d['model']}: {f['form']} ({f['status']}, {f.get('cpu_seconds', f['seconds'])} s CPU; "
                               f"{f['note'] or 'classes undecided'})")
        secs = [f.get("cpu_seconds", f["seconds"]) for f in forms]
        names = "; ".join(f"{k} ({n})" for k, n in sorted(classes.items(), key=lambda kv: -kv[1])) or "none"
        other = ", ".join(f"{n} {s}" for s, n in sorted(status.items()) if s != "proved")
        rows.append(f"| {d['model']} | {len(forms)} | {status.get('proved', 0)}{f' ({other})' if other else ''} | {shared} | "
                    f"{names} | {max(secs):.1f} | {sum(secs) / len(secs):.2f} | {sum(secs):.0f} |")
    print("| model (against sdm) | forms | proved | sharing a proof | classes found (forms showing it) | "
          "max CPU s/form | mean CPU s/form | total CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if unknown:
        print("\nNot proved:\n")
        print("\n".join(f"- {u}" for u in unknown))


if __name__ == "__main__":
    main(sys.argv[1:])
