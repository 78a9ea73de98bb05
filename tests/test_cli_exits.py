"""The CLI's exit-code contract (orchestrator/errors.py, orchestrator/cli/exits.py): every command
run into every code its EXITS table lists, against the real testbed hosts and real daemons.

One table, `CASES`: (command, expected code, situation, how to run it). A coverage test checks
that each (command, code) of every EXITS table has a case here, or an entry in `ELSEWHERE`
naming the test that runs it (a real install, or a deployed release to tamper with, is too
slow to repeat here); exit 1 (a bug) is exercised where a command gives it a meaning of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from orchestrator.cli.exits import command_tables, docs_tables
from orchestrator.testbed import Testbed
from tests.daemons import ECHO, ORCHESTRATOR, PROBE, Daemon, start, wait_for
from tests.daemons import write_config as daemon_config
from tests.specs import VERIFY, joblib_spec, stub_spec

ROOT = Path(__file__).resolve().parents[1]
GONE = {"gone": {"address": "127.0.0.254", "port": 1, "user": "root", "deploy_root": "/tmp/gone"}}

#: (command, code) run by another test, and why not here.
ELSEWHERE = {
    ("deploy", 0): "tests/test_deploy.py::test_cli_deploy_prints_events_and_releases_lists_them "
                   "(a real install)",
    ("deploy", 3): "tests/test_deploy.py::"
                   "test_cli_deploy_stops_on_a_failing_canary_like_the_daemon",
    ("daemon", 0): "test_daemon_exits_0_on_sigterm below",
    ("store", 0): "tests/test_storecopy.py (a real PostgreSQL cluster)",
    ("image", 0): "tests/test_env_image.py (its fixture runs the same build_image from a lock: "
                  "slow)",
    ("verify", 3): "test_verify_exits_3_for_a_host_whose_probe_fails below (a host's tools "
                   "sabotaged, then restored)",
}


@dataclass
class World:
    """Everything the cases run against, built once for the module."""

    testbed: Testbed
    tmp: Path
    inventory: Path  # the testbed plus an unreachable host `gone`
    untrusted: Path  # the same hosts, with an empty known_hosts: every key is refused
    probe: Daemon  # ProbeRunner: submissions are probed and preflighted for real
    slow: Daemon  # EchoRunner, 4 s per step: deployments that stay running a while
    ok_id: str  # a deployment of `probe` that succeeded
    failed_id: str  # one that failed its preflight

    def host(self, profile: str) -> str:
        return self.testbed.hosts_with(profile)[0].name

    def spec(self, folder: str, targets: list[str], name: str = "fraud-detector") -> str:
        return str(stub_spec(self.tmp / "specs" / folder, targets, name=name))

    def succeeded(self, name: str) -> str:
        """A new deployment of the probe daemon that succeeded."""
        out = self.probe.cli("submit", self.spec(name, [self.host("h100")], name=name), "--wait",
                             "--json")
        assert out.returncode == 0, out.stderr
        return str(json.loads(self.probe.cli("status", "--app", name, "--json").stdout)[0]["id"])

    def running(self, name: str) -> str:
        """A deployment of the slow daemon that is running now."""
        record = json.loads(self.slow.cli("submit", self.spec(name, ["h1"], name=name),
                                          "--json").stdout)
        with self.slow.http() as http:
            wait_for(lambda: http.get(f"/v1/deployments/{record['id']}").json()["state"]
                     == "running", what=f"{record['id']} running")
        return str(record["id"])


def _inventory(testbed: Testbed, path: Path, known_hosts: Path) -> Path:
    data = yaml.safe_load(testbed.inventory_path.read_text())
    data["ssh"] = {"known_hosts": str(known_hosts), "identity_file": str(testbed.identity_path)}
    data["hosts"].update(GONE)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def world(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("exits")
    inventory = _inventory(testbed, tmp / "inventory.yaml", testbed.known_hosts_path)
    (tmp / "empty_known_hosts").write_text("")
    untrusted = _inventory(testbed, tmp / "untrusted.yaml", tmp / "empty_known_hosts")
    (tmp / "probe").mkdir()
    (tmp / "slow").mkdir()
    probe = start(daemon_config(tmp / "probe", PROBE + f'inventory = "{inventory}"\n'))
    slow = start(daemon_config(tmp / "slow", ECHO + "max_parallel_deployments = 8\n"),
                 env={"ORCHESTRATOR_ECHO_DELAY_S": "4"})
    try:
        partial = World(testbed, tmp, inventory, untrusted, probe, slow, "", "")
        ok = json.loads(probe.cli("submit", partial.spec("ok", [partial.host("h100")]),
                                  "--json").stdout)["id"]
        failed = json.loads(probe.cli("submit", partial.spec(
            "failed", [partial.host("no-driver")], name="other-app"), "--json").stdout)["id"]
        with probe.http() as http:
            for deployment in (ok, failed):
                def ended(url: str = f"/v1/deployments/{deployment}") -> bool:
                    return http.get(url).json()["state"] in ("succeeded", "failed")
                wait_for(ended, what=f"{deployment} to end")
        yield World(testbed, tmp, inventory, untrusted, probe, slow, ok, failed)
    finally:
        probe.stop()
        slow.stop()


Run = Callable[[World], list[str]]
NO_DAEMON = ["--socket", "/nonexistent/orchestrator.sock"]


def on(daemon: str, *argv: str | Callable[[World], str]) -> Callable[[World], list[str]]:
    """A client command against one of the world's daemons ("probe" or "slow")."""
    def build(w: World) -> list[str]:
        words = [a(w) if callable(a) else a for a in argv]
        return [*words, "--socket", str(getattr(w, daemon).socket)]
    return build


