"""The campaign: generate cases, run both models on each, group the divergences by class."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from vmxaddr.diff import case_divergence, divergence, exit_and_access
from vmxaddr.exitinfo import DEFAULT_POLICY, Policy
from vmxaddr.fuzz.choosers import RecordingChooser, gen_case
from vmxaddr.fuzz.classes import ClassReport, FuzzReport
from vmxaddr.fuzz.shrink import minimise
from vmxaddr.gen import MEMORY_MNEMONICS
from vmxaddr.models.base import Model
from vmxaddr.progress import Progress
from vmxaddr.throughput import bulk_work


def model_mnemonics(*models: Model, forms: Sequence[str] = MEMORY_MNEMONICS) -> tuple[str, ...]:
    allowed = set(forms)
    for m in models:
        allowed &= set(getattr(m, "mnemonics", forms))
    return tuple(x for x in forms if x in allowed)


def fuzz(a: Model, b: Model, *, seed: int = 0, max_examples: int | None = None, seconds: float | None = None,
         policy: Policy = DEFAULT_POLICY, mnemonics: Sequence[str] | None = None, shrink: bool = True,
         hypothesis_examples: int = 200, hypothesis_seconds: float = 2.0, progress: Progress | None = None,
         names: tuple[str, str] = ("A", "B"),
         stop_when: Callable[[dict[str, ClassReport]], bool] | None = None, encoder: str = "sdm") -> FuzzReport:
    """Run A against B (the reference) on generated cases until `max_examples` cases or `seconds`.
    With an `encoder` other than "sdm", A gets that encoder's exit information, B the SDM's, and
    each class names the side that caused it (vmxaddr.pipeline)."""
    if max_examples is None and seconds is None:
        max_examples = 10_000
    mn = tuple(mnemonics) if mnemonics else model_mnemonics(a, b)
    rng = random.Random(seed)
    ch = RecordingChooser(rng)
    classes: dict[str, ClassReport] = {}
    start = time.monotonic()
    n = 0
    deadline = start + seconds if seconds is not None else None
    with bulk_work():  # millions of short-lived objects (vmxaddr.throughput)
        while True:
            if max_examples is not None and n >= max_examples:
                break
            if deadline is not None and n & 255 == 0 and time.monotonic() >= deadline:
                break
            ch.log = []
            case = gen_case(ch, mn, policy)
            n += 1
            if encoder == "sdm":
                exit, access = exit_and_access(case.instruction, case.state.rip, policy)
                name = divergence(exit, case.state, access, a, b)
            else:
                name = case_divergence(case, a, b, encoder)
            if name is not None:
                rep = classes.get(name)
                if rep is None:
                    rep = classes[name] = ClassReport(name, 0, n, time.monotonic() - start, ch.log, case)
                    if stop_when is not None and stop_when(classes):
                        rep.count += 1
                        break
                rep.count += 1
            if progress is not None and n & 1023 == 0:
                progress.update(n, f"{len(classes)} classes")
    elapsed = time.monotonic() - start
    if shrink:
        for i, rep in enumerate(classes.values()):
            if progress is not None:
                progress.stream.write(f"shrinking {i + 1}/{len(classes)}: {rep.name}\n")
            minimise(rep, a, b, mn, policy, seed, hypothesis_examples, hypothesis_seconds, encoder)
    return FuzzReport(names[0], names[1], seed, n, elapsed, classes, encoder)
