"""Environment kinds: what the `install` step builds on a host and what `verify` and
re-verification run the model in (DESIGN.md "Where it grows next: Environment kinds").

`base` holds the interface every kind implements (`EnvironmentKind`) and what a kind reports
once built (`BuiltEnvironment`); `registry` lists the kinds and picks the one a spec asks for
(`environment_for`); `venv` is the kind of today: a content-addressed venv from a hashed lock.

Adding a kind (an OCI image run by Podman, a conda-pack archive), tests included:
    deploy/environments/<kind>.py   the kind: selects, key, ensure, describe, interpreter,
                                    audited, ships_wheels
    deploy/environments/registry.py one line in `KINDS`, before the venv (the default)
    core/spec.py                    the `environment:` field that asks for it
    hosts/remote/hostops_<kind>.py  its host op (load or unpack, verified by sha256), and the
                                    op's registration and typed builder in the hosts layer
    tests/test_env_<kind>.py        the kind against testbed hosts
The steps, `plan`, the manifest and re-verification need no edit: they call the interface.
This package's own module imports nothing, so that the steps' context can name `base`'s types
without loading a kind.
"""
