"""What the UI's pages show, read from the store and the inventory: the fleet (each host's
status, GPU stack, releases, labels and groups) and latency over time per app and host.

These are read models only: nothing here changes a state. Values are passed on as the store
has them (facts come from hosts): the pages render every one of them as text.
"""

from __future__ import annotations

import bisect
import os
import threading
from pathlib import Path
from typing import Any

from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.core.states import HOST_FINISHED
from orchestrator.daemon.store import Store
from orchestrator.errors import OrchestratorError

#: The latency points of an app come from its newest deployments' events (each re-verification's
#: `reverify` event goes to the app's latest deployment): a bound on what one chart reads.
LATENCY_DEPLOYMENTS = 50
QUANTILES = ("p50_ms", "p95_ms", "p99_ms")
#: The most hosts one fleet page may ask for (`limit`): a page's names go into one query.
MAX_PAGE = 500


class InventoryCache:
    """The daemon's inventory file, parsed again only when it changed (the fleet page is read
    far more often than the file is edited)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._inventory: Inventory | None = None

    def get(self) -> Inventory | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if key != self._key:
                try:
                    self._inventory = load_inventory(self.path)
                except OrchestratorError:
                    self._inventory = None  # the daemon itself reports a bad inventory
                self._key = key
            return self._inventory


def fleet(store: Store, inventory: Inventory | None, *, after: str | None = None,
          limit: int | None = None) -> dict[str, Any]:
    """Every host the store knows or the inventory lists, by name (or one page of them: the
    `limit` hosts named after `after`): status and reasons (the worst over its apps' last
    re-verifications, with all their reasons), facts summary, per-app releases (from the last
    probe) with each app's own last re-verification there (`reverified`), labels and groups;
    `total` hosts in all and whether `more` follow the page. Three store reads whatever the
    fleet's size: the names, the page's latest records, the page's app results (one query,
    not one per host); a `limit`ed page decodes only its own hosts' facts, so the first
    screenful of a thousand-host fleet is answered before the rest is read."""
    names = sorted(set(store.host_names()) | set(inventory.hosts if inventory else ()))
    total = len(names)
    if after is not None:
        names = names[bisect.bisect_right(names, after):]
    more = limit is not None and len(names) > limit
    if limit is not None:
        names = names[:limit]
    # A page (at most MAX_PAGE) is read by its names; the rest of the fleet whole (its names
    # could pass SQLite's parameter limit), the hosts before `after` then left out here.
    page = names if limit is not None else None
    records = {h["host"]: h for h in store.hosts(page)}
    results = store.fleet_app_results(page)
    groups_of: dict[str, list[str]] = {}
    for group, members in (inventory.groups if inventory else {}).items():
        for member in members:
            groups_of.setdefault(member, []).append(group)
    hosts = []
    for name in names:
        record = records.get(name)
        inv = inventory.hosts.get(name) if inventory else None
        facts = (record or {}).get("facts") or {}
        hosts.append({
            "host": name,
            "status": record["status"] if record else "unknown",
            "reasons": record["reasons"] if record else [],
            "verified": record["ts"] if record else None,
            "labels": dict(inv.labels) if inv else {},
            "groups": sorted(groups_of.get(name, [])),
            "driver": _get(facts, "nvml", "driver_version"),
            "cuda": _get(facts, "nvml", "cuda_driver_version"),
            "nvml_error": _get(facts, "nvml", "error", "message"),
            "gpus": [_gpu(g) for g in facts.get("gpus") or [] if isinstance(g, dict)],
            "releases": {str(app): _get(rel, "current")
                         for app, rel in (facts.get("releases") or {}).items()},
            # Each app's last re-verification on this host (an app re-verified there but no
            # longer seen in its probe's releases is still listed: its result still counts).
            "reverified": results.get(name, {}),
        })
    return {"hosts": hosts, "groups": sorted(inventory.groups) if inventory else [],
            "total": total, "more": more}


def app_history(store: Store, app: str) -> dict[str, Any]:
    """What the app's newest deployments' events say, per host:
    - `latency`: [point], each passing deploy-time `verify` step (kind "deploy": the baseline of
      the release it made) and each re-verification that ran the warmup (kind "reverify"),
      oldest first, with its release and p50/p95/p99 in ms;
    - `releases`: [{release, state, deployment, ts}], newest first: the release a deployment
      put on the host and what became of it ("current", then "rollback target" when a newer
      one succeeded, "previous" after that; "bad" when the host ended failed after its switch
      or rolled back; "undone" when the rollout put the host back);
    - `results`: the app's last re-verification result on the host, where there is one."""
    series: dict[str, list[dict[str, Any]]] = {}
    releases: dict[str, list[dict[str, Any]]] = {}
    records = store.list_deployments(app=app, limit=LATENCY_DEPLOYMENTS)
    for record in reversed(records):  # oldest first
        release = None
        for event in store.events(record.id):
            kind, host = event["event"], event.get("host")
            if kind == "deployment.started":
                release = event.get("release_id")
            point = _point(event, release)
            if point is not None:
                series.setdefault(str(host), []).append(point)
            if host and release:
                _release_event(releases.setdefault(str(host), []), event, release)
    for points in series.values():
        points.sort(key=lambda p: p["ts"])
    results = {}
    for host in sorted(set(series) | set(releases)):
        result = store.app_results(host).get(app)
        if result is not None:
            results[host] = {"status": result[0], "reasons": result[1]}
    return {"app": app, "latency": series, "results": results,
            "releases": {h: list(reversed(r)) for h, r in releases.items()}}


