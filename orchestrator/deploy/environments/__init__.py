"""Environment kinds: what the `install` step builds on a host and what `verify` and
re-verification run the model in (DESIGN.md "Where it grows next: Environment kinds").

`base` holds the interface every kind implements (`EnvironmentKind`) and what a kind reports
once built (`BuiltEnvironment`); `registry` lists the kinds and picks the one a spec asks for
(`environment_for`); `venv` is the kind of today: a content-addressed venv from a hashed lock.

A new kind is one module here, one line in `registry.KINDS`, its spec field and its tests.
This package's own module imports nothing, so that the steps' context can name `base`'s types
without loading a kind.
"""
