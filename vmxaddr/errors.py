"""The errors that cross layers, in one leaf module that imports nothing of vmxaddr.

An engine raises them and the command line reports them (one line, exit status 2), so both can
import them at the top of the module without importing each other: this is what lets the engines
avoid `from vmxaddr.cli import fail` inside functions. Each is also importable from the module it
used to live in (vmxaddr.cli, vmxaddr.models.guard, vmxaddr.models, vmxaddr.realcode.models,
vmxaddr.oracles.bochs, vmxaddr.live.images, vmxaddr.parallel, vmxaddr.realcode.worker).
"""

from __future__ import annotations

import traceback
from typing import NoReturn


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 2."""


def fail(message: str) -> NoReturn:
    """Stop the command with a one-line error for the user (exit status 2)."""
    raise UsageError(message)


class ModelError(Exception):
    """A user's model misbehaved. str(e) is one line: the model, what it did, and the case."""

    def __init__(self, model: str, what: str, case: str = "", cause: BaseException | None = None) -> None:
        self.model, self.what, self.case, self.cause = model, what, case, cause
        super().__init__(f"model {model} {what}" + (f" on {case}" if case else ""))

    @property
    def details(self) -> str:
        """The model's traceback (what --debug prints), or "" when it returned a bad value."""
        return "".join(traceback.format_exception(self.cause)) if self.cause is not None else ""

    @property
    def kind(self) -> str:
        """A short class for grouping (fuzz counts one divergence class per kind): the verb and,
        for a raise, the exception type, e.g. "raised ZeroDivisionError" or "returned None"."""
        return self.what.split(":", 1)[0]


class ModelFailure(ModelError):
    """A compiled model crashed, hung, exited or answered something vmxaddr.h does not allow, on
    one case. `finding` is what it did without the values ("crashed: SIGSEGV", "timed out",
    "exited (status 0)", "returned an invalid result"): fuzz names its class after it."""

    def __init__(self, model: str, finding: str, detail: str = "", case: str = "") -> None:
        self.finding = finding
        super().__init__(model, finding + (f" ({detail})" if detail else ""), case)


class UnknownModel(LookupError):
    """A model name that is neither registered nor a loadable `module:function` or real-code name."""


class RealCodeError(LookupError):
    """A real-code model that cannot be built or loaded; the message is for a person (may span
    lines: unresolved identifiers are listed one per line)."""


class BochsUnavailable(RuntimeError):
    """Bochs or a tool of its harness (as, ld, objcopy, ...) is not installed."""


class BochsError(RuntimeError):
    """A Bochs run failed: it did not boot, crashed, or left an output the harness cannot read."""


class LiveError(RuntimeError):
    """Something the live harness needs is missing or broke; the message says what to do."""


class ToolMissing(LiveError):
    """A host tool is missing (exit status 2)."""


class ParallelError(Exception):
    """A bad --jobs or --dask value, or Dask missing: one line for the user."""
