"""A model's own classifier of the form "the first corrected variant that agrees" (Xen's port,
vmxaddr.models.xen_port.classify), turned into conditions instead of being run on every path.

Run on symbolic results, such a classifier runs up to 45 variants of the model one after the
other, each branching again, so the paths of one divergence multiply variant by variant. But its
answer is a plain function of which variants agree: the class of an input is the first variant
(in the classifier's own list, `classify.variants`) that agrees with the reference there, else
`classify.otherwise`. So each variant is explored once per encoder path, "variant v agrees" is the
disjunction over v's paths of (path condition and the agreement condition, `classify.agree`
explored on the two results), and the class of v is "v agrees and no earlier one does". The
solver then decides each class as for any other (vmxaddr.prove.engine), and each witness is
replayed through the concrete classifier: a class the conditions and the classifier name
differently is an error, never a proof.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import z3

from vmxaddr.prove.sym import Feasibility, Paths


class Delegate(Exception):
    """diff.classify handed the divergence to the model's own classifier."""


class Delegating:
    """The model under test as vmxaddr.diff.classify sees it, with its own classifier replaced by
    a marker: its answer is built as conditions (`Variants`)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self._model(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        if name == "classify":
            return _delegate
        return getattr(self._model, name)


def _delegate(*_args: Any) -> str:
    raise Delegate


def variant_classifier(model: Any) -> Any | None:
    """The model's own classifier when it is a list of variants, else None."""
    own = getattr(model, "classify", None)
    return own if getattr(own, "variants", None) is not None else None


class Variants:
    """The classes of a variant classifier on one encoder path, as conditions."""

    def __init__(self, own: Any, exit: Any, state: Any, access: Any, feas: Feasibility, base: list[z3.BoolRef],
                 end: float) -> None:
        self.own = own
        self.paths: list[tuple[str, list[tuple[z3.BoolRef, Any]]]] = []
        for name, variant in own.variants:
            run: Callable[[], Any] = lambda v=variant: v(exit, state, access)  # noqa: E731
            self.paths.append((name, list(Paths(feas, base, deadline=end).run(run))))
        self._memo: dict[int, list[tuple[str, z3.BoolRef]]] = {}

    def classes(self, reference: Any) -> list[tuple[str, z3.BoolRef]]:
        """[(class, condition)] for a divergence from `reference` (one result of the reference)."""
        key = id(reference)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        out: list[tuple[str, z3.BoolRef]] = []
        earlier: list[z3.BoolRef] = []
        for name, paths in self.paths:
            disj = []
            for pv, rv in paths:
                for pg, ok in Paths().run(lambda rv=rv: bool(self.own.agree(reference, rv))):
                    if ok:
                        disj.append(z3.And(pv, pg))
            agrees = z3.simplify(z3.Or(*disj)) if disj else z3.BoolVal(False)
            if not z3.is_false(agrees):
                out.append((name, z3.And(agrees, *(z3.Not(e) for e in earlier))))
                earlier.append(agrees)
        out.append((self.own.otherwise, z3.And(*(z3.Not(e) for e in earlier))))
        self._memo[key] = out
        self._keep = reference  # the id stays that of a live object
        return out
