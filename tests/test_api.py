"""The API in-process (FastAPI's TestClient over the real app, store and service, with the
runner that touches no host): error mapping, limits, bundle safety, the TCP guard, and a
bounded schemathesis run against /openapi.json that may never produce a 5xx."""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from orchestrator.core.ids import DEPLOYMENT_ID_RE
from orchestrator.core.states import DeploymentState, HostStepState
from orchestrator.daemon.api import create_app
from orchestrator.daemon.bundle import pack_bundle
from orchestrator.daemon.config import DaemonConfig, TcpConfig
from orchestrator.daemon.events import EventHub
from orchestrator.daemon.runners.base import EchoRunner
from orchestrator.daemon.service import Service
from orchestrator.daemon.store import open_store
from tests.specs import LOCK, stub_spec

with warnings.catch_warnings():
    # starlette asks for `httpx2`, which is not installed; its TestClient works with httpx.
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

TOKEN = "s3cret-token-0123456789"


def write_spec(directory: Path) -> Path:
    """A valid spec with small real files beside it (the model is any bytes: no runner here
    loads it)."""
    return stub_spec(directory, ["tb-01", "tb-02"], name="fraud", lock=LOCK, gpu=None,
                     model=b"model bytes")


def bundle_bytes(spec: Path) -> bytes:
    out = io.BytesIO()
    pack_bundle(spec, out)
    return out.getvalue()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    config = DaemonConfig(state_dir=tmp_path / "state", socket=tmp_path / "o.sock",
                          max_body_bytes=64 * 1024,
                          runner="orchestrator.daemon.runners.base:EchoRunner",
                          tcp=TcpConfig(enabled=True, token_file=tmp_path / "token"))
    store = open_store(config.store_path)
    hub = EventHub(store, config.logs_dir)
    svc = Service(config, store, hub, EchoRunner(config))
    svc.start()
    yield svc
    svc.stop(10)
    hub.close()
    store.close()


