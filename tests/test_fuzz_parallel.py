"""`vmxaddr fuzz --jobs N` and `--dask ADDRESS` (issue 15 item 3): seed blocks run anywhere and
merge to the report one process gives — same classes, counts, first cases and (replay-shrunk)
witnesses — because each class keeps its earliest witness by seed block, then case.

Dask is in the test extra: without it this module fails to import (under CI=true as anywhere)."""

from __future__ import annotations

import json

import pytest
from distributed import LocalCluster

from vmxaddr.cli import main
from vmxaddr.exitinfo import Policy
from vmxaddr.fuzz import fuzz, model_mnemonics
from vmxaddr.fuzz.campaign import block_seed, block_sizes
from vmxaddr.fuzz.classes import ClassReport, merge
from vmxaddr.fuzz.runner import DaskExecutor, LocalExecutor, Spec, fuzz_parallel
from vmxaddr.models import get
from vmxaddr.parallel import dask_client

MODEL, AGAINST = "kvm-f9eb4af6", "sdm"
BLOCK = 700  # small blocks, so that a short run has several
CASES = 3000  # five blocks: 700 × 4 + 200


def _summary(rep):
    return [(c.name, c.count, c.first_case, c.first_seed, c.shrunk_by,
             c.witness.instruction.raw if c.witness else None, c.witness.state if c.witness else None)
            for c in rep.classes.values()]


@pytest.fixture(scope="module")
def local():
    a, b = get(MODEL), get(AGAINST)
    return fuzz(a, b, seed=3, max_examples=CASES, hypothesis_examples=0, names=(MODEL, AGAINST), block_size=BLOCK)


def _spec():
    return Spec(MODEL, AGAINST, "sdm", Policy(), model_mnemonics(get(MODEL), get(AGAINST)), 3, BLOCK)


def test_blocks_are_what_the_docs_say():
    assert block_sizes(CASES, BLOCK) == [700, 700, 700, 700, 200]
    assert block_seed(3, 0) == 3 and len({block_seed(3, k) for k in range(50)}) == 50


def test_merge_keeps_the_earliest_witness_whatever_the_order():
    # Hand-made: class X first seen at case 900 in block 1 and at case 12 in block 0.
    late = ClassReport("X", 5, 900, 0.0, [1], None, "", 11)
    early = ClassReport("X", 2, 12, 0.0, [0], None, "", 3)
    for order in ([late, early], [early, late]):
        into: dict[str, ClassReport] = {}
        merge(into, [ClassReport(**vars(r)) for r in order])
        assert (into["X"].first_case, into["X"].count, into["X"].first_seed) == (12, 7, 3)


def test_jobs_2_gives_the_report_one_process_gives(local):
    assert len(local.classes) >= 3 and local.cases == CASES
    rep = fuzz_parallel(_spec(), LocalExecutor(2), max_examples=CASES, seconds=None, hypothesis_examples=0)
    assert rep.workers == 2 and rep.cases == CASES
    assert _summary(rep) == _summary(local)


def test_dask_local_cluster_gives_the_same_report(local):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        client = dask_client(cluster.scheduler_address)
        rep = fuzz_parallel(_spec(), DaskExecutor(client, cluster.scheduler_address), max_examples=CASES,
                            seconds=None, hypothesis_examples=0)
    assert rep.where == cluster.scheduler_address and rep.cases == CASES
    assert _summary(rep) == _summary(local)


def _cli(capsys, *extra):
    assert main(["fuzz", "--model", "kvm-fdb28619", "--against", "kvm-6694e480", "--seed", "2", "--max-examples",
                 "4000", "--hypothesis-examples", "0", "--quiet", "--json", *extra]) == 0
    obj = json.loads(capsys.readouterr().out)
    for k in ("seconds", "generating_seconds", "cases_per_second", "workers", "where"):
        obj.pop(k)
    for c in obj["classes"]:
        c.pop("first_seconds")
    return obj


def test_cli_jobs_and_dask_print_what_one_process_prints(capsys, monkeypatch):
    monkeypatch.setattr("vmxaddr.fuzz.cli.BLOCK_SIZE", 1000)  # four blocks (10,000 in real runs)
    one = _cli(capsys)
    assert one["cases"] == 4000 and one["classes"] and one["block_size"] == 1000
    assert _cli(capsys, "--jobs", "2") == one
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        assert _cli(capsys, "--dask", cluster.scheduler_address) == one


def test_dask_unreachable_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr("vmxaddr.parallel.DASK_TIMEOUT", 1.0)
    assert main(["fuzz", "--model", MODEL, "--dask", "tcp://127.0.0.1:1", "--max-examples", "10"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach a Dask scheduler at tcp://127.0.0.1:1" in err and len(err.strip().splitlines()) == 1


def test_jobs_without_a_limit_runs_the_default_number_of_cases(capsys, monkeypatch):
    # Neither --max-examples nor --time: 10,000 cases, as with one process (it ran forever).
    monkeypatch.setattr("vmxaddr.fuzz.cli.BLOCK_SIZE", 2500)
    assert main(["fuzz", "--model", "kvm-82277eee", "--against", "kvm-6694e480", "--jobs", "2", "--quiet",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cases"] == 10_000
