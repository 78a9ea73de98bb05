"""The step registry is the one list of steps: the playbook loader, the echo runner, `plan` and
the benchmarks take theirs from it; every step is a module with `run` and `describe`; nothing
dispatches a step through `getattr` on a built name; one "roll back and restart".

Pure tests (data fixtures, the source tree): the steps' behaviour on real hosts is tested in
tests/test_deploy.py and tests/test_rollout.py.
"""

from __future__ import annotations

import ast
import importlib
import typing
from pathlib import Path

import pytest

from orchestrator.core.compat import load_compat
from orchestrator.core.envinputs import lock_path
from orchestrator.core.facts import HostFacts, parse_facts
from orchestrator.core.inventory import Host
from orchestrator.core.lockfile import Lock, load_lock
from orchestrator.core.ociimage import ImageInfo
from orchestrator.core.preflight import preflight
from orchestrator.core.spec import Spec, load_spec
from orchestrator.daemon.runners.base import EchoRunner
from orchestrator.deploy import playbook
from orchestrator.deploy.inputs import DeployInputs
from orchestrator.deploy.plan import STOP, build_plan, rollout_steps
from orchestrator.deploy.playbook import load_playbook, parse_playbook
from orchestrator.deploy.steps import registry
from orchestrator.deploy.steps.context import HostContext
from orchestrator.errors import SpecError
from tests.specs import LOCKS, stub_spec

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"
FACTS = Path(__file__).parent / "fixtures" / "facts"


# -- one list of steps ---------------------------------------------------------------------------

def test_registry_order_is_the_order_every_other_list_takes() -> None:
    assert tuple(registry.STEPS) == registry.STEP_ORDER
    assert registry.STEP_ORDER == ("probe", "preflight", "stage", "install", "verify", "switch",
                                   "check", "prune")
    assert playbook.STEP_ORDER is registry.STEP_ORDER
    assert playbook.OPTIONAL_STEPS == registry.OPTIONAL_STEPS == {"check", "prune"}
    assert playbook.SWITCH == registry.SWITCH == "switch"
    assert EchoRunner.STEPS == registry.STEP_ORDER
    assert load_playbook().names == registry.STEP_ORDER


def test_switch_boundary_comes_from_the_registry() -> None:
    before = [n for n in registry.STEP_ORDER if registry.before_switch(n)]
    assert before == ["probe", "preflight", "stage", "install", "verify"]
    pb = load_playbook()
    assert [s.name for s in pb.steps if s.before_switch] == before


def test_each_step_is_its_own_module_named_as_registered() -> None:
    for name, step in registry.STEPS.items():
        module = importlib.import_module(f"orchestrator.deploy.steps.{name}")
        assert module.NAME == name == step.name
        assert step.run is module.run and step.describe is module.describe


def test_the_loader_refuses_a_step_the_registry_does_not_know() -> None:
    text = ("apiVersion: orchestrator/v1\nkind: Playbook\nsteps:\n"
            "  - {name: probe, timeout_s: 5, on_failure: abort-stage}\n"
            "  - {name: warmup, timeout_s: 5, on_failure: abort-stage}\n")
    with pytest.raises(SpecError, match="unknown step 'warmup' \\(known: " +
                       ", ".join(registry.STEP_ORDER) + "\\)"):
        parse_playbook(text)


def test_registry_lookup_names_the_known_steps() -> None:
    assert registry.step("verify") is registry.STEPS["verify"]
    with pytest.raises(KeyError, match="known: probe, preflight"):
        registry.step("warmup")


