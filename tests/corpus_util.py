"""Reading corpus cases (format: corpus/README.md) and turning them into runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vmxaddr.case import Case
from vmxaddr.exitinfo import Policy
from vmxaddr.models.base import Outcome
from vmxaddr.state import CpuState

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def load(name: str) -> list[dict[str, Any]]:
    return json.loads((CORPUS / name).read_text())["cases"]


def make_case(c: dict[str, Any]) -> Case:
    state = CpuState.from_json(c.get("state", {}), CpuState.for_code_size(c["mode"]))
    policy = Policy(**c.get("policy", {}))
    return Case.from_bytes(bytes.fromhex(c["bytes"].replace(" ", "")), state, policy)


def outcome_text(o: Outcome) -> str:
    """'ok', '#GP(0)', '#UD', 'impl:#GP(0)' — the corpus's notation."""
    if o.kind == "ok":
        return "ok"
    code = "" if o.error_code is None else f"({o.error_code})"
    return ("impl:" if o.kind == "implementation-specific" else "") + f"#{o.vector}{code}"
