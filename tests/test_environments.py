"""The environment seam: one registry of environment kinds, the venv as the one kind today, and
the steps, `plan` and re-verification reaching a kind's specifics only through the interface.

Pure tests (data fixtures, the source tree, a fake kind that touches no host): the venv kind's
behaviour on real hosts is tested by tests/test_deploy.py and tests/test_reverify.py.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from orchestrator.core import release as rel
from orchestrator.core.compat import load_compat
from orchestrator.core.envinputs import lock_path
from orchestrator.core.facts import HostFacts, parse_facts
from orchestrator.core.inventory import Host
from orchestrator.core.lockfile import load_lock
from orchestrator.core.preflight import preflight
from orchestrator.core.spec import Spec, load_spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.environments import registry
from orchestrator.deploy.environments.base import BuiltEnvironment, EnvironmentKind
from orchestrator.deploy.environments.venv import VenvKind, platform_of
from orchestrator.deploy.inputs import DeployInputs
from orchestrator.deploy.steps import install, verify
from orchestrator.deploy.steps.context import HostContext, Target
from orchestrator.deploy.steps.wheels import wheel_resolver
from orchestrator.deploy.wheelcache import Wheel
from orchestrator.errors import InvalidInput
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.transport import Transport
from tests.specs import LOCKS, stub_spec

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"
ENVIRONMENTS = PACKAGE / "deploy" / "environments"
FACTS = Path(__file__).parent / "fixtures" / "facts"
HOST = Host("gpu-01", "127.0.0.2", 22, "deploy", "/srv/models")
RELEASE = "/srv/models/fraud-detector/releases/20261122T013000Z-9f2c1a7b"
#: Modules outside deploy/environments/ and hosts/ that may name venv specifics, and why:
#: the benchmarks time the `venv-ensure` host op itself (uv vs pip) or give the shell-loop floor
#: the same uv, and the demo prints a shell
#: line a user runs in a deployed venv. Neither is on the deploy or re-verification path.
VENV_TOOLS = {"bench/_anchorsetup.py", "bench/deploy.py", "bench/install.py", "demo.py"}


def _facts(profile: str = "h100") -> HostFacts:
    return parse_facts(f"gpu-{profile}", (FACTS / f"{profile}.json").read_text())


@pytest.fixture
def spec(tmp_path: Path) -> Spec:
    return load_spec(stub_spec(tmp_path, ["gpu-01"], lock=LOCKS / "tensorflow-cpu-2.21.lock",
                               gpu=False))


# -- the registry --------------------------------------------------------------------------------

def test_the_registry_knows_image_and_venv_and_picks_the_venv_for_a_lock(spec: Spec) -> None:
    assert list(registry.ENVIRONMENTS) == ["image", "venv"]
    assert isinstance(registry.KINDS[-1], VenvKind)  # the default: more specific kinds first
    kind = registry.environment_for(spec)
    assert kind is registry.ENVIRONMENTS["venv"]
    assert kind.name == "venv"


def test_a_spec_no_kind_selects_is_invalid_input(spec: Spec,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "KINDS", (FakeKind(takes=False),))
    with pytest.raises(InvalidInput, match=r"fraud-detector: environment: no environment kind "
                                           r"takes it \(known: fake\)"):
        registry.environment_for(spec)


def test_the_first_kind_that_selects_the_spec_wins(spec: Spec,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake, venv = FakeKind(takes=True), VenvKind()
    monkeypatch.setattr(registry, "KINDS", (fake, venv))
    assert registry.environment_for(spec) is fake
    monkeypatch.setattr(registry, "KINDS", (FakeKind(takes=False), venv))
    assert registry.environment_for(spec) is venv


# -- the venv kind: today's behaviour, now in one module -----------------------------------------

def test_the_venv_key_is_todays_env_hash(spec: Spec) -> None:
    facts, lock = _facts(), load_lock(lock_path(spec))
    key = VenvKind().key(spec, facts, lock.sha256)
    assert platform_of(facts) == "linux-x86_64-glibc 2.36"
    assert key == rel.env_hash(facts.python_version, platform_of(facts), lock.sha256)
    # Pinned: a different key would rebuild every venv on every host after an upgrade.
    assert key == "de54f931e12f190ab383f148"


def test_the_venv_describes_its_content_addressed_path(spec: Spec) -> None:
    facts, lock = _facts(), load_lock(lock_path(spec))
    target = Target(HOST, lock, preflight(spec, lock, facts, load_compat()))
    words = install.describe(spec, facts, target)
    assert words.startswith("build or reuse the venv /srv/models/.orchestrator/venvs/"
                            "de54f931e12f190ab383f148 (python 3.11, ")
    assert words.endswith(" locked packages, --require-hashes, offline)")
    assert verify.describe(spec, facts, target).startswith("load the model in the new venv, ")


def test_the_venv_runs_python_through_the_release_link() -> None:
    kind = VenvKind()
    assert kind.interpreter(RELEASE) == f"{RELEASE}/venv/bin/python"
    assert kind.audited({"venv": {"ok": True, "path": "/srv/models/.orchestrator/venvs/ab"}})
    assert not kind.audited({"venv": {"error": "the release has no venv"}})
    assert not kind.audited({})


# -- the steps reach a kind only through the interface ------------------------------------------

class FakeKind:
    """A second kind that touches no host: what the steps must be able to drive unchanged."""

    name = "fake"
    ships_wheels = False
    needs_engines = False

    def __init__(self, takes: bool = True) -> None:
        self.takes = takes

    def selects(self, spec: Spec) -> bool:
        return self.takes

    def key(self, spec: Spec, facts: HostFacts, lock_sha256: str) -> str:
        return lock_sha256[:24]

    def prepare(self, ctx: HostContext, wheels: Mapping[str, Wheel]) -> None:
        return None

    def ensure(self, ctx: HostContext, deadline: Deadline) -> BuiltEnvironment:
        key = self.key(ctx.spec, ctx.known_facts(), ctx.lock.sha256)
        return BuiltEnvironment(
            kind=self.name, key=key, path=f"/images/{key}", interpreter="/usr/bin/fake-python",
            details={"image": key, "reused": True},
            manifest={"env_hash": key, "python_version": "3.11.9", "platform": "oci-amd64",
                      "installer": None, "pip_freeze": ["numpy==2.0.0"]})

    def describe(self, spec: Spec, facts: HostFacts, target: Target) -> str:
        return "load the image"

    def interpreter(self, release_path: str) -> str:
        return f"{release_path}/image-python"

    def audited(self, audit: Mapping[str, Any]) -> bool:
        return "image" in audit


def test_a_fake_kind_satisfies_the_protocol() -> None:
    kinds: tuple[EnvironmentKind, ...] = (FakeKind(), VenvKind())  # mypy checks both
    assert [k.name for k in kinds] == ["fake", "venv"]


def _context(spec: Spec) -> HostContext:
    lock = load_lock(lock_path(spec))
    inputs = DeployInputs("d-1", spec, lock, "20261122T013000Z-9f2c1a7b",
                          wheels_for=lambda facts, remaining: {}, compat=load_compat())
    nowhere = cast(Transport, object())  # the fake kind never reaches the host
    ctx = HostContext(nowhere, HOST, inputs, HostOps(nowhere, HOST.deploy_root), None)
    ctx.facts = _facts()
    return ctx


def test_install_verify_and_the_manifest_take_what_the_kind_reports(
        spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "KINDS", (FakeKind(), VenvKind()))
    ctx = _context(spec)
    details = install.run(ctx, Deadline(HOST.name, "install", 60))
    key = ctx.lock.sha256[:24]
    assert details == {"image": key, "reused": True}
    assert ctx.known_environment().interpreter == "/usr/bin/fake-python"
    manifest = verify._manifest(ctx).to_json()
    assert (manifest["env_hash"], manifest["platform"], manifest["pip_freeze"]) == (
        key, "oci-amd64", ["numpy==2.0.0"])
    facts, lock = _facts(), load_lock(lock_path(spec))
    target = Target(HOST, lock, preflight(spec, lock, facts, load_compat()))
    assert install.describe(spec, facts, target) == "load the image"
    assert verify.describe(spec, facts, target).startswith("load the model in the new fake, ")


def test_a_kind_that_ships_no_wheels_gets_none_resolved(
        spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing resolved, downloaded (the cache dir is never made) or pushed by `stage`."""
    monkeypatch.setattr(registry, "KINDS", (FakeKind(), VenvKind()))
    cache = tmp_path / "no-cache"
    resolve = wheel_resolver(spec, load_lock(lock_path(spec)), cache)
    assert resolve(_facts(), lambda: 60.0) == {} and not cache.exists()


