"""CLI subcommands, one module each; `orchestrator.cli` registers every module found here."""
