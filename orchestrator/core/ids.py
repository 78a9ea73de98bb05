"""Deployment ids: one format, made in one place, whoever deploys (the daemon, `orchestrator
deploy`, the library's `prepare`, the benchmarks).

A deployment id is 12 lowercase hex digits of a random uuid4, e.g. `3fa2b1c9d0e4`. It is the
format the daemon has always given out, and users meet it everywhere: in the API's URLs
(`/v1/deployments/<id>`), as the name of its events file (`<state_dir>/logs/<id>.jsonl`) and of
its bundle dir, in `orchestrator status|logs|rollback ID`, and on hosts inside the deploy lock
("being deployed by <id>") and each release's staging record. Keeping it means every id already
stored stays valid. 48 random bits make a collision between two deployments of one
orchestrator vanishingly unlikely; ids are not ordered (the store orders by creation time).

The release id (a time stamp plus a content hash: orchestrator/core/release.py) is a different
thing: it names what is deployed, not the act of deploying it.
"""

from __future__ import annotations

import re
import uuid

#: What `new_deployment_id` makes. Older ids (the library's former `dep-<12 hex>`) are not
#: checked against it anywhere: an id is an opaque name once made.
DEPLOYMENT_ID_RE = re.compile(r"^[0-9a-f]{12}$")


def new_deployment_id() -> str:
    """A fresh deployment id: 12 lowercase hex digits (random, from uuid4)."""
    return uuid.uuid4().hex[:12]


__all__ = ["DEPLOYMENT_ID_RE", "new_deployment_id"]