def test_verify_refuses_a_context_install_never_filled(spec: Spec) -> None:
    from orchestrator.deploy.steps import StepFailed

    with pytest.raises(StepFailed, match="the install step did not run"):
        _context(spec).known_environment()


def _outside_the_seam() -> list[tuple[str, ast.Module]]:
    """Every module but the kinds, the host side and the venv tools, parsed."""
    trees = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel_path = path.relative_to(PACKAGE).as_posix()
        if ENVIRONMENTS in path.parents or rel_path.startswith("hosts/") \
                or rel_path in VENV_TOOLS:
            continue
        trees.append((rel_path, ast.parse(path.read_text("utf-8"), str(path))))
    return trees


def test_no_module_outside_the_kinds_spells_the_venv_interpreter_or_builds_one() -> None:
    """Code, not prose: a docstring may say what the venv kind does."""
    offenders = []
    for rel_path, tree in _outside_the_seam():
        prose = {id(n.value) for n in ast.walk(tree)
                 if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    id(node) not in prose and \
                    ("venv/bin/python" in node.value or "venv-ensure" in node.value):
                offenders.append(f"{rel_path}:{node.lineno} spells "
                                 f"{node.value.strip()[:40]!r}")
            elif isinstance(node, ast.Attribute) and node.attr == "venv_ensure":
                offenders.append(f"{rel_path}:{node.lineno} calls venv_ensure")
    assert offenders == []


def test_only_the_registry_imports_a_kind() -> None:
    """The steps, `plan` and re-verification import the registry and the interface, never a
    kind's module: a new kind cannot need an edit there."""
    offenders = []
    for rel_path, tree in _outside_the_seam():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("orchestrator.deploy.environments.") and \
                    node.module.rsplit(".", 1)[1] not in {"registry", "base"}:
                offenders.append(f"{rel_path}:{node.lineno} imports {node.module}")
    assert offenders == []
