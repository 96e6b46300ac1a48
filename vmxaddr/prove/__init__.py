"""Proofs over the models: the rule language's symbolic backend (sym), instruction forms (forms),
the prover (engine) and `vmxaddr prove` (cli). docs/proofs.md says what is proved about what."""

from vmxaddr.prove.cli import register

__all__ = ["register"]