_DEMOTED = {"current": "rollback target", "rollback target": "previous"}
_PROMOTED = (("rollback target", "current"), ("previous", "rollback target"))


def _release_event(history: list[dict[str, Any]], event: dict[str, Any], release: Any) -> None:
    kind, status = event["event"], event.get("status")
    entry = {"release": release, "deployment": event["deployment"], "ts": event["ts"]}
    if kind == HOST_FINISHED and status == "succeeded":
        for old in history:
            old["state"] = _DEMOTED.get(old["state"], old["state"])
        history.append({**entry, "state": "current"})
    elif kind == HOST_FINISHED and status in ("rolled_back", "broken"):
        history.append({**entry, "state": "bad"})
    elif kind == "recovery" and event.get("step") == "undo" and status == "ok":
        mine = [h for h in history if h["release"] == release and h["state"] == "current"]
        for h in mine:
            h["state"] = "undone"
        if mine:  # the host is back on its rollback target; the one before becomes that
            for state, promoted in _PROMOTED:
                older = [h for h in history if h["state"] == state]
                if older:
                    older[-1]["state"] = promoted


def _point(event: dict[str, Any], release: Any) -> dict[str, Any] | None:
    if not event.get("host") or not all(isinstance(event.get(q), (int, float))
                                        for q in QUANTILES):
        return None
    if event["event"] == "step" and event.get("step") == "verify" and event["status"] == "ok":
        kind, release_id = "deploy", release
    elif event["event"] == "reverify":
        kind, release_id = "reverify", event.get("release_id")
    else:
        return None
    # The golden check of that run: at deploy, the samples that matched (a failing golden fails
    # the step, so a point exists only for a pass); at re-verification, its status and reasons.
    golden = (f"{event.get('golden_samples')} samples match" if kind == "deploy"
              else "; ".join(str(r) for r in event.get("reasons") or []) or event["status"])
    return {"ts": event["ts"], "kind": kind, "release": release_id, "deployment":
            event["deployment"], "status": event["status"], "golden": golden,
            **{q: event[q] for q in QUANTILES}}


def _gpu(gpu: dict[str, Any]) -> dict[str, Any]:
    return {k: gpu.get(k) for k in ("index", "name", "uuid", "memory_total_bytes",
                                    "compute_capability")} | {
        # Whatever else a newer probe reports per GPU (health facts): shown as generic text.
        "extra": {str(k): v for k, v in gpu.items()
                  if k not in ("index", "name", "uuid", "memory_total_bytes",
                               "memory_free_bytes", "compute_capability")}}


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
