"""Proofs over the models: the rule language's symbolic backend (sym), instruction forms (forms),
the prover (engine) and `vmxaddr prove` (cli, registered through vmxaddr.cli.SUBCOMMANDS).
docs/proofs.md says what is proved about what."""
