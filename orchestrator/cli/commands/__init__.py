"""CLI subcommands, one module each; `orchestrator.cli.app` registers every module found here."""
