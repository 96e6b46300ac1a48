"""Keeping CPython's cyclic garbage collector from dominating the long loops (fuzzing, oracle
cross-checks, the benchmark).

Those loops allocate millions of short-lived, acyclic containers — instructions, exit
information, results — while the memos (vmxaddr.decode, vmxaddr.diff) keep a few hundred
thousand long-lived ones. Reference counting frees everything a loop drops; the cyclic collector
only finds cycles, which these loops do not make. With CPython's default thresholds (700, 10, 10)
it still runs a young-generation pass every 700 allocations and promotes memo entries into the
older generations it then rescans. A larger first threshold makes those passes rare; the other
two stay as they are, so a cycle is still collected, only later. Measured: benchmarks/bench_diff.py
(which times both the pipeline and capstone inside `bulk_work()`) went from 0.76 to 0.89 of
capstone on its "shapes known" figure in one pair of runs; for `vmxaddr fuzz` the change is within
the noise (90,000–104,000 cases in 15 s either way), because generating cases dominates there.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

BULK_THRESHOLD = 50_000


@contextmanager
def bulk_work(threshold: int = BULK_THRESHOLD) -> Iterator[None]:
    """Within the block, a young-generation collection every `threshold` allocations instead
    of every 700; the previous thresholds come back on exit."""
    old = gc.get_threshold()
    gc.set_threshold(max(threshold, old[0]), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)
