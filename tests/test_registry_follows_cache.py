"""The model registry follows the cache (issue 21, section 1): a source fetched after
`vmxaddr.models` was imported lists its real-code model at once, and one removed from the cache
is no longer listed. The "fetch" here writes the manifest and files the way
vmxaddr.realcode.sources.fetch leaves them (no network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vmxaddr.models import REGISTRY
from vmxaddr.realcode import sources


def _fake_fetch(cache: Path, name: str) -> None:
    spec = sources.SOURCES[name]
    root = cache / "sources" / name
    files = {}
    for m in spec.members:
        p = root / "files" / m
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("/* stand-in */\n")
        files[m] = hashlib.sha256(p.read_bytes()).hexdigest()
    f = sources.Fetched(name, spec.package, "9.9-test", False, {}, files, str(root / "files"))
    (root / "manifest.json").write_text(json.dumps(f.to_json()))


def test_a_source_fetched_after_import_is_listed_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMXADDR_CACHE", str(tmp_path))
    assert "kvm-linux-6.1" not in REGISTRY and "xen-4.17" not in REGISTRY  # empty cache: none listed
    _fake_fetch(tmp_path, "linux-6.1")
    _fake_fetch(tmp_path, "xen-4.17")
    assert REGISTRY["kvm-linux-6.1"].real_code["version"] == "9.9-test"  # type: ignore[index]
    assert REGISTRY["xen-4.17"].real_code["package"] == "xen"  # type: ignore[index]
    assert {"kvm-linux-6.1", "xen-4.17"} <= {m.name for m in REGISTRY.values() if m.real_code}
    assert "kvm-linux-6.12" not in REGISTRY  # not fetched
    (tmp_path / "sources" / "linux-6.1" / "manifest.json").unlink()
    assert "kvm-linux-6.1" not in REGISTRY and "xen-4.17" in REGISTRY


def test_models_command_lists_a_model_fetched_in_the_same_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from vmxaddr.cli import main

    monkeypatch.setenv("VMXADDR_CACHE", str(tmp_path))
    _fake_fetch(tmp_path, "linux-6.12")
    main(["models", "--json"])
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert listed["kvm-linux-6.12"]["real_code"]["version"] == "9.9-test"


def test_same_models_in_the_same_order_as_a_fresh_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Dask worker imports vmxaddr.models afresh; check-trace's fingerprint lists the models in
    # registry order, so a worker must see what the parent sees, in the same order (the cause of
    # test_dask_local_cluster_gives_the_local_output failing after test_realcode_xen fetched xen-4.17).
    import os
    import subprocess
    import sys

    monkeypatch.setenv("VMXADDR_CACHE", str(tmp_path))
    assert "xen-4.17" not in REGISTRY
    _fake_fetch(tmp_path, "xen-4.17")
    fresh = subprocess.run([sys.executable, "-c", "from vmxaddr.models import REGISTRY; print(*REGISTRY)"],
                           capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    assert list(REGISTRY) == fresh.stdout.split()
    assert "xen-4.17" in fresh.stdout.split()
