"""Daemons on one PostgreSQL database (issue 16): each with its own state dir, nothing shared
but the database. Until leases share the work, a second daemon on the same database is refused
while the first lives; once the first is killed, the next one runs what the first received
(its bundle from the store: nothing of the first's disk is read) and settles what it left."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from tests.daemons import ECHO, Daemon, run_to_exit, wait_for, write_config
from tests.pg import Cluster
from tests.specs import stub_spec


def test_a_second_daemon_waits_its_turn_then_runs_what_the_first_received(
        postgres: Cluster, tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    url = postgres.database()
    extra = ECHO + f'store = "{url}"\nmax_parallel_deployments = 1\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = daemons(write_config(tmp_path / "a", extra), env={"ORCHESTRATOR_ECHO_DELAY_S": "5"})
    refused = run_to_exit(write_config(tmp_path / "b", extra))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "another orchestrator daemon is using the database" in refused.stdout + refused.stderr
    assert "postgresql://postgres@" in refused.stdout + refused.stderr

    running = json.loads(first.cli("submit", str(stub_spec(tmp_path / "s1", ["h1"], name="one")),
                                   "--json").stdout)["id"]
    queued = json.loads(first.cli("submit", str(stub_spec(tmp_path / "s2", ["h2"], name="two")),
                                  "--json").stdout)["id"]
    first.stop(signal.SIGKILL)

    second = daemons(tmp_path / "b" / "orchestrator.toml", env={"ORCHESTRATOR_ECHO_DELAY_S": "0"})
    with second.http() as http:
        def settled() -> list[dict[str, object]] | None:
            rs = [http.get(f"/v1/deployments/{d}").json() for d in (running, queued)]
            return rs if all(r["state"] in {"succeeded", "failed"} for r in rs) else None

        records = wait_for(settled, 60, "both deployments to settle on the second daemon")
    assert [r["state"] for r in records] == ["failed", "succeeded"], records
    # The queued one ran from the bundle the first daemon stored, unpacked on the second's disk.
    assert (second.state_dir / "bundles" / queued / "spec.yaml").is_file()
    events = second.cli("logs", queued, "--json")
    seqs = [json.loads(line)["seq"] for line in events.stdout.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))
