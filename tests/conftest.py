import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ci_policy import SLOW_REASON, pytest_runtest_makereport  # noqa: E402,F401  (CI=true: skips fail)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run the long campaigns marked slow")


def pytest_collection_modifyitems(config, items):
    import pytest

    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason=SLOW_REASON)
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