def local(*argv: str | Callable[[World], str]) -> Callable[[World], list[str]]:
    return lambda w: [a(w) if callable(a) else a for a in argv]


def _config(w: World, text: str) -> str:
    path = w.tmp / f"daemon-{abs(hash(text))}.toml"
    path.write_text(text)
    return str(path)


def _ansible(w: World, text: str) -> str:
    path = w.tmp / f"ansible-{abs(hash(text))}.ini"
    path.write_text(text)
    return str(path)


def _valid_joblib(w: World, method: str) -> str:
    from tests import models

    folder = w.tmp / f"joblib-{method}"
    if not folder.exists():
        model, golden = models.make_joblib(w.tmp / "jl", changed_weight=False)
        spec = joblib_spec(folder, "jl-app", model, golden, ["tb-01"])
        spec.write_text(spec.read_text().replace(VERIFY, VERIFY.replace(
            "method: predict_proba", f"method: {method}")))
    return str(folder / "spec.yaml")


def _garbage_testbed(w: World) -> str:
    (w.tmp / "garbage").mkdir(exist_ok=True)
    (w.tmp / "garbage" / "state.json").write_text("{not json")
    return str(w.tmp / "garbage")


CASES: list[tuple[str, int, str, Run]] = [
    ("schema", 0, "prints", local("schema")),
    ("hash", 0, "a file", local("hash", str(ROOT / "README.md"))),
    ("hash", 2, "a missing path", local("hash", "/nonexistent/model")),
    ("inventory", 0, "an Ansible INI inventory", lambda w: ["inventory", "import", _ansible(w, (
        "[gpu]\ngpu-01 ansible_host=10.0.0.11 ansible_user=deploy\n")), "--deploy-root", "/srv"]),
    ("inventory", 2, "a line that is not INI", lambda w: ["inventory", "import", _ansible(w, (
        "[gpu\n"))]),
    ("store", 2, "copy without a PostgreSQL store in the config", lambda w: [
        "store", "copy", "--config", _config(w, 'state_dir = "s"\n'), "--from", str(w.tmp)]),
    ("store", 4, "a PostgreSQL store that does not answer", lambda w: [
        "store", "migrate", "--config",
        _config(w, 'state_dir = "s"\nstore = "postgresql://127.0.0.1:1/none"\n')]),
    ("image", 2, "a base archive that is not a file",
     lambda w: ["image", "build", _valid_joblib(w, "predict_proba"), "--base", "/nonexistent.tar",
                "-o", str(w.tmp / "image.tar")]),
    ("validate", 0, "a valid spec", lambda w: ["validate", _valid_joblib(w, "predict_proba")]),
    ("validate", 2, "golden recorded with another method",
     lambda w: ["validate", _valid_joblib(w, "predict")]),
    ("golden", 0, "show", lambda w: ["golden", "show", str(Path(_valid_joblib(
        w, "predict_proba")).parent / "golden.npz")]),
    ("golden", 2, "show a missing file", local("golden", "show", "/nonexistent.npz")),
    ("completion", 0, "bash", local("completion", "bash")),
    ("completion", 2, "an unknown shell", local("completion", "tcsh")),
    ("testbed", 0, "profile unchanged", lambda w: [
        "testbed", "profile", "--dir", str(w.testbed.dir), "tb-01",
        Testbed.load(w.testbed.dir).hosts[0].profile]),
    ("testbed", 1, "a DIR with unreadable state", lambda w: [
        "testbed", "profile", "--dir", _garbage_testbed(w), "tb-01", "h100"]),
    ("testbed", 2, "an unknown host", lambda w: [
        "testbed", "profile", "--dir", str(w.testbed.dir), "tb-99", "h100"]),
    # Hosts over SSH, no daemon.
    ("probe", 0, "a host answers", lambda w: ["probe", "--inventory", str(w.inventory), "tb-01"]),
    ("probe", 2, "an unknown host", lambda w: ["probe", "--inventory", str(w.inventory), "tb-99"]),
    ("probe", 3, "a host key refused", lambda w: [
        "probe", "--inventory", str(w.untrusted), "tb-01"]),
    ("probe", 4, "a host unreachable, another fine", lambda w: [
        "probe", "--inventory", str(w.inventory), "gone", "tb-01"]),
    ("releases", 0, "hosts answer", lambda w: [
        "releases", "some-app", "--inventory", str(w.inventory), "--host", "tb-01"]),
    ("releases", 2, "a bad app name", lambda w: [
        "releases", "../x", "--inventory", str(w.inventory)]),
    ("releases", 3, "a host key refused", lambda w: [
        "releases", "some-app", "--inventory", str(w.untrusted), "--host", "tb-01"]),
    ("releases", 4, "a host unreachable", lambda w: [
        "releases", "some-app", "--inventory", str(w.inventory), "--host", "gone"]),
    ("trust", 0, "already trusted", lambda w: ["trust", "tb-01", "--inventory", str(w.inventory)]),
    ("trust", 2, "an unknown host", lambda w: ["trust", "tb-99", "--inventory", str(w.inventory)]),
    ("trust", 3, "a new key, not confirmed", lambda w: [
        "trust", "tb-01", "--inventory", str(w.untrusted)]),
    ("trust", 4, "unreachable", lambda w: ["trust", "gone", "--inventory", str(w.inventory)]),
    ("plan", 0, "the target passes", lambda w: [
        "plan", w.spec("plan-ok", [w.host("h100")]), "--inventory", str(w.inventory)]),
    ("plan", 2, "an unknown target", lambda w: [
        "plan", w.spec("plan-unknown", ["tb-99"]), "--inventory", str(w.inventory)]),
    ("plan", 3, "a target fails its preflight", lambda w: [
        "plan", w.spec("plan-fail", [w.host("no-driver"), "gone"]), "--inventory",
        str(w.inventory)]),
    ("plan", 4, "a target unreachable, none failing", lambda w: [
        "plan", w.spec("plan-gone", [w.host("h100"), "gone"]), "--inventory", str(w.inventory)]),
    ("deploy", 2, "an unknown target", lambda w: [
        "deploy", w.spec("deploy-unknown", ["tb-99"]), "--inventory", str(w.inventory)]),
    # The daemon and its clients.
    ("daemon", 1, "its state dir is in use", lambda w: ["daemon", "--config", str(w.probe.config)]),
    ("daemon", 2, "a bad config", lambda w: ["daemon", "--config", str(ROOT / "README.md")]),
    ("submit", 0, "submitted", on("probe", "submit", lambda w: w.spec("s0", [w.host("h100")],
                                                                        name="s0-app"))),
    ("submit", 2, "an unknown target", on("probe", "submit", lambda w: w.spec("s2", ["tb-99"]))),
    ("submit", 3, "--wait: it fails", on("probe", "submit", lambda w: w.spec(
        "s3", [w.host("no-driver")], name="s3-app"), "--wait")),
    ("submit", 4, "no daemon", lambda w: ["submit", w.spec("s4", ["tb-01"]), *NO_DAEMON]),
    ("wait", 0, "it succeeded", on("probe", "wait", lambda w: w.ok_id)),
    ("wait", 2, "an unknown deployment", on("probe", "wait", "dep-nope")),
    ("wait", 3, "it failed", on("probe", "wait", lambda w: w.failed_id)),
    ("wait", 4, "--timeout first", on("slow", "wait", lambda w: w.running("w4"),
                                       "--timeout", "0.5")),
    ("logs", 0, "--follow: it succeeded", on("probe", "logs", lambda w: w.ok_id, "--follow")),
    ("logs", 2, "an unknown deployment", on("probe", "logs", "dep-nope")),
    ("logs", 3, "--follow: it failed", on("probe", "logs", lambda w: w.failed_id, "-f")),
    ("logs", 4, "no daemon", local("logs", "dep-x", *NO_DAEMON)),
    ("status", 0, "a listing", on("probe", "status")),
    ("status", 2, "an unknown deployment", on("probe", "status", "dep-nope")),
    ("status", 4, "no daemon", local("status", *NO_DAEMON)),
    ("hosts", 0, "a listing", on("probe", "hosts")),
    ("hosts", 4, "no daemon", local("hosts", *NO_DAEMON)),
    ("verify", 0, "healthy", on("probe", "verify", lambda w: w.host("h100"))),
    ("verify", 2, "an unknown host", on("probe", "verify", "tb-99")),
    ("verify", 4, "degraded (NVML version mismatch)", on("probe", "verify",
                                                         lambda w: w.host("mismatch"))),
    ("verify", 4, "unreachable", on("probe", "verify", "gone", lambda w: w.host("h100"))),
    ("cancel", 0, "a running deployment", on("slow", "cancel", lambda w: w.running("c0"))),
    ("cancel", 2, "an ended deployment", on("probe", "cancel", lambda w: w.ok_id)),
    ("cancel", 4, "no daemon", local("cancel", "dep-x", *NO_DAEMON)),
    ("pause", 0, "a running deployment", on("slow", "pause", lambda w: w.running("p0"))),
    ("pause", 2, "an ended deployment", on("probe", "pause", lambda w: w.ok_id)),
    ("pause", 4, "no daemon", local("pause", "dep-x", *NO_DAEMON)),
    ("resume", 0, "a paused deployment", lambda w: _paused(w)),
    ("resume", 2, "an ended deployment", on("probe", "resume", lambda w: w.ok_id)),
    ("resume", 4, "no daemon", local("resume", "dep-x", *NO_DAEMON)),
    ("abort", 0, "a running deployment", on("slow", "abort", lambda w: w.running("a0"))),
    ("abort", 2, "an ended deployment", on("probe", "abort", lambda w: w.failed_id)),
    ("abort", 4, "no daemon", local("abort", "dep-x", *NO_DAEMON)),
    ("rollback", 0, "a succeeded deployment", on("probe", "rollback", lambda w: w.succeeded(
        "rb0"))),
    ("rollback", 2, "an unknown deployment", on("probe", "rollback", "dep-nope")),
    ("rollback", 4, "no daemon", local("rollback", "dep-x", *NO_DAEMON)),
]