def test_no_other_module_spells_the_step_list() -> None:
    """A tuple literal holding several step names is a second step list."""
    names = set(registry.STEP_ORDER)
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "registry.py" or "remote" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Tuple | ast.List):
                strings = {e.value for e in node.elts
                           if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(strings & names) >= 4:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_no_getattr_dispatch_on_built_names() -> None:
    """`getattr(obj, f"_{name}")` hides the call from readers and tools: refused in deploy/."""
    offenders = []
    for path in (PACKAGE / "deploy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "getattr" and len(node.args) >= 2
                    and not isinstance(node.args[1], ast.Constant)):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


# -- typed inputs and context -------------------------------------------------------------

def test_inputs_and_context_are_typed_with_the_models() -> None:
    hints = typing.get_type_hints(DeployInputs)
    # the lock of a venv, or the metadata of an image archive (the image environment)
    assert hints["spec"] is Spec and hints["lock"] == Lock | ImageInfo
    spec_, lock_ = vars(HostContext)["spec"], vars(HostContext)["lock"]  # the properties
    assert typing.get_type_hints(spec_.fget)["return"] is Spec
    assert typing.get_type_hints(lock_.fget)["return"] == Lock | ImageInfo
    learned = {"tools", "facts", "app", "staged", "release_path", "environment", "warmup",
               "switched"}
    assert learned <= set(typing.get_type_hints(HostContext))


def test_one_roll_back_and_restart() -> None:
    """The host's rollback op is sent from one function; every recovery goes through it."""
    callers = []
    for path in PACKAGE.rglob("*.py"):
        if "hosts" in path.parts:  # the op's own builder and host side
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text, str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "rollback"
                    and isinstance(node.func.value, ast.Call)):  # HostOps(...).rollback(...)
                callers.append(str(path.relative_to(PACKAGE)))
    assert callers == ["deploy/steps/recovery.py"]
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
             if "roll_back_and_restart(" in p.read_text()}
    assert users == {"deploy/steps/recovery.py", "reverify/audit.py"}


# -- plan: each step of the playbook, described by its module ----------------------------------

def _facts(profile: str) -> HostFacts:
    return parse_facts(f"gpu-{profile}", (FACTS / f"{profile}.json").read_text())


@pytest.fixture
def cpu_spec(tmp_path: Path) -> Spec:
    return load_spec(stub_spec(tmp_path, ["gpu-01"], lock=LOCKS / "tensorflow-cpu-2.21.lock",
                               gpu=False))


HOST = Host("gpu-01", "127.0.0.2", 22, "deploy", "/srv/models")


def test_plan_describes_each_registered_step_in_order(cpu_spec: Spec) -> None:
    lock, facts = load_lock(lock_path(cpu_spec)), _facts("h100")
    verdict = preflight(cpu_spec, lock, facts, load_compat())
    steps = rollout_steps(cpu_spec, lock, HOST, facts, verdict)
    assert [s.split(":", 1)[0] for s in steps] == list(registry.STEP_ORDER)
    for line, step in zip(steps, registry.STEPS.values(), strict=True):
        assert line == f"{step.name}: {step.describe(cpu_spec, facts, _target(lock, verdict))}"


def _target(lock: Lock, verdict: typing.Any) -> typing.Any:
    from orchestrator.deploy.steps.context import Target

    return Target(HOST, lock, verdict)


def test_plan_follows_the_loaded_playbook(cpu_spec: Spec) -> None:
    text = ("apiVersion: orchestrator/v1\nkind: Playbook\nsteps:\n" + "".join(
        f"  - {{name: {n}, timeout_s: 5, on_failure: "
        f"{'abort-stage' if registry.before_switch(n) else 'rollback'}}}\n"
        for n in registry.STEP_ORDER if n not in registry.OPTIONAL_STEPS))
    pb = parse_playbook(text)
    lock, facts = load_lock(lock_path(cpu_spec)), _facts("h100")
    plan = build_plan(cpu_spec, lock, [HOST], {HOST.name: facts}, load_compat(), pb)
    assert [s.split(":", 1)[0] for s in plan.hosts[0].steps] == list(pb.names)
    assert not any(s.startswith(("check:", "prune:")) for s in plan.hosts[0].steps)


def test_plan_stops_after_a_failing_preflight(tmp_path: Path) -> None:
    spec = load_spec(stub_spec(tmp_path, ["gpu-01"]))  # tensorflow GPU on an old driver
    lock, facts = load_lock(lock_path(spec)), _facts("old-driver")
    plan = build_plan(spec, lock, [HOST], {HOST.name: facts}, load_compat())
    steps = plan.hosts[0].steps
    assert [s.split(":", 1)[0] for s in steps[:2]] == ["probe", "preflight"]
    assert steps[1].startswith("preflight: fail (") and steps[2:] == (STOP,)
