"""`orchestrator store copy`: a one-shot copy of a SQLite state into a PostgreSQL store.

Moving from one daemon on SQLite to several on PostgreSQL: stop the daemon, copy, point every
daemon's config at the database (docs/operations.md "Running several daemons"). Every table the
daemon keeps is copied row for row in one transaction (so a failed copy leaves the database as
it was), then each deployment's bundle from the state dir's `bundles/` into the store. The
destination must hold no deployment yet: a copy never merges two histories.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.daemon import bundle
from orchestrator.daemon.sql_store import SqlStore
from orchestrator.errors import Conflict

#: In foreign-key order. Leases, requests and bundles are not copied: no lease (nor a request
#: to its holder) outlives its daemon, and the bundles come from the state dir's files.
TABLES = ("deployments", "steps", "events", "host_facts", "releases", "watched_specs",
          "app_results")


def copy_store(src: SqlStore, dst: SqlStore, bundles_dir: Path | None) -> dict[str, int]:
    """Rows copied per table, and `bundles`: how many bundles went into `dst`."""
    if dst._rows("SELECT COUNT(*) AS n FROM deployments")[0]["n"]:
        raise Conflict(f"{dst.location} already holds deployments: a copy goes into an empty "
                       "store only (drop and recreate the database to start over)")
    counts: dict[str, int] = {}
    with dst._bulk() as q:
        for table in TABLES:
            rows = src._rows(f"SELECT * FROM {table}")
            for row in rows:
                columns = ", ".join(row)
                q(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})",
                  tuple(row.values()))
            counts[table] = len(rows)
    copied = 0
    if bundles_dir is not None and bundles_dir.is_dir():
        known = {r["id"] for r in src._rows("SELECT id FROM deployments")}
        for path in sorted(p for p in bundles_dir.iterdir() if p.is_dir() and p.name in known):
            bundle.keep_in_store(dst, path.name, path)
            copied += 1
    counts["bundles"] = copied
    return counts


__all__ = ["TABLES", "copy_store"]
