"""One deployment-id generator (orchestrator/core/ids.py), in the daemon's format, whoever
deploys: the daemon's submissions, `orchestrator deploy`, the library's `prepare`."""

from __future__ import annotations

from pathlib import Path

from orchestrator.core.ids import DEPLOYMENT_ID_RE, new_deployment_id
from orchestrator.core.spec import load_spec
from orchestrator.deploy.batch import prepare
from tests.specs import stub_spec


def test_ids_are_the_daemons_12_hex_and_distinct() -> None:
    ids = {new_deployment_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(DEPLOYMENT_ID_RE.fullmatch(i) for i in ids)
    assert DEPLOYMENT_ID_RE.fullmatch("3fa2b1c9d0e4")  # as ids already stored look


def test_prepare_without_a_deployment_takes_a_new_id(tmp_path: Path) -> None:
    spec = load_spec(stub_spec(tmp_path / "s", ["tb-01"], gpu=False))
    assert DEPLOYMENT_ID_RE.fullmatch(prepare(spec).deployment)
    assert prepare(spec, deployment="given").deployment == "given"