def _paused(w: World) -> list[str]:
    deployment = w.running("r0")
    assert w.slow.cli("pause", deployment).returncode == 0
    return ["resume", deployment, "--socket", str(w.slow.socket)]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A real process, as a script runs it."""
    return subprocess.run([ORCHESTRATOR, *argv], capture_output=True, text=True, timeout=180,
                          check=False, env={**os.environ, "NO_COLOR": "1"},
                          stdin=subprocess.DEVNULL)


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The CLI in this process (this machine is shared: a process start costs seconds);
    argparse's own exit 2 counts as the code it is."""
    from orchestrator.cli.app import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("command", "code", "situation", "build"), CASES,
                         ids=[f"{c}-{n}-{s.replace(' ', '_')}" for c, n, s, _ in CASES])
def test_exit_code(world: World, command: str, code: int, situation: str, build: Run,
                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = build(world)
    if command == "daemon":  # a daemon belongs in its own process
        result = _run(argv)
        got, out, err = result.returncode, result.stdout, result.stderr
    else:
        got, out, err = _main(argv, capsys)
    assert got == code, (f"{argv}: exit {got}, want {code} ({situation})\n"
                         f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    if code != 0:  # says why, as one of ours: never a traceback
        assert (out + err).strip(), f"{argv}: exit {code}, silent"
        assert "Traceback" not in err, err


def test_every_listed_code_is_run() -> None:
    run = {(c, n) for c, n, _, _ in CASES} | set(ELSEWHERE)
    listed = {(c, n) for c, codes in command_tables().items() for n in codes
              if n != 1 or c in ("daemon", "testbed")}
    assert listed - run == set(), "codes no test runs"
    assert run - listed == set(), "cases whose code the command's EXITS does not list"


def test_daemon_exits_0_on_sigterm(tmp_path: Path) -> None:
    daemon = start(daemon_config(tmp_path))
    assert daemon.stop(signal.SIGTERM) == 0


def test_verify_exits_3_for_a_host_whose_probe_fails(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The probe's marker file turned into /dev/zero (tests/test_ssh_hostile.py does the same):
    the host answers, wrongly; the probe daemon records it failed."""
    from orchestrator.core.inventory import load_inventory
    from orchestrator.hosts import ssh
    from orchestrator.hosts.shipping import MARKER, ensure_tools

    inventory = load_inventory(world.testbed.inventory_path)
    host = inventory.hosts["tb-03"]
    with ssh.connect(host, ssh.SshOptions.for_inventory(inventory)) as transport:
        tools = ensure_tools(transport, host.deploy_root)
        marker = tools.script(MARKER)
        transport.run(["ln", "-sf", "/dev/zero", marker])
        try:
            code, out, _ = _main(["verify", "tb-03", "tb-01", "--json", "--socket",
                                  str(world.probe.socket)], capsys)
        finally:
            transport.put(f"{tools.digest}\n".encode(), marker)
    statuses = {h["host"]: h["status"] for h in json.loads(out)}
    assert code == 3 and statuses == {"tb-03": "failed", "tb-01": "healthy"}


def test_validate_names_both_methods(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(["validate", _valid_joblib(world, "predict")], capsys)
    assert code == 2 and "verify.method" in err
    assert "is 'predict' but" in err and "was recorded with method 'predict_proba'" in err


def test_verify_status_codes() -> None:
    from orchestrator.cli.commands.verify import STATUS_CODES
    from orchestrator.errors import worst

    assert worst(STATUS_CODES[s] for s in ("healthy", "degraded", "failed")) == 3
    assert worst(STATUS_CODES[s] for s in ("healthy", "unreachable", "degraded")) == 4
    assert worst(STATUS_CODES[s] for s in ("healthy", "healthy")) == 0


def test_help_ends_with_the_commands_table() -> None:
    for command, codes in command_tables().items():
        argv = [command, "record"] if command == "golden" else \
            [command, "up"] if command == "testbed" else [command]
        out = _run([*argv[:1], "--help"]).stdout
        assert "exit status:" in out, command
        for code, what in codes.items():
            assert f"  {code}  {what.split()[0]}" in out, (command, code)


def test_docs_list_every_commands_table() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    begin = text.index("<!-- exit-codes:begin")
    block = text[text.index("\n", begin) + 1:text.index("<!-- exit-codes:end -->")]
    assert block.strip() == docs_tables().strip(), (
        "docs/operations.md's exit-code tables differ from the commands' EXITS; put this "
        "between the markers:\n" + docs_tables())


def test_wait_json_shape(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(["wait", world.failed_id, "--json", "--socket", str(world.probe.socket)],
                         capsys)
    body = json.loads(out)
    assert code == 3
    assert body == {"id": world.failed_id, "app": "other-app", "state": "failed",
                    "reason": body["reason"], "exit_code": 3}
    assert world.host("no-driver") in body["reason"]


def test_plan_json_carries_the_exit_code(world: World,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`worst`: one host failed and one unreachable is 3; `plan --json` says the same code."""
    both, gone = [world.host("no-driver"), "gone"], [world.host("h100"), "gone"]
    for targets, want in ((both, 3), (gone, 4)):
        spec = world.spec(f"plan-json-{want}", targets)
        code, out, _ = _main(["plan", spec, "--inventory", str(world.inventory), "--json"], capsys)
        assert code == want and json.loads(out)["exit_code"] == want
