"""What a campaign found: one ClassReport per divergence class, and the FuzzReport."""

from __future__ import annotations

from dataclasses import dataclass, field

from vmxaddr.case import Case


@dataclass
class ClassReport:
    name: str
    count: int = 0
    first_case: int = 0
    first_seconds: float = 0.0
    log: list[int] = field(default_factory=list)
    witness: Case | None = None
    shrunk_by: str = ""


@dataclass
class FuzzReport:
    model: str
    against: str
    seed: int
    cases: int
    seconds: float
    classes: dict[str, ClassReport]
    encoder: str = "sdm"  # what wrote the exit information the model under test got
