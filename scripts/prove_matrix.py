"""Summarise `vmxaddr prove --json` outputs (one file per pair) as the tables of docs/proofs.md.

    python scripts/prove_matrix.py DIR/*.json
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
        proved = sum(f["status"] == "proved" for f in forms)
        classes: dict[str, int] = {}
        for f in forms:
            for c in f["classes"]:
                classes[c["class"]] = classes.get(c["class"], 0) + 1
            if f["status"] != "proved":
                unknown.append(f"{d['model']}: {f['form']} ({f['status']}, {f['seconds']} s; {f['note'] or 'classes undecided'})")
        secs = [f.get("cpu_seconds", f["seconds"]) for f in forms]
        names = "; ".join(f"{k} ({n})" for k, n in sorted(classes.items(), key=lambda kv: -kv[1])) or "none"
        rows.append(f"| {d['model']} | {proved}/{len(forms)} | {names} | {max(secs):.0f} | {sum(secs) / len(secs):.0f} |")
    print("| model (against sdm) | forms proved | classes found (forms showing it) | max CPU s/form | mean CPU s/form |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    if unknown:
        print("\nNot proved:\n")
        print("\n".join(f"- {u}" for u in unknown))


if __name__ == "__main__":
    main(sys.argv[1:])
