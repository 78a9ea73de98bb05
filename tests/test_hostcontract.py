"""The host contract, held in one place each: op names and arguments (orchestrator.hosts.ops and
remote/hostops.py's OPS), host paths (hosts/layout.py and remote/hostlayout.py), content hashes
and the name pattern (remote/contenthash.py). These tests read the source: a second spelling
creeping back is found here, not on a host."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orchestrator.core import hashing
from orchestrator.hosts import layout, ops
from orchestrator.hosts.modelfiles import SmallModel
from orchestrator.hosts.opresults import AppState, StagedRelease
from orchestrator.hosts.remote import contenthash

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrator"
REMOTE = PACKAGE / "hosts" / "remote"

#: Not yet converted: each entry is a file and what it still spells itself. Shrink these lists,
#: never grow them.
PENDING_RAW_OPS: set[str] = set()
PENDING_PATHS: set[str] = set()
PENDING_FILE_HASHES: set[str] = set()


def controller_sources() -> dict[str, str]:
    return {p.relative_to(PACKAGE).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(PACKAGE.rglob("*.py")) if REMOTE not in p.parents}


def load_remote(name: str) -> ModuleType:
    """A shipped module as the host imports it (its directory first on sys.path)."""
    if str(REMOTE) not in sys.path:
        sys.path.insert(0, str(REMOTE))
    spec = importlib.util.spec_from_file_location(f"contract_{name}", REMOTE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- op names and builders ----------------------------------------------------------------------

def test_the_controller_names_exactly_the_hosts_ops() -> None:
    host_ops = set(load_remote("hostops").OPS)
    assert {str(op) for op in ops.Op} == host_ops


def test_no_raw_op_tuple_outside_the_builders() -> None:
    names = "|".join(re.escape(str(op)) for op in ops.Op)
    raw = re.compile(rf"""(?<!get)\(\s*["']({names})["']\s*,\s*\{{|\.call\(\s*["']({names})["']""")
    found = {path for path, text in controller_sources().items()
             if path != "hosts/ops.py" and raw.search(text)}
    assert found <= PENDING_RAW_OPS, sorted(found - PENDING_RAW_OPS)


def test_builders_spell_the_wire_format_the_host_takes() -> None:
    call = ops.stage_begin("a", "r1", deployment="d1", lock_sha256="f" * 64)
    assert call.wire() == {"op": "stage-begin", "args": {
        "app": "a", "release_id": "r1", "deployment": "d1", "force": False,
        "lock_sha256": "f" * 64}}
    assert ops.rollback("a", from_release="r1", mark_bad=True).args == {
        "app": "a", "to": "previous", "mark_bad": True, "from": "r1"}
    assert ops.rollback("a", from_release="r1", forget=True).args["forget"] is True
    assert ops.unmark_bad("a", "r1").wire() == {"op": "unmark-bad",
                                                "args": {"app": "a", "release_id": "r1"}}
    assert ops.write_file("a", "r1", "model/m", b"\x00\xff").args["data"] == "AP8="
    with pytest.raises(ValueError):  # a name no builder has is refused here, not on the host
        ops.Op("no-such-op")


def test_builders_parse_replies_into_dataclasses() -> None:
    staged = ops.stage_begin("a", "r1").parse(
        {"ok": True, "path": "/r/a/releases/r1.staging", "state": "staging", "resumed": False,
         "free_bytes": 10})
    assert isinstance(staged, StagedRelease) and staged.model_path.endswith("r1.staging/model")
    state = ops.state("a").parse({"current": None, "current_resolves": False, "generation": 0,
                                  "previous_good": None, "bad": [], "history": [],
                                  "switching": None, "staging": [], "committed": []})
    assert isinstance(state, AppState) and state.generation == 0
    assert ops.wheels_missing(["x"]).parse({"missing": ["x"]}) == ("x",)
    assert ops.free_bytes().parse({"free_bytes": "12"}) == 12


def test_small_model_writes_through_the_builder() -> None:
    small = SmallModel("model", (("model/a", b"1"),))
    assert small.write_calls("app", "r1") == [ops.write_file("app", "r1", "model/a", b"1")]


def test_write_manifest_takes_a_manifest_or_its_json() -> None:
    data: dict[str, Any] = {"x": 1}
    assert ops.write_manifest("a", "r", data).args["manifest"] == data


# -- host layout ----------------------------------------------------------------------------------

HOST_PATH = re.compile(r"""f["'][^"'\n]*(\{[^}\n]*deploy_root[^}\n]*\}/|/current\b"""
                       r"""|/manifest\.json|\.deploy-lock|/bin/python|\.orchestrator/"""
                       r"""|/model\b|/golden\.npz|/releases/|/requirements\.lock)""")


def test_no_host_path_built_outside_the_layout_module() -> None:
    found = {path for path, text in controller_sources().items()
             if path != "hosts/layout.py" and HOST_PATH.search(text)}
    assert found <= PENDING_PATHS, sorted(found - PENDING_PATHS)


def test_both_sides_name_the_layout_alike() -> None:
    host = load_remote("hostlayout")
    for name in ("RELEASES", "CURRENT", "DEPLOY_LOCK", "DEPLOY_LOCK_OWNER", "MODEL",
                 "LOCK_FILE", "MANIFEST", "VENV", "ORCHESTRATOR"):
        assert getattr(layout, name) == getattr(host, name), name
    root, app = "/srv/models/", "fraud"
    assert layout.deploy_lock(root, app) == host.deploy_lock(host.app_dir("/srv/models", app))
    assert layout.current_link(root, app) == host.current_link(host.app_dir("/srv/models", app))
    assert layout.wheels_dir(root) == host.orch_path("/srv/models", "wheels")
    sha = "ab" * 32
    assert layout.bytecode_archive(root, sha) == host.bytecode_archive("/srv/models", sha)


def test_layout_paths() -> None:
    assert layout.release_dir("/srv/m/", "a", "r1") == "/srv/m/a/releases/r1"
    assert layout.current_manifest("/srv/m", "a") == "/srv/m/a/current/manifest.json"
    assert layout.release_python("/srv/m/a/releases/r1") == "/srv/m/a/releases/r1/venv/bin/python"
    assert layout.release_of("/srv/m/a/releases/r1") == ("/srv/m", "a", "r1")
    assert layout.uv_binary("/srv/m", "ab" * 32) == f"/srv/m/.orchestrator/bin/uv-{'ab' * 8}"
    assert layout.model_rel("m.joblib", is_dir=False) == "model/m.joblib"
    with pytest.raises(ValueError):
        layout.release_of("/srv/m/a/r1")


# -- one hash, one name pattern -------------------------------------------------------------------

FILE_HASH = re.compile(r"hashlib\.sha256\([^)\n]*read_bytes\(\)|iter\(lambda: \w+\.read\("
                       r"|join\(sorted\(lines\)\)")


def test_one_file_and_tree_hash_implementation() -> None:
    sources = controller_sources()
    sources.update({f"hosts/remote/{p.name}": p.read_text(encoding="utf-8")
                    for p in REMOTE.glob("*.py")})
    # contenthash is the one; audit.py's RECORD check hashes with each RECORD's own algorithm,
    # and daemon/watch.py's change detection digests a spec with the files it names.
    allowed = {"hosts/remote/contenthash.py", "hosts/remote/audit.py", "daemon/watch.py",
               *PENDING_FILE_HASHES}
    found = {path for path, text in sources.items()
             if FILE_HASH.search(re.sub(r'"""[\s\S]*?"""', "", text))}
    assert found <= allowed, sorted(found - allowed)


def test_one_name_pattern() -> None:
    literal = "[a-z0-9][a-z0-9-]{0,62}"
    sources = controller_sources()
    sources.update({f"hosts/remote/{p.name}": p.read_text(encoding="utf-8")
                    for p in REMOTE.glob("*.py")})
    spelled = {path for path, text in sources.items()
               if f'r"^{literal}$"' in text}
    assert spelled == {"hosts/remote/contenthash.py"}


def test_the_shared_hash_is_the_controllers_and_the_hosts(tmp_path: Path) -> None:
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "a").write_bytes(b"1")
    (tmp_path / "m" / "sub" / "b").write_bytes(b"2")
    host = load_remote("hostops_fs")
    assert hashing.tree_hash(tmp_path / "m") == contenthash.tree_hash(str(tmp_path / "m")) \
        == host.tree_hash(str(tmp_path / "m"))
    assert hashing.hash_file(tmp_path / "m" / "a") == hashlib.sha256(b"1").hexdigest()
    assert hashing.NAME_RE.match("fraud-detector") and not hashing.NAME_RE.match("-x")
