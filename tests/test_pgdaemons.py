"""Daemons on one PostgreSQL database (issue 16): each with its own state dir, nothing shared
but the database. Work is claimed under leases: a deployment is worked by the daemon that
received it; when that daemon is killed, another takes it over once its lease expires, running
what the first received (its bundle from the store: nothing of the first's disk is read)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemons import ECHO, Daemon, wait_for, write_config
from tests.pg import Cluster
from tests.specs import stub_spec

TTL_S = 3.0


def test_a_killed_daemons_work_is_taken_over_by_another_after_its_lease_expires(
        postgres: Cluster, tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    url = postgres.database()
    extra = ECHO + f'store = "{url}"\nmax_parallel_deployments = 1\nlease_ttl_s = {TTL_S}\n'
    for name in "abc":
        (tmp_path / name).mkdir()
    first = daemons(write_config(tmp_path / "a", extra), env={"ORCHESTRATOR_ECHO_DELAY_S": "5"})
    others = [daemons(write_config(tmp_path / n, extra), env={"ORCHESTRATOR_ECHO_DELAY_S": "0"})
              for n in "bc"]
    running = json.loads(first.cli("submit", str(stub_spec(tmp_path / "s1", ["h1"], name="one")),
                                   "--json").stdout)["id"]
    queued = json.loads(first.cli("submit", str(stub_spec(tmp_path / "s2", ["h2"], name="two")),
                                  "--json").stdout)["id"]
    time.sleep(TTL_S)  # renewed meanwhile: the others leave both alone
    with others[0].http() as http:
        assert http.get(f"/v1/deployments/{queued}").json()["state"] == "queued"
    first.stop(signal.SIGKILL)
    killed = time.monotonic()

    with others[0].http() as http:
        def settled() -> list[dict[str, Any]] | None:
            rs = [http.get(f"/v1/deployments/{d}").json() for d in (running, queued)]
            return rs if all(r["state"] in {"succeeded", "failed"} for r in rs) else None

        records = wait_for(settled, TTL_S + 30, "both deployments to settle on another daemon")
    taken_s = time.monotonic() - killed
    # The echo runner cannot resume: the running one is settled (failed), the queued one run.
    assert [r["state"] for r in records] == ["failed", "succeeded"], records
    assert taken_s < TTL_S + 5 + 1, f"taken over {taken_s:.1f} s after the kill"
    # Run by exactly one of the others, from the bundle the first daemon stored.
    ran = [d for d in others if (d.state_dir / "bundles" / queued / "spec.yaml").is_file()]
    assert len(ran) == 1, [d.state_dir for d in others]
    logs = others[1].cli("logs", queued, "--json")  # from any daemon: the store's events
    seqs = [json.loads(line)["seq"] for line in logs.stdout.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 3
