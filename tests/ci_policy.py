"""Under CI=true nothing may skip for want of a tool: a missing oracle (iced-x86, unicorn), build
(the compiled models), binutils or Bochs turns the skip into a failure, so a CI run that lost one
of them cannot pass. Only the long campaigns (`@pytest.mark.slow`, run with --run-slow) may skip.
The hook is imported by tests/conftest.py; tests/test_ci_policy.py checks it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

SLOW_REASON = "long campaign: run with --run-slow"  # the reason tests/conftest.py gives


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if not (rep.skipped and under_ci()) or hasattr(rep, "wasxfail"):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    if "slow" in item.keywords and SLOW_REASON in reason:
        return  # a long campaign left out on purpose; under --run-slow it may not skip either
    rep.outcome = "failed"
    rep.longrepr = f"CI=true: this test may not skip (a missing oracle, build or tool fails the run): {reason}"
