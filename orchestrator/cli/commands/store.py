"""`orchestrator store migrate | copy`: the daemon's store, from the command line.

`migrate` opens the configured store (the daemon's `store` key, else SQLite in `state_dir`),
which creates or migrates its schema, and prints its version: run it once before starting
several daemons of a new version on one database. `copy --from STATE_DIR` copies a SQLite state
(a stopped daemon's state dir) into the configured PostgreSQL store, bundles included
(orchestrator/daemon/storecopy.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orchestrator.cli import exits
from orchestrator.core.terminal import safe
from orchestrator.daemon.config import load_config
from orchestrator.errors import EXIT_INVALID, EXIT_OK, EXIT_UNREACHABLE, InvalidInput

EXITS = exits.table(
    {EXIT_OK: "the schema is current (migrate), or the state was copied (copy)",
     EXIT_INVALID: "invalid input (config, no PostgreSQL store named, not a state dir, a "
                   "store that already holds deployments)",
     EXIT_UNREACHABLE: "the PostgreSQL store does not answer"})


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "store", help="migrate the daemon's store, or copy a SQLite state into PostgreSQL",
        description="The daemon's store: `migrate` brings its schema to this version; `copy` "
                    "copies a stopped daemon's SQLite state dir into the PostgreSQL store the "
                    "config names.", **exits.help_args(EXITS))
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("migrate", "create or migrate the configured store's schema"),
                       ("copy", "copy a SQLite state dir into the configured PostgreSQL store")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--config", help="the daemon's config file (TOML)")
        if name == "copy":
            action.add_argument("--from", dest="source", required=True, metavar="STATE_DIR",
                                help="the state dir of a stopped daemon (its state.sqlite3)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.daemon.sql_store import SqlStore
    from orchestrator.daemon.store import open_store

    config = load_config(args.config)
    if args.action == "migrate":
        store = open_store(config.store_target)
        print(safe(f"{store.location}: schema version {store.schema_version()}"))
        store.close()
        return EXIT_OK
    if config.store is None:
        raise InvalidInput("store copy: the config names no PostgreSQL store (`store = "
                           "\"postgresql://...\"`) to copy into")
    source = Path(args.source)
    if not (source / "state.sqlite3").is_file():
        raise InvalidInput(f"{source}: no state.sqlite3 here (give a daemon's state dir)")
    from orchestrator.daemon.storecopy import copy_store

    src, dst = open_store(source / "state.sqlite3"), open_store(config.store)
    try:
        assert isinstance(src, SqlStore) and isinstance(dst, SqlStore)
        counts = copy_store(src, dst, source / "bundles")
    finally:
        src.close()
        dst.close()
    print(safe(f"copied into {dst.location}: "
               + ", ".join(f"{n} {t}" for t, n in counts.items())))
    return EXIT_OK
