"""The errors moved into vmxaddr/errors.py are the same classes where they used to be defined, so
`except vmxaddr.models.UnknownModel` and the like still catch what the engines raise."""

from __future__ import annotations

import importlib

import pytest

from vmxaddr import errors

MOVED = [("vmxaddr.cli", "UsageError"), ("vmxaddr.cli", "fail"), ("vmxaddr.models.guard", "ModelError"),
         ("vmxaddr.models", "UnknownModel"), ("vmxaddr.models.registry", "UnknownModel"),
         ("vmxaddr.realcode.models", "RealCodeError"), ("vmxaddr.realcode.worker", "ModelFailure"),
         ("vmxaddr.oracles.bochs", "BochsError"), ("vmxaddr.oracles.bochs", "BochsUnavailable"),
         ("vmxaddr.live.images", "LiveError"), ("vmxaddr.live.images", "ToolMissing"),
         ("vmxaddr.parallel", "ParallelError")]


@pytest.mark.parametrize(("module", "name"), MOVED)
def test_the_old_name_is_the_leaf_modules(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_the_leaf_module_imports_nothing_of_vmxaddr() -> None:
    """A leaf: importing it cannot start a cycle."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(errors.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
        [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [m for m in imported if m and m.startswith("vmxaddr")] == []


def test_fail_raises_a_usage_error_and_a_model_failure_is_a_model_error() -> None:
    with pytest.raises(errors.UsageError, match="bad input"):
        errors.fail("bad input")
    e = errors.ModelFailure("c:x.c:f", "crashed: SIGSEGV", "in f", "case")
    assert isinstance(e, errors.ModelError) and e.kind == "crashed" and str(e) == "model c:x.c:f crashed: SIGSEGV (in f) on case"