@pytest.fixture
def api(service: Service) -> Iterator[TestClient]:
    # TestClient's scope has a port, like TCP: send what a loopback TCP client must send.
    with TestClient(create_app(service, token=TOKEN), base_url="http://localhost",
                    headers={"authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def wait_state(api: TestClient, deployment: str, states: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record: dict[str, Any] = api.get(f"/v1/deployments/{deployment}").json()
        if record["state"] in states:
            return record
        time.sleep(0.02)
    raise AssertionError(f"{deployment} never reached {states}")


def test_submit_a_tar_bundle_and_see_it_finish(api: TestClient, tmp_path: Path,
                                              service: Service) -> None:
    body = bundle_bytes(write_spec(tmp_path / "spec"))
    response = api.post("/v1/deployments", content=body,
                        headers={"content-type": "application/x-tar"})
    assert response.status_code == 201, response.text
    deployment = response.json()["id"]
    assert DEPLOYMENT_ID_RE.fullmatch(deployment)  # the one generator's (core/ids.py)
    bundle = service.bundle_dir(deployment)
    assert (bundle / "model.joblib").read_bytes() == b"model bytes"
    record = wait_state(api, deployment, {"succeeded"})
    assert set(record["hosts"]) == {"tb-01", "tb-02"}
    assert all(s["state"] == "ok" for s in record["hosts"]["tb-01"]["steps"])
    events = [json.loads(x) for x in api.get(f"/v1/deployments/{deployment}/events").text.split()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    only = api.get(f"/v1/deployments/{deployment}/events", params={"host": "tb-02", "after": 3})
    assert {json.loads(x)["host"] for x in only.text.split()} == {"tb-02"}
    assert [d["id"] for d in api.get("/v1/deployments", params={"app": "fraud"}).json()] == [
        deployment]


def test_invalid_spec_is_400_with_file_line_field(api: TestClient) -> None:
    spec = "apiVersion: orchestrator/v1\nkind: Deployment\nname: Bad_Name\ntargets: [a]\n"
    response = api.post("/v1/deployments", json={"spec": spec})
    assert response.status_code == 400
    body = response.json()
    assert body["kind"] == "SpecError" and body["file"] == "spec.yaml"
    assert (body["line"], body["field"]) == (3, "name"), body


def test_yaml_alias_in_spec_is_refused(api: TestClient) -> None:
    response = api.post("/v1/deployments", json={"spec": "a: &x 1\nb: *x\n"})
    assert response.status_code == 400 and response.json()["kind"] == "SpecError"


@pytest.mark.parametrize("method,path", [
    ("get", "/v1/deployments/nope"), ("get", "/v1/deployments/nope/events"),
    ("post", "/v1/deployments/nope/cancel"), ("post", "/v1/deployments/nope/rollback"),
    ("post", "/v1/apps/nope/rollback"),
])
def test_unknown_deployment_is_404(api: TestClient, method: str, path: str) -> None:
    response = getattr(api, method)(path)
    assert response.status_code == 404
    assert response.json()["kind"] == "NotFound"


def test_huge_body_is_413_and_leaves_no_bundle(api: TestClient, service: Service) -> None:
    response = api.post("/v1/deployments", content=b"\0" * (65 * 1024),
                        headers={"content-type": "application/x-tar"})
    assert response.status_code == 413 and response.json()["kind"] == "PayloadTooLarge"
    bundles = service.config.bundles_dir  # refused before the route ran: no bundle was begun
    assert not bundles.exists() or list(bundles.iterdir()) == []


def test_streamed_body_over_the_limit_is_413(api: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no content-length: the limit is enforced while reading
        for _ in range(20):
            yield b"\0" * 8192

    response = api.post("/v1/deployments", content=chunks(),
                        headers={"content-type": "application/x-tar"})
    assert response.status_code == 413


def test_tar_with_escaping_member_is_refused(api: TestClient, tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = b"name: x\n"
        info = tarfile.TarInfo("../evil.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    response = api.post("/v1/deployments", content=out.getvalue(),
                        headers={"content-type": "application/x-tar"})
    assert response.status_code == 400 and "not a plain relative file" in response.json()["error"]
    assert not (tmp_path / "state" / "bundles" / "evil.yaml").exists()


def test_garbage_and_wrong_content_type_are_400(api: TestClient) -> None:
    garbage = api.post("/v1/deployments", content=b"not a tar at all" * 40,
                       headers={"content-type": "application/x-tar"})
    assert garbage.status_code == 400 and "not a valid tar" in garbage.json()["error"]
    text = api.post("/v1/deployments", content=b"x", headers={"content-type": "text/plain"})
    assert text.status_code == 400


def test_second_active_deployment_of_an_app_is_409(api: TestClient, service: Service,
                                                 tmp_path: Path) -> None:
    service.runner.delay_s = 0.2  # type: ignore[attr-defined]
    body = bundle_bytes(write_spec(tmp_path / "spec"))
    first = api.post("/v1/deployments", content=body, headers={"content-type": "application/x-tar"})
    second = api.post("/v1/deployments", content=body,
                      headers={"content-type": "application/x-tar"})
    assert second.status_code == 409 and first.json()["id"] in second.json()["error"]
    cancel = api.post(f"/v1/deployments/{first.json()['id']}/cancel")
    assert cancel.status_code == 200
    record = wait_state(api, first.json()["id"], {"cancelled"})
    assert record["state"] == "cancelled"
    again = api.post(f"/v1/deployments/{first.json()['id']}/cancel")
    assert again.status_code == 409 and "nothing to cancel" in again.json()["error"]


def test_rollback_of_a_succeeded_deployment(api: TestClient, tmp_path: Path) -> None:
    body = bundle_bytes(write_spec(tmp_path / "spec"))
    deployment = api.post("/v1/deployments", content=body,
                          headers={"content-type": "application/x-tar"}).json()["id"]
    wait_state(api, deployment, {"succeeded"})
    assert api.post("/v1/apps/fraud/rollback").json()["id"] == deployment
    assert wait_state(api, deployment, {"rolled_back"})["state"] == "rolled_back"


def test_tcp_requires_the_token_and_an_allowed_host(service: Service) -> None:
    app = create_app(service, token=TOKEN)
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/healthz").status_code == 401
        wrong = client.get("/healthz", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["kind"] == "Unauthorized"
        ok = client.get("/healthz", headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["ok"] is True
        foreign = client.get("/healthz", headers={"authorization": f"Bearer {TOKEN}",
                                                  "host": "evil.example:8470"})
        assert foreign.status_code == 403 and "evil.example" in foreign.json()["error"]


def test_hosts_and_verify(api: TestClient) -> None:
    assert api.get("/v1/hosts").json() == []
    verified = api.post("/v1/hosts/verify", json={"hosts": ["tb-01"]}).json()
    assert [(h["host"], h["status"]) for h in verified] == [("tb-01", "healthy")]
    assert [h["host"] for h in api.get("/v1/hosts").json()] == ["tb-01"]
    assert api.post("/v1/hosts/verify", json={"hosts": [""]}).status_code == 422


def test_openapi_is_served_and_names_every_route(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/v1/deployments", "/v1/deployments/{deployment}/events", "/v1/hosts/verify",
            "/v1/deployments/{deployment}/cancel", "/healthz"} <= set(paths)
    assert "application/x-tar" in paths["/v1/deployments"]["post"]["requestBody"]["content"]


def test_fuzz_from_the_openapi_schema_never_gives_5xx(service: Service) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(service))
    failures: list[str] = []

    for operation in schema.get_all_operations():
        # An operation the schema cannot describe raises here, failing the test: what it wants.
        op = operation.ok()  # type: ignore[union-attr]

        @settings(max_examples=10, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case: Any) -> None:
            if case.path == "/v1/deployments/{deployment}/events":
                case.query = {**(case.query or {}), "follow": False}
            response = case.call()
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} "
                                f"{response.text[:200]}")

        check()
    assert failures == []


def test_control_characters_in_a_spec_are_400_not_500(api: TestClient) -> None:
    # Found by the fuzz run: PyYAML's reader raises before the strict loader's handler.
    response = api.post("/v1/deployments", json={"spec": "\u001f"})
    assert response.status_code == 400 and response.json()["kind"] == "SpecError"


def test_watchdog_reconciles_a_deployment_no_worker_owns(service: Service) -> None:
    service.store.create_deployment("orphan", "app", {"targets": ["h1"]})
    service.store.transition_deployment("orphan", DeploymentState.RUNNING)
    service.store.transition_step("orphan", "h1", "install", HostStepState.RUNNING)
    assert service.check_progress(time.time()) == []  # too recent to judge
    assert service.check_progress(time.time() + 60) == ["orphan"]
    record = service.store.get_deployment("orphan")
    assert record.state is DeploymentState.FAILED
    assert [s.state for s in service.store.steps("orphan")] == [HostStepState.FAILED]
    events = [(e["event"], e["status"]) for e in service.store.events("orphan")]
    assert events[0] == ("watchdog", "orphaned") and ("reconcile", "started") in events


def test_watchdog_stops_a_stalled_deployment(api: TestClient, service: Service,
                                             tmp_path: Path) -> None:
    service.runner.delay_s = 2.0  # type: ignore[attr-defined]
    body = bundle_bytes(write_spec(tmp_path / "spec"))
    deployment = api.post("/v1/deployments", content=body,
                          headers={"content-type": "application/x-tar"}).json()["id"]
    wait_state(api, deployment, {"running"})
    later = time.time() + service.config.progress_timeout_s + 1
    assert service.check_progress(later) == [deployment]
    record = wait_state(api, deployment, {"failed"})
    assert "watchdog" in record["result"]["reason"]
    assert service.check_progress(later) == []  # noted once


class _ResumingRunner(EchoRunner):
    """A runner that knows how to settle an interrupted deployment (as the pipeline will)."""

    def reconcile(self, deployment_id: str, bundle_dir: Path, spec: Any, sink: Any,
                  record: Any) -> Any:
        from orchestrator.daemon.runners.base import DeploymentOutcome

        assert (bundle_dir / "spec.yaml").is_file() and record.id == deployment_id
        sink.step("h1", "switch", HostStepState.FAILED, reason="interrupted")
        sink.step("h1", "switch", HostStepState.ROLLED_BACK, reason="current -> previous")
        return DeploymentOutcome(DeploymentState.ROLLED_BACK, "rolled back after a restart")


def test_a_runner_reconcile_decides_the_outcome(service: Service, tmp_path: Path) -> None:
    from orchestrator.daemon.bundle import unpack_bundle

    deployment, path = service.new_bundle()
    (path / "b.tar").write_bytes(bundle_bytes(write_spec(tmp_path / "spec")))
    unpack_bundle(path / "b.tar", path)
    service.store.create_deployment(deployment, "fraud", {"targets": ["h1"]})
    service.store.transition_deployment(deployment, DeploymentState.RUNNING)
    service.runner = _ResumingRunner(service.config)
    service.reconcile(service.store.get_deployment(deployment))
    record = service.store.get_deployment(deployment)
    assert record.state is DeploymentState.ROLLED_BACK
    assert record.result is not None and record.result["reason"] == "rolled back after a restart"
    events = [(e["event"], e["status"]) for e in service.store.events(deployment)]
    assert events == [("reconcile", "started"), ("step", "failed"), ("step", "rolled_back"),
                      ("reconcile", "finished"), ("deployment", "rolled_back")]


def test_pack_refuses_a_symlink_among_the_spec_files(tmp_path: Path) -> None:
    from orchestrator.errors import InvalidInput

    spec = write_spec(tmp_path / "spec")
    text = spec.read_text().replace("path: model.joblib", "path: model")
    (tmp_path / "spec" / "model").mkdir()
    (tmp_path / "spec" / "model" / "weights").write_bytes(b"w")
    (tmp_path / "spec" / "model" / "link").symlink_to("/etc/hostname")
    spec.write_text(text)
    with pytest.raises(InvalidInput, match="model/link: only plain files"):
        bundle_bytes(spec)


# -- /docs from the package, typed responses, the bearer scheme (issue 14) ---------------------

ASSET_REF = re.compile(r'(?:src|href)="([^"]+)"')


def test_docs_page_and_every_asset_it_references_come_from_the_daemon(api: TestClient) -> None:
    page = api.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    refs = ASSET_REF.findall(page.text)
    assert "/docs/assets/apidocs.js" in refs and "/docs/assets/apidocs.css" in refs
    script = api.get("/docs/assets/apidocs.js").text
    # What the script fetches at run time is a reference too.
    refs += re.findall(r'fetch\("([^"]+)"', script)
    assert "/openapi.json" in refs
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref  # this origin only
        got = api.get(ref)
        assert got.status_code == 200, ref
        assert got.content, ref
    for name in ("apidocs.js", "apidocs.css", "index.html"):
        text = api.get(f"/docs/assets/{name}").text
        assert not re.search(r"https?://|//cdn|unpkg|jsdelivr", text), name
    assert api.get("/docs/assets/../api.py").status_code == 404
    assert api.get("/docs/assets/secrets.txt").status_code == 404
    assert api.get("/redoc").status_code == 404  # FastAPI's CDN pages are off


def test_docs_over_tcp_without_the_token_but_not_the_schema_nor_a_foreign_host(
        service: Service) -> None:
    with TestClient(create_app(service, token=TOKEN), base_url="http://localhost") as anon:
        assert anon.get("/docs").status_code == 200
        assert anon.get("/docs/assets/apidocs.js").status_code == 200
        assert anon.get("/openapi.json").status_code == 401
        assert anon.get("/docs/assets/nope.js").status_code == 401  # not a page file
        assert anon.post("/docs").status_code == 401
        assert anon.get("/docs", headers={"host": "evil.example"}).status_code == 403


def test_openapi_types_every_response_and_describes_the_bearer_scheme(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert {"bearerAuth": []} in schema["security"] and {} in schema["security"]
    schemas = schema["components"]["schemas"]
    assert {"Deployment", "DeploymentDetail", "HostRecord", "ErrorBody",
            "ValidationErrorBody", "Health"} <= set(schemas)
    for path, item in schema["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            ok = op["responses"].get("200") or op["responses"].get("201")
            assert ok, where
            media = ok["content"]
            if "application/json" in media:
                assert media["application/json"]["schema"] not in ({}, {"type": "object"}), where
            for status in ("401", "403"):
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), where
    show = schema["paths"]["/v1/deployments/{deployment}"]["get"]["responses"]
    assert show["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    submit = schema["paths"]["/v1/deployments"]["post"]["responses"]
    assert submit["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ValidationErrorBody")
    states = schemas["DeploymentState"]["enum"]
    assert set(states) == {str(s) for s in DeploymentState}


def test_error_bodies_match_their_documented_models(api: TestClient) -> None:
    from orchestrator.daemon.apimodels import ErrorBody, HostStatus, ValidationErrorBody
    from orchestrator.daemon.schema import HOST_STATUSES

    assert set(HostStatus.__args__) == set(HOST_STATUSES)  # type: ignore[attr-defined]
    missing = api.get("/v1/deployments/nope")
    assert missing.status_code == 404
    assert ErrorBody.model_validate(missing.json()).kind == "NotFound"
    invalid = api.get("/v1/deployments", params={"limit": 0})
    assert invalid.status_code == 422
    assert ValidationErrorBody.model_validate(invalid.json()).detail
    bad = api.post("/v1/deployments", json={"spec": "apiVersion: nope\n"})
    assert bad.status_code == 400
    assert ErrorBody.model_validate(bad.json()).kind == "SpecError"
