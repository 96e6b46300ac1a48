"""What a campaign found: one ClassReport per divergence class, merged across seed blocks, and
the FuzzReport.

A run's cases come in seed blocks (vmxaddr.fuzz.campaign): block k draws its cases from
`random.Random(block_seed(seed, k))`, and case numbers run on from block to block. Merging keeps,
for each class, the witness with the smallest case number — the earliest by seed block, then by
case within it — and adds the counts, so the report does not depend on which worker ran which
block or in what order they finished.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vmxaddr.case import Case


@dataclass
class ClassReport:
    """One divergence class of a campaign: how often, when first seen, and its shrunk witness."""
    name: str
    count: int = 0
    first_case: int = 0  # 1-based, over the whole run
    first_seconds: float = 0.0
    log: list[int] = field(default_factory=list)  # the first witness's recorded choices
    witness: Case | None = None  # the first witness, then the minimal one
    shrunk_by: str = ""  # "replay", "hypothesis", or why it was not shrunk
    first_seed: int = 0  # the seed of the block the first witness came from


@dataclass
class FuzzReport:
    """What a fuzz campaign found: the models, the counts, the classes in order of first sighting, the time."""
    model: str
    against: str
    seed: int
    cases: int
    seconds: float
    classes: dict[str, ClassReport]
    encoder: str = "sdm"  # what wrote the exit information the model under test got
    interrupted: bool = False  # ^C: the classes found so far
    workers: int = 1
    where: str = "local"  # "local", or the Dask scheduler's address
    block_size: int = 0
    generating: float | None = None  # seconds spent generating and comparing (the rest: shrinking)

    @property
    def rate(self) -> float:
        """Cases per second while generating (shrinking not counted)."""
        return self.cases / max(self.generating if self.generating is not None else self.seconds, 1e-9)


def merge(into: dict[str, ClassReport], found: Iterable[ClassReport]) -> None:
    """Add a block's classes to `into`: counts add up; the earliest witness stays."""
    for rep in found:
        have = into.get(rep.name)
        if have is None:
            into[rep.name] = rep
            continue
        count = have.count + rep.count
        if rep.first_case < have.first_case:
            into[rep.name] = have = rep
        have.count = count


def ordered(classes: dict[str, ClassReport]) -> dict[str, ClassReport]:
    """The classes sorted by the case at which each was first seen."""
    return {c.name: c for c in sorted(classes.values(), key=lambda c: c.first_case)}
