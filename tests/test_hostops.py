"""Releases on a host: the host script run as a host runs it (/usr/bin/python3, real uv and pip,
real files, real flock and symlinks), `HostOps` over a local process transport, and `HostOps`
over the testbed's real sshd."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orchestrator.core.hashing import tree_hash
from orchestrator.core.release import (
    Manifest,
    check_release_id,
    env_hash,
    new_release_id,
    release_time,
)
from orchestrator.errors import BadHostOutput, CommandFailed, FileTransferFailed, InvalidInput
from orchestrator.hosts import ops as build
from orchestrator.hosts.hostops import HostOpFailed, HostOps, OpKind, parse_reply
from orchestrator.hosts.modelfiles import small_model
from orchestrator.hosts.opresults import switch_result
from orchestrator.hosts.shipping import RemoteTools
from orchestrator.hosts.transport import CommandResult, command_line

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "orchestrator" / "hosts" / "remote" / "hostops.py"
SMALL = REPO / "tests" / "fixtures" / "locks" / "small"
HOST_PYTHON = "/usr/bin/python3"  # what the testbed's hosts run as python3
SIX = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
DATEUTIL = "a8b2bc7bffae282281c8140a97d3aa9c14da0b136dfe83f850eea9a5f7470427"
WHEELS = {
    DATEUTIL: "python_dateutil-2.9.0.post0-py2.py3-none-any.whl",
    SIX: "six-1.16.0-py2.py3-none-any.whl",
}
ENV = "0123456789abcdef01234567"


# ---------------------------------------------------------------- helpers


def uv_binary() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert found, "uv is a dependency of the project"
    return found


def op(name: str, root: Path, *, interpreter: str = HOST_PYTHON,
       **args: Any) -> tuple[int, dict[str, Any]]:
    """Run one op like a host does; checks the one-JSON-object contract on every call."""
    proc = subprocess.run([interpreter, str(SCRIPT), name, "--json-args",
                           json.dumps({"root": str(root), **args})],
                          capture_output=True, text=True, timeout=300, check=False)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"{name}: stdout must be one JSON line: {proc.stdout!r} {proc.stderr}"
    reply = json.loads(lines[0])
    assert reply["ok"] is (proc.returncode == 0), reply
    return proc.returncode, reply


def ok(name: str, root: Path, **args: Any) -> dict[str, Any]:
    code, reply = op(name, root, **args)
    assert code == 0, reply
    return reply


def fails(name: str, root: Path, kind: str, **args: Any) -> dict[str, Any]:
    code, reply = op(name, root, **args)
    assert code != 0 and reply["kind"] == kind, reply
    return reply


def rid(n: int) -> str:
    """Release ids in creation order."""
    return f"20261122T0100{n:02d}Z-0000{n:04x}"


def stage(root: Path, app: str, release_id: str, *, lock: Path = SMALL / "requirements.lock",
          commit: bool = True) -> Path:
    """A release staged the way the pipeline does it (model verified on the host)."""
    path = Path(ok("stage-begin", root, app=app, release_id=release_id)["path"])
    (path / "model" / "w.bin").write_bytes(release_id.encode())
    shutil.copy(lock, path / "requirements.lock")
    ok("stage-verify-model", root, app=app, release_id=release_id,
       sha256=tree_hash(path / "model"))
    if commit:
        path = Path(ok("stage-commit", root, app=app, release_id=release_id)["path"])
    return path


def fill_host_wheels(root: Path) -> None:
    """The small lock's wheels into the host cache, the way uploads arrive."""
    ok("wheels-missing", root, shas=sorted(WHEELS))
    for sha, name in WHEELS.items():
        shutil.copy(SMALL / "wheelhouse" / name, root / ".orchestrator/wheels" / f"{sha}.whl.part")
    ok("wheels-verify", root, shas=sorted(WHEELS))


def ensure(root: Path, installer: str, lock: Path = SMALL / "requirements.lock",
           env: str = ENV, **extra: Any) -> tuple[int, dict[str, Any]]:
    args: dict[str, Any] = {"env_hash": env, "lock": str(lock), "wheels": WHEELS,
                            "installer": installer, "uv": uv_binary(), "python": HOST_PYTHON}
    return op("venv-ensure", root, **{**args, **extra})


def load_script() -> ModuleType:
    """The host script as a module, for the loops that would be slow one process per call."""
    spec = importlib.util.spec_from_file_location("remote_hostops", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def remote_module(name: str) -> ModuleType:
    """One of the hostops_* modules shipped beside the script, as the script itself imports it
    (loading the script puts its directory on sys.path)."""
    load_script()
    return importlib.import_module(name)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "deploy"
    path.mkdir()
    return path


@pytest.fixture
def wheels_root(root: Path) -> Path:
    fill_host_wheels(root)
    return root


class LocalTransport:
    """The `Transport` protocol over local processes and files: SSH minus the network."""

    def __init__(self, host: str = "local") -> None:
        self.host = host

    @property
    def alive(self) -> bool:
        return True

    def run(self, argv: Sequence[str], *, timeout: float | None = None,
            stdin: bytes | None = None, check: bool = True,
            max_output: int | None = None,
            on_stderr: Callable[[bytes], None] | None = None) -> CommandResult:
        command = command_line(argv)
        start = time.monotonic()
        proc = subprocess.run(["sh", "-c", command], input=stdin or b"", capture_output=True,
                              timeout=timeout, check=False)
        result = CommandResult(command, proc.returncode, proc.stdout.decode(),
                               proc.stderr.decode(), time.monotonic() - start)
        if check and proc.returncode != 0:
            raise CommandFailed(self.host, command, proc.returncode, result.stdout, result.stderr)
        return result

    def put(self, data_or_local_path: bytes | Path, remote_path: str, mode: int = 0o644,
            progress: Callable[[int, int], None] | None = None) -> None:
        tmp = f"{remote_path}.part-{os.getpid()}"
        Path(remote_path).parent.mkdir(parents=True, exist_ok=True)  # as the SFTP put does
        if isinstance(data_or_local_path, bytes):
            Path(tmp).write_bytes(data_or_local_path)
        else:
            shutil.copyfile(data_or_local_path, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, remote_path)

    def get(
        self, remote_path: str, *, max_bytes: int | None = None, timeout: float | None = None
    ) -> bytes:
        try:
            return Path(remote_path).read_bytes()
        except OSError as exc:
            raise FileTransferFailed(self.host, f"get {remote_path}: {exc}") from exc

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- the script's contract


def test_bad_arguments_are_one_json_object_and_exit_2(root: Path) -> None:
    for argv in (["no-such-op"], ["state", "--json-args", "{not json"],
                 ["state", "--json-args", "[1]"]):
        proc = subprocess.run([HOST_PYTHON, str(SCRIPT), *argv], capture_output=True, text=True,
                              check=False)
        reply = json.loads(proc.stdout)
        assert (proc.returncode, reply["ok"], reply["kind"]) == (2, False, "bad-args"), argv
    fails("state", root, "bad-args", app="../etc")
    assert fails("switch", root, "bad-args", app="a", release_id="latest",
                 generation=1)["error"] == "invalid release_id: 'latest'"
    code, reply = op("state", Path("relative"), app="a")
    assert code == 2 and "absolute" in reply["error"]


def test_arguments_on_stdin(root: Path) -> None:
    proc = subprocess.run([HOST_PYTHON, str(SCRIPT), "state", "--json-args", "-"],
                          input=json.dumps({"root": str(root), "app": "a"}), text=True,
                          capture_output=True, check=True)
    assert json.loads(proc.stdout)["current"] is None


def oldest_python() -> str | None:
    """A Python 3.9 to run the host script under, when this machine has one (pyenv)."""
    found = sorted(Path("/root/.pyenv/versions").glob("3.9.*/bin/python3"))
    return str(found[-1]) if found else shutil.which("python3.9")


@pytest.mark.skipif(oldest_python() is None, reason="no Python 3.9 on this machine")
def test_script_runs_on_python39(root: Path) -> None:
    py39 = oldest_python()
    assert py39 is not None
    path = Path(ok_with(py39, "stage-begin", root, app="a", release_id=rid(1))["path"])
    (path / "model" / "w.bin").write_bytes(b"w")
    ok_with(py39, "stage-verify-model", root, app="a", release_id=rid(1),
            sha256=tree_hash(path / "model"))
    ok_with(py39, "stage-commit", root, app="a", release_id=rid(1))
    fill_host_wheels(root)
    built = ok_with(py39, "venv-ensure", root, env_hash=ENV, lock=str(SMALL / "requirements.lock"),
                    wheels=WHEELS, installer="uv", uv=uv_binary(), python=py39)
    assert built["freeze"] == ["python-dateutil==2.9.0.post0", "six==1.16.0"]
    assert ok_with(py39, "switch", root, app="a", release_id=rid(1), generation=1)["changed"]
    assert ok_with(py39, "releases", root, app="a")["releases"][0]["state"] == "current"
    assert ok_with(py39, "prune", root, app="a", keep=1)["kept"] == [rid(1)]


def ok_with(interpreter: str, name: str, root: Path, **args: Any) -> dict[str, Any]:
    code, reply = op(name, root, interpreter=interpreter, **args)
    assert code == 0, reply
    return reply


def test_script_is_python39_syntax_and_stdlib_only() -> None:
    """hostops.py and its hostops_* modules: 3.9 syntax, and nothing but the stdlib and each
    other (they are shipped flat, side by side, in the tools bundle)."""
    import ast

    files = [SCRIPT, *sorted(SCRIPT.parent.glob("hostops_*.py")),
             *(SCRIPT.parent / f"{name}.py" for name in ("contenthash", "hostlayout", "health"))]
    assert len(files) > 1
    siblings = {path.stem for path in SCRIPT.parent.glob("*.py")}  # the bundle is flat
    for path in files:
        tree = ast.parse(path.read_text(), feature_version=(3, 9))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.module}
        allowed = set(sys.stdlib_module_names) | {"__future__"} | siblings
        assert imported <= allowed, (path.name, imported - allowed)


def test_hostops_modules_import_only_each_others_public_names() -> None:
    """A name one hostops module takes from another is that module's interface: public (no
    leading underscore), and defined there, so a rename in one module cannot silently break
    another's import on a host."""
    import ast

    files = {path.stem: ast.parse(path.read_text())
             for path in [SCRIPT, *SCRIPT.parent.glob("hostops_*.py"),
                          SCRIPT.parent / "contenthash.py", SCRIPT.parent / "hostlayout.py"]}
    defined = {stem: {n.name for n in tree.body
                      if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
               | {t.id for n in tree.body if isinstance(n, ast.Assign)
                  for t in n.targets if isinstance(t, ast.Name)}
               for stem, tree in files.items()}
    imported = [(stem, node.module, alias.name) for stem, tree in files.items()
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module in files
                for alias in node.names]
    assert len(imported) > 40  # the modules do share names: the check has something to check
    assert [i for i in imported if i[2].startswith("_")] == []
    assert [i for i in imported if i[2] not in defined[i[1]]] == []


# ---------------------------------------------------------------- stage


def test_stage_verify_commit_resume_and_one_staging_per_app(root: Path) -> None:
    first = ok("stage-begin", root, app="a", release_id=rid(1), deployment="d1")
    assert first["state"] == "staging" and not first["resumed"] and first["free_bytes"] > 0
    model = Path(first["model_path"])
    (model / "sub").mkdir()
    (model / "sub" / "v.bin").write_bytes(b"\0" * 1000)
    (model / "saved_model.pb").write_bytes(b"graph")
    assert ok("stage-begin", root, app="a", release_id=rid(1))["resumed"] is True
    busy = fails("stage-begin", root, "busy", app="a", release_id=rid(2))
    assert rid(1) in busy["error"] and busy["staging"] == [rid(1)]
    fails("stage-commit", root, "not-verified", app="a", release_id=rid(1))
    wrong = fails("stage-verify-model", root, "hash-mismatch", app="a", release_id=rid(1),
                  sha256="f" * 64)
    assert wrong["expected"] == "f" * 64 and wrong["actual"] == tree_hash(model)
    assert ok("stage-verify-model", root, app="a", release_id=rid(1),
              sha256=tree_hash(model))["hash_kind"] == "tree"
    committed = ok("stage-commit", root, app="a", release_id=rid(1))
    assert committed == {"ok": True, "path": str(root / "a/releases" / rid(1)), "already": False}
    assert ok("stage-commit", root, app="a", release_id=rid(1))["already"] is True
    assert ok("stage-begin", root, app="a", release_id=rid(2))["state"] == "staging"


def test_single_file_model_is_verified_by_its_sha256(root: Path) -> None:
    path = Path(ok("stage-begin", root, app="a", release_id=rid(1))["path"])
    (path / "model" / "model.joblib").write_bytes(b"pickle")
    digest = hashlib.sha256(b"pickle").hexdigest()
    assert ok("stage-verify-model", root, app="a", release_id=rid(1), sha256=digest,
              path="model/model.joblib")["hash_kind"] == "file"
    fails("stage-verify-model", root, "bad-args", app="a", release_id=rid(1), sha256=digest,
          path="../../../etc/passwd")


def test_host_tree_hash_equals_the_controllers(tmp_path: Path) -> None:
    host = remote_module("hostops_fs")
    tree = tmp_path / "m"
    (tree / "variables" / "deep").mkdir(parents=True)
    (tree / "saved_model.pb").write_bytes(os.urandom(3000))
    (tree / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(70000))
    (tree / "variables" / "deep" / "naïve name.txt").write_text("ü")
    (tree / "empty-dir").mkdir()
    (tree / "Z").write_bytes(b"")  # upper case sorts before lower in code-point order
    assert host.tree_hash(str(tree)) == tree_hash(tree)
    (tree / "link").symlink_to(tree / "Z")
    with pytest.raises(host.OpError, match="symlink"):
        host.tree_hash(str(tree))
    with pytest.raises(Exception, match="symlink"):
        tree_hash(tree)


def test_abort_stage_removes_staging_never_current_nor_rollback_target(root: Path) -> None:
    for n in (1, 2):
        stage(root, "a", rid(n))
        ok("switch", root, app="a", release_id=rid(n), generation=n)
    staging = stage(root, "a", rid(3), commit=False)
    assert fails("abort-stage", root, "is-current", app="a", release_id=rid(2))
    assert fails("abort-stage", root, "is-rollback-target", app="a", release_id=rid(1))
    assert ok("abort-stage", root, app="a", release_id=rid(3))["removed"] == [str(staging)]
    assert ok("abort-stage", root, app="a", release_id=rid(3))["removed"] == []
    assert sorted(os.listdir(root / "a/releases")) == [rid(1), rid(2)]


# ---------------------------------------------------------------- wheels


def test_wheels_verify_renames_good_deletes_bad_reports_missing(root: Path) -> None:
    assert ok("wheels-missing", root, shas=[SIX, DATEUTIL])["missing"] == [SIX, DATEUTIL]
    wheels = root / ".orchestrator/wheels"
    shutil.copy(SMALL / "wheelhouse" / WHEELS[SIX], wheels / f"{SIX}.whl.part")
    (wheels / f"{DATEUTIL}.whl.part").write_bytes(b"truncated")
    bad = fails("wheels-verify", root, "wheel-hash-mismatch", shas=[SIX, DATEUTIL, "e" * 64])
    assert bad["verified"] == [SIX] and bad["missing"] == ["e" * 64]
    truncated = hashlib.sha256(b"truncated").hexdigest()
    assert bad["bad"] == [{"expected": DATEUTIL, "actual": truncated}]
    assert sorted(os.listdir(wheels)) == [f"{SIX}.whl"]
    assert ok("wheels-missing", root, shas=[SIX, DATEUTIL])["missing"] == [DATEUTIL]


# ---------------------------------------------------------------- venvs


def venv_python(root: Path, env: str = ENV) -> Path:
    return root / ".orchestrator/venvs" / env / "bin/python"


@pytest.mark.parametrize("uv_runs", [True, False], ids=["uv", "pip-fallback"])
def test_venv_built_offline_from_the_lock_then_reused(wheels_root: Path, tmp_path: Path,
                                                      uv_runs: bool) -> None:
    root = wheels_root
    release = stage(root, "a", rid(1))
    broken = tmp_path / "uv"  # an executable the host cannot run: pip takes over
    broken.write_bytes(b"\x7fELF garbage")
    broken.chmod(0o755)
    code, built = ensure(root, "uv", lock=release / "requirements.lock", app="a",
                         release_id=rid(1), **({} if uv_runs else {"uv": str(broken)}))
    assert code == 0, built
    assert (built["installer"], built["reused"]) == ("uv" if uv_runs else "pip", False)
    if uv_runs:
        assert built["fallback_reason"] is None
    else:
        assert "uv cannot run" in built["fallback_reason"]
    assert built["freeze"] == ["python-dateutil==2.9.0.post0", "six==1.16.0"]
    assert set(built["durations"]) == {"venv", "install", "check"}
    assert os.readlink(release / "venv") == built["path"]
    probe = subprocess.run([str(venv_python(root)), "-c",
                            "import dateutil, six; print(dateutil.__version__, six.__version__)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["2.9.0.post0", "1.16.0"]
    marker = json.loads((root / ".orchestrator/venvs" / ENV / ".orchestrator-complete.json")
                        .read_text())
    assert marker["lock_sha256"] == hashlib.sha256((release / "requirements.lock")
                                                   .read_bytes()).hexdigest()
    start = time.monotonic()
    code, again = ensure(root, "uv", lock=release / "requirements.lock")
    assert code == 0 and again["reused"] is True and again["durations"] == {}
    assert again["freeze"] == built["freeze"] and time.monotonic() - start < 1.0


def test_a_new_venv_for_a_cached_lock_unpacks_nothing_again(wheels_root: Path) -> None:
    def cache_files() -> set[str]:
        cache = wheels_root / ".orchestrator/uv-cache"
        unpacked = [p for p in cache.rglob("*") if p.is_file()
                    and p.relative_to(cache).parts[0].startswith(("archive-", "wheels-"))]
        assert unpacked
        return {str(p.relative_to(cache)) for p in unpacked}

    assert ensure(wheels_root, "uv", env="a" * 24)[0] == 0
    before = cache_files()
    code, second = ensure(wheels_root, "uv", env="b" * 24)
    assert code == 0 and second["reused"] is False
    # uv keys unpacked local wheels by path: the find-links paths are content-addressed
    assert cache_files() == before
    links = wheels_root / ".orchestrator/links"
    assert sorted(p.name for p in links.glob("*/*.whl")) == sorted(WHEELS.values())


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_tampered_hash_names_package_and_both_hashes_leaves_no_venv(
        wheels_root: Path, installer: str) -> None:
    code, reply = ensure(wheels_root, installer, lock=SMALL / "tampered.lock")
    assert code == 1 and reply["kind"] == "install-failed"
    assert "six==1.16.0" in reply["error"] and "0" * 64 in reply["error"] and SIX in reply["error"]
    assert not (wheels_root / ".orchestrator/venvs" / ENV).exists()
    assert os.listdir(wheels_root / ".orchestrator/tmp") == []


def test_incomplete_venv_is_removed_and_rebuilt(wheels_root: Path) -> None:
    half = wheels_root / ".orchestrator/venvs" / ENV
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").symlink_to(HOST_PYTHON)  # looks usable, but has no marker
    (half / "leftover-from-crash").write_text("x")
    code, reply = ensure(wheels_root, "uv")
    assert code == 0 and reply["reused"] is False
    assert not (half / "leftover-from-crash").exists()
    assert (half / ".orchestrator-complete.json").is_file()


def test_a_build_killed_midway_is_never_reused_and_the_rerun_rebuilds(wheels_root: Path) -> None:
    """What a lost SSH session does (the transport kills the remote process group)."""
    args = json.dumps({"root": str(wheels_root), "env_hash": ENV, "installer": "pip",
                       "lock": str(SMALL / "requirements.lock"), "wheels": WHEELS,
                       "python": HOST_PYTHON})
    build = subprocess.Popen([HOST_PYTHON, str(SCRIPT), "venv-ensure", "--json-args", args],
                             stdout=subprocess.DEVNULL, start_new_session=True)
    venv = wheels_root / ".orchestrator/venvs" / ENV
    deadline = time.monotonic() + 60
    while not (venv / "bin").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()
    assert venv.is_dir() and not (venv / ".orchestrator-complete.json").exists()
    code, reply = ensure(wheels_root, "uv")
    assert code == 0 and reply["reused"] is False and reply["installer"] == "uv"
    assert (venv / ".orchestrator-complete.json").is_file()


def test_missing_wheel_fails_before_building_anything(root: Path) -> None:
    code, reply = ensure(root, "uv")
    assert code == 1 and reply["kind"] == "missing-wheel"
    assert reply["filename"] in WHEELS.values() and reply["sha256"] in WHEELS
    assert not (root / ".orchestrator/venvs" / ENV).exists()


def test_second_builder_waits_for_the_lock_or_reports_busy(wheels_root: Path) -> None:
    lock_path = wheels_root / ".orchestrator/venvs" / f"{ENV}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, reply = ensure(wheels_root, "uv", wait_s=0.3)
        assert code == 1 and reply["kind"] == "busy"
        # Released 1 s after the second builder has the lock file open (it then waits on it):
        # timed from its start, a slow interpreter start on a busy machine ate the wait.
        args = json.dumps({"root": str(wheels_root), "env_hash": ENV,
                           "lock": str(SMALL / "requirements.lock"), "wheels": WHEELS,
                           "installer": "uv", "uv": uv_binary(), "python": HOST_PYTHON,
                           "wait_s": 30})
        builder = subprocess.Popen([HOST_PYTHON, str(SCRIPT), "venv-ensure", "--json-args",
                                    args], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not _holds_open(builder.pid, lock_path):
            assert builder.poll() is None and time.monotonic() < deadline, "never waited"
            time.sleep(0.02)
        time.sleep(1.0)
        fcntl.flock(held, fcntl.LOCK_UN)
        reply = json.loads(builder.communicate(timeout=300)[0])
    assert reply["ok"] and reply["waited_s"] >= 0.9 and reply["reused"] is False, reply


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (Linux /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == str(path.resolve()) for fd in fds.iterdir())
    except OSError:
        return False


def test_concurrent_builders_of_one_env_build_it_once(wheels_root: Path) -> None:
    args = json.dumps({"root": str(wheels_root), "env_hash": ENV,
                       "lock": str(SMALL / "requirements.lock"), "wheels": WHEELS,
                       "installer": "uv", "uv": uv_binary(), "python": HOST_PYTHON})
    procs = [subprocess.Popen([HOST_PYTHON, str(SCRIPT), "venv-ensure", "--json-args", args],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    replies = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(r["ok"] for r in replies), replies
    assert sorted(r["reused"] for r in replies) == [False, True]
    # the second saw the first one's complete marker: it waited, it did not build alongside
    assert next(r for r in replies if r["reused"])["waited_s"] > 0


# ---------------------------------------------------------------- switch, rollback


READER = r"""
import os, sys, time
current, stop = sys.argv[1], sys.argv[2]
checks = misses = 0
while not os.path.exists(stop):
    checks += 1
    try:
        with open(os.path.join(current, "model", "w.bin"), "rb") as fh:
            fh.read()
    except OSError:
        misses += 1
print(checks, misses)
"""


def test_current_always_resolves_during_200_switches(root: Path, tmp_path: Path) -> None:
    for n in (1, 2):
        stage(root, "a", rid(n))
    host = remote_module("hostops_releases")
    host.op_switch({"root": str(root), "app": "a", "release_id": rid(1), "generation": 1})
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(root / "a/current"), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # the reader is in its loop
        for i in range(200):
            host.op_switch({"root": str(root), "app": "a", "release_id": rid(2 - i % 2),
                            "generation": 2 + i})
    finally:
        stop.touch()
        checks, misses = map(int, reader.communicate(timeout=30)[0].split())
    assert misses == 0 and checks > 200
    assert os.readlink(root / "a/current") == f"releases/{rid(1)}"
    assert not [n for n in os.listdir(root / "a") if n.startswith("current.tmp-")]


def test_stale_generation_is_refused_and_a_retried_switch_is_idempotent(root: Path) -> None:
    for n in (1, 2):
        stage(root, "a", rid(n))
    assert ok("switch", root, app="a", release_id=rid(2), generation=5)["changed"] is True
    stale = fails("switch", root, "stale-generation", app="a", release_id=rid(1), generation=4)
    assert stale["host_generation"] == 5 and "another deployment" in stale["error"]
    assert os.readlink(root / "a/current") == f"releases/{rid(2)}"
    again = ok("switch", root, app="a", release_id=rid(2), generation=5)
    assert again["changed"] is False and again["current"] == rid(2)
    # two deployments that both read generation 4 and claimed 5: the second one is refused
    fails("switch", root, "stale-generation", app="a", release_id=rid(1), generation=5)
    assert os.readlink(root / "a/current") == f"releases/{rid(2)}"
    fails("switch", root, "not-found", app="a", release_id=rid(3), generation=6)


def test_rollback_marks_bad_is_idempotent_and_bad_is_never_a_target(root: Path) -> None:
    for n in (1, 2, 3):
        stage(root, "a", rid(n))
    ok("switch", root, app="a", release_id=rid(1), generation=1)
    ok("switch", root, app="a", release_id=rid(2), generation=2)
    first = ok("rollback", root, app="a", generation=2, **{"from": rid(2)}, mark_bad=True)
    assert (first["current"], first["before"], first["changed"]) == (rid(1), rid(2), True)
    assert first["marked_bad"] == [rid(2)]
    again = ok("rollback", root, app="a", generation=2, **{"from": rid(2)}, mark_bad=True)
    assert again["changed"] is False and again["current"] == rid(1)
    fails("switch", root, "bad-release", app="a", release_id=rid(2), generation=3)
    fails("rollback", root, "no-rollback-target", app="a")  # rid(2) is bad: nothing before 1
    ok("switch", root, app="a", release_id=rid(3), generation=3)
    manual = ok("rollback", root, app="a")  # the CLI's one call: previous good, generation bumped
    assert (manual["current"], manual["generation"]) == (rid(1), 4)
    assert manual["gpus"] is None  # a manifest without placement
    fails("switch", root, "stale-generation", app="a", release_id=rid(3), generation=3)
    state = ok("state", root, app="a")
    assert (state["current"], state["previous_good"], state["bad"]) == (rid(1), rid(3), [rid(2)])
    assert state["switching"] is None and state["current_resolves"] is True


def test_rollback_returns_the_gpus_the_restored_release_was_placed_on(root: Path) -> None:
    gpus = ["GPU-00000000-0000-0000-0000-000000000001", "GPU-00000000-0000-0000-0000-000000000002"]
    for n in (1, 2):
        stage(root, "a", rid(n))
    ok("write-manifest", root, app="a", release_id=rid(1), manifest={"gpus": gpus})
    ok("switch", root, app="a", release_id=rid(1), generation=1)
    ok("switch", root, app="a", release_id=rid(2), generation=2)
    back = ok("rollback", root, app="a", generation=2, **{"from": rid(2)})
    assert back["current"] == rid(1) and back["gpus"] == gpus
    assert switch_result(back).gpus == tuple(gpus)
    with pytest.raises(ValueError, match="not a GPU UUID"):
        switch_result({**back, "gpus": ["GPU-1,GPU-2"]})


def test_a_refused_rollback_changes_nothing_and_abort_forgets_without_marking(
        root: Path) -> None:
    """Issue 14: the first release has nowhere to go back to; the refusal marks nothing and
    writes nothing (the next rollback still works); a chosen release is checked first too."""
    for n in (1, 2, 3):
        stage(root, "a", rid(n))
    ok("switch", root, app="a", release_id=rid(1), generation=1)
    before = (root / "a" / "state.json").read_bytes()
    refused = fails("rollback", root, "no-rollback-target", app="a", mark_bad=True)
    assert rid(1) in refused["error"], refused
    fails("rollback", root, "no-rollback-target", app="a", generation=1,
          mark_bad=True, **{"from": rid(1)})
    fails("rollback", root, "not-found", app="a", to=rid(9), mark_bad=True)
    fails("rollback", root, "bad-args", app="a", to=rid(1), mark_bad=True)
    assert (root / "a" / "state.json").read_bytes() == before
    assert ok("state", root, app="a")["bad"] == []
    ok("switch", root, app="a", release_id=rid(2), generation=2)
    back = ok("rollback", root, app="a", mark_bad=True)  # the next rollback works
    assert (back["current"], back["marked_bad"]) == (rid(1), [rid(2)])
    fails("rollback", root, "bad-release", app="a", to=rid(2))
    unmarked = ok("unmark-bad", root, app="a", release_id=rid(2))
    assert (unmarked["bad"], unmarked["changed"]) == ([], True)
    assert ok("unmark-bad", root, app="a", release_id=rid(2))["changed"] is False
    assert ok("rollback", root, app="a", to=rid(2))["current"] == rid(2)  # a chosen release
    # An abort's undo: back, not marked bad, and not a rollback target either.
    ok("switch", root, app="a", release_id=rid(3), generation=9)
    undone = ok("rollback", root, app="a", generation=9, forget=True, **{"from": rid(3)})
    assert (undone["current"], undone["marked_bad"]) == (rid(2), [])
    state = ok("state", root, app="a")
    assert rid(3) not in state["history"] and state["previous_good"] == rid(1)
    assert ok("switch", root, app="a", release_id=rid(3), generation=10)["changed"] is True
    # A host without the app is not given one by an unmark.
    assert ok("unmark-bad", root, app="b", release_id=rid(1))["changed"] is False
    assert not (root / "b").exists()


def test_releases_view_and_state_for_recovery(root: Path) -> None:
    for n in (1, 2, 3):
        stage(root, "a", rid(n))
    stage(root, "a", rid(4), commit=False)
    manifest = {"env_hash": ENV, "lock_sha256": "1" * 64, "deployment": "d-9", "facts": {"x": 1}}
    facts = json.loads((REPO / "tests" / "fixtures" / "probe" / "multi-gpu.json").read_text())
    ok("write-manifest", root, app="a", release_id=rid(2), manifest={
        "lock_sha256": "2" * 64, "gpus": ["GPU-a", "GPU-b"], "facts": facts, "warmup": None})
    ok("write-manifest", root, app="a", release_id=rid(3), manifest=manifest)
    for n in (1, 2, 3):
        ok("switch", root, app="a", release_id=rid(n), generation=n)
    ok("mark-bad", root, app="a", release_id=rid(2))
    rows = {r["release_id"]: r for r in ok("releases", root, app="a")["releases"]}
    assert {k: r["state"] for k, r in rows.items()} == {
        rid(1): "previous-good", rid(2): "bad", rid(3): "current", rid(4): "staging"}
    assert rows[rid(3)]["manifest"] == {"env_hash": ENV, "lock_sha256": "1" * 64,
                                        "deployment": "d-9"}  # no known fact: no summary
    # The facts at deploy in brief (the UI's manifest view), and the placed GPUs' UUIDs.
    assert rows[rid(2)]["manifest"] == {"lock_sha256": "2" * 64, "gpus": ["GPU-a", "GPU-b"],
                                        "facts": {
        "hostname": facts["hostname"], "os": facts["os"]["pretty_name"],
        "python": facts["python"]["version"], "driver": facts["nvml"]["driver_version"],
        "cuda": facts["nvml"]["cuda_driver_version"], "gpus": [g["name"] for g in facts["gpus"]]}}
    state = ok("state", root, app="a")
    assert state["staging"] == [rid(4)] and state["committed"] == [rid(1), rid(2), rid(3)]
    assert state["generation"] == 3


def test_switch_cut_short_shows_in_state_and_rerun_finishes(root: Path) -> None:
    for n in (1, 2):
        stage(root, "a", rid(n))
    ok("switch", root, app="a", release_id=rid(1), generation=1)
    # a crash between the intent and the rename: the state says so, `current` is the truth
    state_file = root / "a/state.json"
    state = json.loads(state_file.read_text())
    state.update(generation=2, generation_release=rid(2), switching={"from": rid(1), "to": rid(2)})
    state_file.write_text(json.dumps(state))
    seen = ok("state", root, app="a")
    assert seen["current"] == rid(1) and seen["switching"] == {"from": rid(1), "to": rid(2)}
    done = ok("switch", root, app="a", release_id=rid(2), generation=2)
    assert done["changed"] is True and ok("state", root, app="a")["switching"] is None


# ---------------------------------------------------------------- prune


def test_prune_keeps_newest_current_target_staging_in_use_and_collects_venvs_wheels(
        wheels_root: Path) -> None:
    root = wheels_root
    envs = {n: f"{n:024x}" for n in range(1, 7)}
    for n in range(1, 7):
        release = stage(root, "a", rid(n))
        (root / ".orchestrator/venvs" / envs[n]).mkdir(parents=True, exist_ok=True)
        (release / "venv").symlink_to(root / ".orchestrator/venvs" / envs[n])
    ok("switch", root, app="a", release_id=rid(1), generation=1)
    ok("switch", root, app="a", release_id=rid(3), generation=2)   # previous good: 1
    staging = stage(root, "a", rid(7), commit=False)                 # being installed
    orphan_env = root / ".orchestrator/venvs" / ("f" * 24)
    orphan_env.mkdir()
    unused_wheel = root / ".orchestrator/wheels" / f"{'e' * 64}.whl"
    unused_wheel.write_bytes(b"old")
    killed_build = root / ".orchestrator/tmp/build-killed"
    killed_build.mkdir(parents=True)
    os.utime(killed_build, (time.time() - 2 * 86400,) * 2)
    live_build = root / ".orchestrator/tmp/build-live"
    live_build.mkdir()
    user = subprocess.Popen(["sleep", "30"], cwd=root / "a/releases" / rid(2))  # in use
    try:
        pruned = ok("prune", root, app="a", keep=2, grace_s=0)
    finally:
        user.kill()
        user.wait()
    assert pruned["removed_releases"] == [rid(4)]
    assert pruned["kept"] == [rid(1), rid(2), rid(3), rid(5), rid(6)]
    assert staging.is_dir() and os.readlink(root / "a/current") == f"releases/{rid(3)}"
    assert sorted(pruned["removed_venvs"]) == sorted([envs[4], "f" * 24])
    assert pruned["removed_wheels"] == [unused_wheel.name]
    assert sorted(os.listdir(root / ".orchestrator/wheels")) == sorted(f"{s}.whl" for s in WHEELS)
    assert ok("state", root, app="a")["previous_good"] == rid(1)
    assert not killed_build.exists() and live_build.exists()
    # with the sleeper gone, release 2 goes too; a venv being built is never collected
    with open(root / ".orchestrator/venvs" / f"{envs[2]}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        again = ok("prune", root, app="a", keep=2, grace_s=0)
    assert again["removed_releases"] == [rid(2)] and again["removed_venvs"] == []
    assert (root / ".orchestrator/venvs" / envs[2]).is_dir()


def test_prune_spares_recent_wheels_within_the_grace(wheels_root: Path) -> None:
    fresh = wheels_root / ".orchestrator/wheels" / f"{'d' * 64}.whl"
    fresh.write_bytes(b"just uploaded, its lock not staged yet")
    for sha in WHEELS:
        old = time.time() - 3600
        os.utime(wheels_root / ".orchestrator/wheels" / f"{sha}.whl", (old, old))
    assert ok("prune", wheels_root, app="a", keep=1)["removed_wheels"] == [
        f"{s}.whl" for s in sorted(WHEELS)]  # no release references the fixture's wheels
    assert fresh.exists()


# ---------------------------------------------------------------- HostOps, the typed side


def test_parse_reply_maps_kinds_and_refuses_garbage() -> None:
    assert parse_reply("h", "state", 0, '{"ok": true, "current": null}\n', "") == {
        "ok": True, "current": None}
    with pytest.raises(HostOpFailed) as caught:
        parse_reply("h", "switch", 1, json.dumps({"ok": False, "kind": "stale-generation",
                                                  "error": "host generation 5 is newer than 4",
                                                  "host_generation": 5}), "")
    assert caught.value.kind is OpKind.STALE_GENERATION and caught.value.host == "h"
    assert caught.value.details == {"host_generation": 5}
    assert str(caught.value) == "h: switch: host generation 5 is newer than 4"
    with pytest.raises(HostOpFailed) as unknown:
        parse_reply("h", "x", 1, '{"ok": false, "kind": "from-the-future", "error": "?"}', "")
    assert unknown.value.kind is OpKind.UNKNOWN
    with pytest.raises(BadHostOutput, match="Traceback"):
        parse_reply("h", "state", 1, "", "Traceback (most recent call last):\n  boom")
    with pytest.raises(BadHostOutput):
        parse_reply("h", "state", 0, "not json", "")


MODEL_DIR_FILES = {"saved_model.pb": b"graph", "variables/variables.index": b"index"}


def make_model(directory: Path, version: int) -> Path:
    for rel, data in MODEL_DIR_FILES.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data + str(version).encode())
    return directory


def deploy_release(ops: HostOps, app: str, release_id: str, model: Path, generation: int,
                   lock: Path = SMALL / "requirements.lock", installer: str = "uv",
                   ) -> tuple[Any, tuple[str, ...]]:
    """What the pipeline's stage/install/switch steps do, in their order."""
    from orchestrator.deploy.wheelcache import filenames, from_wheelhouse, paths

    staged = ops.stage_begin(app, release_id, deployment=f"d-{generation}")
    model_path = ops.upload_model(model, staged)
    ops.transport.put(lock, staged.lock_path)
    assert ops.verify_model(app, release_id, tree_hash(model), path=model_path) == "tree"
    wheels = from_wheelhouse(lock, SMALL / "wheelhouse")
    pushed = ops.push_wheels(paths(wheels))
    uv = ops.push_uv(Path(uv_binary()))
    lock_sha = hashlib.sha256(lock.read_bytes()).hexdigest()
    env = env_hash("3.11", "manylinux_2_36_x86_64", lock_sha)
    venv = ops.venv_ensure(env, staged.lock_path, filenames(wheels), installer=installer, uv=uv,
                           app=app, release_id=release_id)
    ops.stage_commit(app, release_id)
    ops.write_manifest(app, release_id, Manifest(
        app=app, release_id=release_id, deployment=f"d-{generation}",
        created=release_time(release_id), spec_digest="0" * 64, model_sha256=tree_hash(model),
        lock_sha256=lock_sha, env_hash=env, python_version="3.11",
        platform="manylinux_2_36_x86_64", installer=venv.installer, pip_freeze=list(venv.freeze)))
    ops.switch(app, release_id, generation)
    return venv, pushed


def exercise_hostops(ops: HostOps, work: Path, app: str) -> None:
    """Two releases with one lock, a tampered third that fails, a rollback: the issue's story."""
    r1 = new_release_id(datetime(2026, 11, 22, 1, 0, tzinfo=UTC), "a" * 8)
    r2 = new_release_id(datetime(2026, 11, 22, 1, 5, tzinfo=UTC), "b" * 8)
    r3 = new_release_id(datetime(2026, 11, 22, 1, 9, tzinfo=UTC), "c" * 8)
    first, _pushed = deploy_release(ops, app, r1, make_model(work / "m1", 1), generation=1)
    assert first.freeze == ("python-dateutil==2.9.0.post0", "six==1.16.0")
    second, pushed_again = deploy_release(ops, app, r2, make_model(work / "m2", 2), generation=2)
    assert second.reused and second.path == first.path and pushed_again == ()
    state = ops.state(app)
    assert (state.current, state.previous_good, state.generation) == (r2, r1, 2)
    staged = ops.stage_begin(app, r3)
    ops.transport.put(SMALL / "tampered.lock", staged.lock_path)
    with pytest.raises(HostOpFailed) as failed:
        ops.venv_ensure(env_hash("3.11", "x", "9" * 64), staged.lock_path,
                        dict(WHEELS), uv=ops.push_uv(Path(uv_binary())))
    assert failed.value.kind is OpKind.INSTALL_FAILED and SIX in str(failed.value)
    assert ops.abort_stage(app, r3) == (staged.path,)
    with pytest.raises(HostOpFailed) as stale:
        ops.switch(app, r1, 1)
    assert stale.value.kind is OpKind.STALE_GENERATION
    back = ops.rollback(app, from_release=r2, generation=2, mark_bad=True)
    assert (back.current, back.before, back.marked_bad) == (r1, r2, (r2,))
    rows = {r.release_id: r for r in ops.releases(app)}
    assert {k: r.state for k, r in rows.items()} == {r1: "current", r2: "bad"}
    assert rows[r1].env_hash == first.env_hash and rows[r1].manifest["deployment"] == "d-1"


def test_hostops_over_a_local_transport(tmp_path: Path) -> None:
    root = tmp_path / "deploy"
    root.mkdir()
    exercise_hostops(HostOps(LocalTransport(), str(root), python=HOST_PYTHON), tmp_path, "app")


def test_hostops_over_ssh_on_the_testbed(testbed: Any, tmp_path: Path) -> None:
    from orchestrator.hosts.ssh import SshOptions, connect

    host = testbed.hosts_with("no-gpu")[0]
    options = SshOptions(known_hosts=testbed.known_hosts_path,
                         identity_file=testbed.identity_path)
    app = "hostops-ssh-test"
    with connect(host, options) as transport:
        try:
            exercise_hostops(HostOps(transport, str(host.deploy_root)), tmp_path, app)
        finally:
            transport.run(["rm", "-rf", str(host.deploy_root / app)], timeout=60)


# ---------------------------------------------------------------- release ids, env hash, manifest


def test_release_ids_are_utc_sortable_and_validated() -> None:
    paris = timezone(timedelta(hours=1))
    rid_ = new_release_id(datetime(2026, 11, 22, 2, 30, 0, tzinfo=paris), "9F2C1A7B" + "0" * 56)
    assert rid_ == "20261122T013000Z-9f2c1a7b"
    assert release_time(rid_) == datetime(2026, 11, 22, 1, 30, tzinfo=UTC)
    later = new_release_id(datetime(2026, 11, 22, 1, 30, 1, tzinfo=UTC), "00000000")
    assert sorted([later, rid_]) == [rid_, later]
    # the host accepts what the controller makes
    assert remote_module("hostops_fs").RELEASE_RE.match(rid_)
    with pytest.raises(ValueError, match="aware"):
        new_release_id(datetime(2026, 11, 22), "9f2c1a7b")
    with pytest.raises(ValueError):
        new_release_id(datetime(2026, 11, 22, tzinfo=UTC), "xyz")
    with pytest.raises(InvalidInput):
        check_release_id("20261122T013000Z-9F2C1A7B")


def test_env_hash_is_keyed_by_python_minor_platform_and_lock() -> None:
    lock = "ab" * 32
    base = env_hash("3.11.2", "manylinux_2_36_x86_64", lock)
    assert base == env_hash("3.11", "manylinux_2_36_x86_64", lock)  # patch level: same ABI
    assert len(base) == 24 and remote_module("hostops_fs").ENV_RE.match(base)
    others = {env_hash("3.12", "manylinux_2_36_x86_64", lock),
              env_hash("3.11", "manylinux_2_36_aarch64", lock),
              env_hash("3.11", "manylinux_2_36_x86_64", "cd" * 32)}
    assert base not in others and len(others) == 3
    with pytest.raises(ValueError):
        env_hash("3.11", "p", "not-a-sha")


def test_manifest_round_trips_and_a_bad_one_names_host_and_field() -> None:
    manifest = Manifest(app="a", release_id=rid(1), created=release_time(rid(1)),
                        spec_digest="1" * 64, model_sha256="2" * 64, lock_sha256="3" * 64,
                        env_hash=ENV, python_version="3.11", platform="manylinux_2_36_x86_64",
                        facts={"gpus": []}, pip_freeze=["six==1.16.0"],
                        warmup={"p50_ms": 1.5})
    data = json.loads(json.dumps(manifest.to_json()))
    assert data["schema"] == 1 and Manifest.from_host("h", data) == manifest
    with pytest.raises(BadHostOutput, match=r"^h: manifest.json: lock_sha256"):
        Manifest.from_host("h", {**data, "lock_sha256": "short"})
    with pytest.raises(BadHostOutput, match="surprise: Extra inputs"):
        Manifest.from_host("h", {**data, "surprise": 1})


def test_upload_model_file_and_tree_then_verify_on_the_host(tmp_path: Path) -> None:
    root = tmp_path / "deploy"
    root.mkdir()
    ops = HostOps(LocalTransport(), str(root), python=HOST_PYTHON)
    model_file = tmp_path / "model.joblib"
    model_file.write_bytes(b"pickled")
    staged = ops.stage_begin("a", rid(1))
    rel = ops.upload_model(model_file, staged)
    assert rel == "model/model.joblib"
    assert ops.verify_model("a", rid(1), hashlib.sha256(b"pickled").hexdigest(), path=rel) == "file"
    tree = make_model(tmp_path / "tree", 1)
    ops.abort_stage("a", rid(1))
    staged = ops.stage_begin("a", rid(2))
    assert ops.upload_model(tree, staged) == "model"
    assert sorted(str(p.relative_to(staged.model_path)) for p in
                  Path(staged.model_path).rglob("*") if p.is_file()) == sorted(MODEL_DIR_FILES)
    with pytest.raises(HostOpFailed) as wrong:
        ops.verify_model("a", rid(2), "0" * 64)
    assert wrong.value.kind is OpKind.HASH_MISMATCH
    assert wrong.value.details["actual"] == tree_hash(tree)


def test_prune_drops_uvs_cache_with_the_last_venv_unless_a_build_uses_it(
        wheels_root: Path) -> None:
    cache = wheels_root / ".orchestrator/uv-cache"
    assert ensure(wheels_root, "uv", env="a" * 24)[0] == 0
    assert ensure(wheels_root, "uv", env="b" * 24)[0] == 0
    assert cache.is_dir()
    with open(wheels_root / ".orchestrator/uv-cache.lock", "a") as building:
        fcntl.flock(building, fcntl.LOCK_SH)  # what a running venv build holds
        busy = ok("prune", wheels_root, app="a", keep=1)
    assert busy["removed_venvs"] == ["a" * 24, "b" * 24] and busy["uv_cache_cleared"] is False
    assert ensure(wheels_root, "uv", env="c" * 24)[0] == 0
    done = ok("prune", wheels_root, app="a", keep=1)
    assert done["removed_venvs"] == ["c" * 24] and done["uv_cache_cleared"] is True
    assert not cache.exists()
    assert not [n for n in os.listdir(wheels_root / ".orchestrator") if n.startswith(".trash")]


# ---------------------------------------------------------------- batch, probe, fewer uploads


def test_batch_runs_ops_in_order_in_one_process_and_stops_at_the_first_failure(
        root: Path) -> None:
    path = stage(root, "a", rid(1), commit=False)
    code, reply = op("batch", root, ops=[
        {"op": "stage-commit", "args": {"app": "a", "release_id": rid(1)}},
        {"op": "switch", "args": {"app": "a", "release_id": rid(1), "generation": 1}},
        {"op": "state", "args": {"app": "a"}}])
    assert code == 0 and [r["ok"] for r in reply["results"]] == [True, True, True]
    assert reply["results"][2]["current"] == rid(1) and not path.exists()
    # The second op fails: the third never runs, the first's effect stays.
    stage(root, "a", rid(2), commit=False)
    code, reply = op("batch", root, ops=[
        {"op": "stage-commit", "args": {"app": "a", "release_id": rid(2)}},
        {"op": "switch", "args": {"app": "a", "release_id": rid(2), "generation": 1}},
        {"op": "switch", "args": {"app": "a", "release_id": rid(2), "generation": 5}}])
    assert code == 1 and (reply["kind"], reply["failed_op"]) == ("stale-generation", "switch")
    assert [r["ok"] for r in reply["results"]] == [True, False]
    assert ok("state", root, app="a")["current"] == rid(1)
    assert (root / "a" / "releases" / rid(2)).is_dir()
    for bad in ([], [{"op": "batch", "args": {}}], [{"op": "nope"}], [{"op": "state", "args": 1}]):
        assert fails("batch", root, "bad-args", ops=bad)["error"]


def test_batch_failure_raises_what_the_op_alone_raises(root: Path) -> None:
    ops = HostOps(LocalTransport(), str(root), python=HOST_PYTHON)
    staged = ops.stage_begin("a", rid(1))
    (Path(staged.model_path) / "w.bin").write_bytes(b"w")
    with pytest.raises(HostOpFailed) as alone:
        ops.verify_model("a", rid(1), "0" * 64)
    with pytest.raises(HostOpFailed) as batched:
        ops.batch([build.state("a"), build.verify_model("a", rid(1), "0" * 64),
                   build.stage_commit("a", rid(1))])
    assert (batched.value.op, batched.value.kind) == ("stage-verify-model",
                                                      OpKind.HASH_MISMATCH)
    assert str(batched.value) == str(alone.value)
    assert ops.state("a").staging == (rid(1),)  # stage-commit never ran
    missing, state = build.wheels_missing([SIX]), build.state("a")
    replies = ops.batch([missing, state])
    assert missing.parse(replies[0]) == (SIX,) and state.parse(replies[1]).staging == (rid(1),)


def test_parse_batch_reply_from_data() -> None:
    from orchestrator.hosts.hostops import parse_batch_reply

    good = json.dumps({"ok": True, "results": [{"ok": True, "a": 1}, {"ok": True, "b": 2}]})
    assert parse_batch_reply("h", ["x", "y"], 0, good, "") == [{"ok": True, "a": 1},
                                                               {"ok": True, "b": 2}]
    failed = json.dumps({"ok": False, "kind": "busy", "error": "held", "failed_op": "y",
                         "results": [{"ok": True}, {"ok": False, "kind": "busy",
                                                    "error": "held", "staging": ["r"]}]})
    with pytest.raises(HostOpFailed) as exc:
        parse_batch_reply("h", ["x", "y", "z"], 1, failed, "")
    assert (exc.value.op, exc.value.kind, exc.value.details) == ("y", OpKind.BUSY,
                                                                 {"staging": ["r"]})
    refused = json.dumps({"ok": False, "kind": "bad-args", "error": "ops must be a list"})
    with pytest.raises(HostOpFailed, match="batch: ops must be"):
        parse_batch_reply("h", ["x"], 2, refused, "")
    short = json.dumps({"ok": True, "results": [{"ok": True}]})
    with pytest.raises(BadHostOutput):
        parse_batch_reply("h", ["x", "y"], 0, short, "")
    with pytest.raises(BadHostOutput):
        parse_batch_reply("h", ["x"], 1, "Traceback", "boom")


def test_probe_op_gives_probe_py_facts(root: Path) -> None:
    alone = json.loads(subprocess.run(
        [HOST_PYTHON, "-E", str(SCRIPT.parent / "probe.py"), "--deploy-root", str(root)],
        capture_output=True, text=True, check=True).stdout)
    # As the pipeline runs it: HostOps (python3 -E -S), probe and state in one batch.
    ops = HostOps(LocalTransport(), str(root), python=HOST_PYTHON)
    ops._tools = RemoteTools(str(SCRIPT.parent), "local")
    probe = build.probe()
    facts = probe.parse(ops.batch([probe, build.state("a")])[0])
    volatile = ("disk", "nvml")  # free bytes move; the local run has no shipped pynvml
    assert {k: v for k, v in facts.items() if k not in volatile} == {
        k: v for k, v in alone.items() if k not in volatile}
    assert facts["schema"] == alone["schema"] and facts["disk"]["path"] == str(root)


def test_stage_begin_copies_a_lock_with_the_same_hash_from_a_release(root: Path) -> None:
    lock = SMALL / "requirements.lock"
    sha = hashlib.sha256(lock.read_bytes()).hexdigest()
    first = ok("stage-begin", root, app="a", release_id=rid(1), lock_sha256=sha)
    assert first["lock_present"] is False  # nothing on the host has it: upload it
    stage(root, "a", rid(1))
    ok("switch", root, app="a", release_id=rid(1), generation=1)
    second = ok("stage-begin", root, app="a", release_id=rid(2), lock_sha256=sha)
    assert second["lock_present"] is True
    assert (Path(second["path"]) / "requirements.lock").read_bytes() == lock.read_bytes()
    # A different lock, or a release whose lock was changed on the host, is never copied.
    other = ok("stage-begin", root, app="a", release_id=rid(2), lock_sha256="1" * 64)
    assert other["lock_present"] is False
    ok("abort-stage", root, app="a", release_id=rid(2))
    (root / "a" / "releases" / rid(1) / "requirements.lock").write_text("six==0\n")
    assert ok("stage-begin", root, app="a", release_id=rid(3),
              lock_sha256=sha)["lock_present"] is False
    assert not (root / "a" / "releases" / f"{rid(3)}.staging" / "requirements.lock").exists()


def test_need_uv_refuses_a_build_without_uv_but_reuses_without_it(wheels_root: Path) -> None:
    missing = str(wheels_root / ".orchestrator" / "bin" / "uv-not-yet")
    code, reply = ensure(wheels_root, "uv", uv=missing, need_uv=True)
    assert (code, reply["kind"]) == (1, "uv-missing")
    assert not (wheels_root / ".orchestrator" / "venvs" / ENV).exists()
    assert ensure(wheels_root, "uv")[1]["reused"] is False  # with the real uv: built
    code, reply = ensure(wheels_root, "uv", uv=missing, need_uv=True)
    assert code == 0 and reply["reused"] is True


def test_write_file_puts_small_files_into_a_staged_release_only(root: Path) -> None:
    import base64

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    fails("write-file", root, "not-found", app="a", release_id=rid(1), path="model/w",
          data=b64(b"w"))
    path = Path(ok("stage-begin", root, app="a", release_id=rid(1))["path"])
    wrote = ok("write-file", root, app="a", release_id=rid(1), path="model/sub/w.bin",
               data=b64(b"\x00weights"))
    assert wrote["written"] and (path / "model/sub/w.bin").read_bytes() == b"\x00weights"
    assert oct((path / "model/sub/w.bin").stat().st_mode & 0o777) == "0o644"
    for bad in ({"path": "../x", "data": b64(b"x")}, {"path": "/etc/x", "data": b64(b"x")},
                {"path": "model/x", "data": "not base64!"}):
        fails("write-file", root, "bad-args", app="a", release_id=rid(1), **bad)
    ok("stage-verify-model", root, app="a", release_id=rid(1),
       sha256=tree_hash(path / "model"))
    final = Path(ok("stage-commit", root, app="a", release_id=rid(1))["path"])
    again = ok("write-file", root, app="a", release_id=rid(1), path="model/sub/w.bin",
               data=b64(b"changed"))
    assert not again["written"] and (final / "model/sub/w.bin").read_bytes() == b"\x00weights"


def test_a_small_model_is_staged_and_verified_in_one_batch(root: Path, tmp_path: Path) -> None:
    ops = HostOps(LocalTransport(), str(root), python=HOST_PYTHON)
    model = make_model(tmp_path / "m", 1)
    small = small_model(model)
    assert small is not None and small.verify_path == "model"
    replies = ops.batch([build.stage_begin("a", rid(1)), *small.write_calls("a", rid(1)),
                         build.verify_model("a", rid(1), tree_hash(model), path="model")])
    assert replies[-1]["hash_kind"] == "tree" and replies[0]["state"] == "staging"
    single = small_model(model / "saved_model.pb")
    assert single is not None and single.verify_path == "model/saved_model.pb"
    assert small_model(model, max_bytes=4) is None  # bigger: by SFTP, file by file
    assert small_model(model, max_files=1) is None


# ---------------------------------------------------------------- PEP 751 pylock.toml locks
#
# The host keeps any lock as releases/<id>/requirements.lock. uv reads PEP 751 only from a file
# named pylock*.toml (and then fetches the lock's own URLs, not the host's wheel cache); pip
# cannot read it at all. So for a pylock the host derives a hash-pinned requirements file from
# the wheels the controller chose, each checked against the lock, and installs from that.

PYLOCK = SMALL / "pylock.toml"           # uv pip compile --format pylock.toml of the small lock
PYLOCK_TAMPERED = SMALL / "pylock.tampered.toml"  # six's sha256 replaced by zeros


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_pylock_venv_built_offline_from_the_host_cache(wheels_root: Path, installer: str) -> None:
    release = stage(wheels_root, "a", rid(1), lock=PYLOCK)
    code, built = ensure(wheels_root, installer, lock=release / "requirements.lock", app="a",
                         release_id=rid(1))
    assert code == 0, built
    assert (built["installer"], built["fallback_reason"]) == (installer, None)
    assert built["freeze"] == ["python-dateutil==2.9.0.post0", "six==1.16.0"]
    probe = subprocess.run([str(venv_python(wheels_root)), "-c",
                            "import dateutil, six; print(dateutil.__version__, six.__version__)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["2.9.0.post0", "1.16.0"]
    # the release keeps the lock as staged; the derived file lived in the build's temp dir
    assert (release / "requirements.lock").read_bytes() == PYLOCK.read_bytes()
    assert os.listdir(wheels_root / ".orchestrator/tmp") == []
    marker = json.loads((wheels_root / ".orchestrator/venvs" / ENV /
                         ".orchestrator-complete.json").read_text())
    assert marker["lock_sha256"] == hashlib.sha256(PYLOCK.read_bytes()).hexdigest()
    assert marker["lock_format"] == "pylock"


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_pylock_tampered_hash_names_package_and_both_hashes_leaves_no_venv(
        wheels_root: Path, installer: str) -> None:
    code, reply = ensure(wheels_root, installer, lock=PYLOCK_TAMPERED)
    assert code == 1 and reply["kind"] == "install-failed", reply
    assert "six==1.16.0" in reply["error"] and "0" * 64 in reply["error"] and SIX in reply["error"]
    assert (reply["package"], reply["expected"], reply["actual"]) == ("six", ["0" * 64], SIX)
    assert not (wheels_root / ".orchestrator/venvs" / ENV).exists()
    assert os.listdir(wheels_root / ".orchestrator/tmp") == []


def test_pylock_refuses_a_wheel_the_lock_does_not_name(wheels_root: Path, tmp_path: Path) -> None:
    only_six = tmp_path / "pylock.toml"  # python-dateutil's package entry removed
    text = PYLOCK.read_text()
    start = text.index("[[packages]]\nname = \"python-dateutil\"")
    only_six.write_text(text[:start] + text[text.index("[[packages]]\nname = \"six\""):])
    code, reply = ensure(wheels_root, "uv", lock=only_six)
    assert code == 1 and reply["kind"] == "install-failed"
    assert "python-dateutil" in reply["error"] and "not in the lock" in reply["error"]
    assert not (wheels_root / ".orchestrator/venvs" / ENV).exists()


def test_pylock_derived_requirements_from_data() -> None:
    script = remote_module("hostops_pylock")
    text = PYLOCK.read_text()
    locked = script.pylock_packages(text)
    assert locked == {"python-dateutil": ("2.9.0.post0", [DATEUTIL]), "six": ("1.16.0", [SIX])}
    # two wheels of one package (other platforms) share one line: pip refuses a name twice
    wheels = {**WHEELS, "f" * 64: "six-1.16.0-cp311-cp311-manylinux_2_17_x86_64.whl"}
    locked["six"] = ("1.16.0", [SIX, "f" * 64])
    assert script.pinned_requirements(wheels, locked) == (
        f"python-dateutil==2.9.0.post0 --hash=sha256:{DATEUTIL}\n"
        f"six==1.16.0 --hash=sha256:{'f' * 64} --hash=sha256:{SIX}\n")
    assert script.is_pylock(text) and not script.is_pylock(
        (SMALL / "requirements.lock").read_text())


PYLOCK_TABLES = """lock-version = "1.0"
created-by = "hand"

[[packages]]
name = "Six"
version = "1.16.0"
[packages.sdist]
url = "https://example.invalid/six-1.16.0.tar.gz"
[packages.sdist.hashes]
sha256 = "{sdist}"
[[packages.wheels]]
name = "six-1.16.0-py2.py3-none-any.whl"
[packages.wheels.hashes]
sha256 = "{wheel}"
[[packages.dependencies]]
name = "other"
version = "9"

[tool.example]
sha256 = "{tool}"
"""


def test_pylock_readers_agree_with_and_without_tomllib() -> None:
    """tomllib on 3.11+, a line scan on older hosts: same packages, wheel hashes only."""
    script = remote_module("hostops_pylock")
    tables = PYLOCK_TABLES.format(sdist="1" * 64, wheel=SIX.upper(), tool="2" * 64)
    for text in (PYLOCK.read_text(), (REPO / "tests/fixtures/locks/pylock.sklearn.toml")
                 .read_text(), tables):
        assert script.pylock_packages_scanned(text) == script.pylock_packages(text)
    assert script.pylock_packages(tables) == {"six": ("1.16.0", [SIX])}
    sklearn = script.pylock_packages((REPO / "tests/fixtures/locks/pylock.sklearn.toml")
                                     .read_text())
    assert len(sklearn) == 7 and all(len(h) == 1 for _v, h in sklearn.values())
    for reader in (script.pylock_packages, script.pylock_packages_scanned):
        with pytest.raises(script.OpError):
            reader('lock-version = "1.0"\n')
        with pytest.raises(script.OpError):
            reader('lock-version = "1.0"\n[[packages]]\nversion = "1"\n')


def test_prune_keeps_the_wheels_a_pylock_release_uses(wheels_root: Path) -> None:
    stage(wheels_root, "a", rid(1), lock=PYLOCK)
    ok("switch", wheels_root, app="a", release_id=rid(1), generation=1)
    pruned = ok("prune", wheels_root, app="a", keep=1, grace_s=0)
    assert pruned["removed_wheels"] == []
    assert sorted(os.listdir(wheels_root / ".orchestrator/wheels")) == sorted(
        f"{s}.whl" for s in WHEELS)


@pytest.mark.skipif(oldest_python() is None, reason="no Python 3.9 on this machine")
def test_pylock_install_on_python39(wheels_root: Path) -> None:
    py39 = oldest_python()
    assert py39 is not None
    built = ok_with(py39, "venv-ensure", wheels_root, env_hash=ENV, lock=str(PYLOCK),
                    wheels=WHEELS, installer="pip", python=py39)
    assert built["freeze"] == ["python-dateutil==2.9.0.post0", "six==1.16.0"]


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_pylock_release_over_ssh_on_the_testbed(testbed: Any, tmp_path: Path,
                                                installer: str) -> None:
    """Stage, install, switch a pylock release on a real sshd host; a tampered pylock then fails
    naming the package, and the host keeps serving the first release."""
    from orchestrator.hosts.ssh import SshOptions, connect

    host = testbed.hosts_with("no-gpu")[0]
    options = SshOptions(known_hosts=testbed.known_hosts_path,
                         identity_file=testbed.identity_path)
    app = f"pylock-{installer}-test"
    r1 = new_release_id(datetime(2026, 11, 22, 2, 0, tzinfo=UTC), "a" * 8)
    r2 = new_release_id(datetime(2026, 11, 22, 2, 5, tzinfo=UTC), "b" * 8)
    # the lock's bytes name the env: one env per installer, so each really builds
    lock = tmp_path / "pylock.toml"
    lock.write_bytes(PYLOCK.read_bytes() + f"# {installer}\n".encode())
    with connect(host, options) as transport:
        ops = HostOps(transport, str(host.deploy_root))
        try:
            venv, _pushed = deploy_release(ops, app, r1, make_model(tmp_path / "m1", 1), 1,
                                           lock=lock, installer=installer)
            assert (venv.installer, venv.reused) == (installer, False)
            assert venv.freeze == ("python-dateutil==2.9.0.post0", "six==1.16.0")
            staged = ops.stage_begin(app, r2)
            ops.transport.put(PYLOCK_TAMPERED, staged.lock_path)
            with pytest.raises(HostOpFailed) as failed:
                ops.venv_ensure(env_hash("3.11", "x", "8" * 64), staged.lock_path,
                                dict(WHEELS), installer=installer,
                                uv=ops.push_uv(Path(uv_binary())))
            assert failed.value.kind is OpKind.INSTALL_FAILED
            assert "six==1.16.0" in str(failed.value) and SIX in str(failed.value)
            ops.abort_stage(app, r2)
            assert ops.state(app).current == r1
        finally:
            transport.run(["rm", "-rf", str(host.deploy_root / app)], timeout=60)
            ops.prune(app, 1, grace_s=3600)


def test_controller_wheel_cache_fills_from_a_pylock(tmp_path: Path) -> None:
    """Without a wheelhouse the daemon's cache fetches a pylock's wheels (here from a local
    find-links dir), each checked against the pylock's sha256: what a host then gets."""
    from orchestrator.deploy.wheelcache import WheelCache, filenames, platform_tags

    cache = WheelCache(tmp_path / "cache", find_links=[SMALL / "wheelhouse"], no_index=True)
    wheels = cache.fill(PYLOCK, "3.11", platform_tags("x86_64", "glibc 2.36"))
    assert filenames(wheels) == WHEELS


# ---------------------------------------------------------------- host actions beside releases


def test_free_bytes_op(root: Path) -> None:
    free = ok("free-bytes", root)["free_bytes"]
    assert isinstance(free, int) and free > 0
    assert ok("free-bytes", root, path=str(root))["free_bytes"] > 0
    fails("free-bytes", root, "bad-args", path="relative")


def test_deploy_lock_ops_admit_one_deployment_and_its_resume(root: Path) -> None:
    owner = {"deployment": "d1", "started": 1.5}
    first = ok("deploy-lock", root, app="a", owner=owner)
    assert first["resumed"] is False and first["lock"] == str(root / "a" / ".deploy-lock")
    assert json.loads((root / "a" / ".deploy-lock" / "owner.json").read_text()) == owner
    assert ok("deploy-lock", root, app="a", owner=owner)["resumed"] is True
    busy = fails("deploy-lock", root, "busy", app="a", owner={"deployment": "d2"})
    assert busy["owner"] == owner
    assert ok("deploy-unlock", root, app="a", deployment="d2")["released"] is False
    assert ok("deploy-lock", root, app="a", owner={"deployment": "d2"}, force=True)[
        "resumed"] is False
    assert ok("deploy-unlock", root, app="a", deployment="d2")["released"] is True
    assert not (root / "a" / ".deploy-lock").exists()
    fails("deploy-lock", root, "bad-args", app="../x", owner=owner)


def test_deploy_lock_fences_a_holder_whose_token_a_later_one_passed(root: Path) -> None:
    """Issue 16: the daemon that lost a deployment to another (a lower lease token) is refused
    at the host's lock; the later holder records its token; no token changes nothing."""
    stale, later = {"deployment": "d1", "token": 3}, {"deployment": "d1", "token": 4}
    assert ok("deploy-lock", root, app="a", owner=stale)["resumed"] is False
    assert ok("deploy-lock", root, app="a", owner=later)["resumed"] is True  # took it over
    owner_file = root / "a" / ".deploy-lock" / "owner.json"
    assert json.loads(owner_file.read_text()) == later
    fenced = fails("deploy-lock", root, "busy", app="a", owner=stale)
    assert "fenced" in fenced["error"] and fenced["owner"] == later
    assert ok("deploy-lock", root, app="a", owner={"deployment": "d1"})["resumed"] is True
    assert json.loads(owner_file.read_text()) == later  # an owner without a token: kept


def test_each_op_that_changes_an_app_is_fenced_by_the_lease_token_not_only_the_lock(
        root: Path) -> None:
    """Issue 16: a daemon that took the lock under token 3 and then lost the lease to token 4
    has its later ops refused by the host (kind "fenced", nothing changed), alone or in a
    batch; the holder's ops and unfenced (CLI) calls go on; a read is never fenced."""
    stale, later = {"deployment": "d1", "token": 3}, {"deployment": "d1", "token": 4}
    ok("deploy-lock", root, app="a", owner=stale)
    assert ok("stage-begin", root, app="a", release_id=rid(1), fence=stale)["state"] == "staging"
    ok("deploy-lock", root, app="a", owner=later)  # the lease expired; another daemon took it
    refused = fails("stage-begin", root, "fenced", app="a", release_id=rid(2), fence=stale)
    assert "(4 > 3)" in refused["error"] and refused["owner"] == later
    assert not (root / "a" / "releases" / f"{rid(2)}.staging").exists()
    fails("abort-stage", root, "fenced", app="a", release_id=rid(1), fence=stale)
    assert (root / "a" / "releases" / f"{rid(1)}.staging").is_dir()
    other = fails("mark-bad", root, "fenced", app="a", release_id=rid(1),
                  fence={"deployment": "d9", "token": 9})  # not the lock's deployment
    assert "not held by d9" in other["error"]
    ok("state", root, app="a", fence=stale)  # reads are not fenced
    ok("abort-stage", root, app="a", release_id=rid(1), fence=later)
    fails("stage-begin", root, "bad-args", app="a", release_id=rid(2), fence={"token": "4"})

    t = LocalTransport()  # the controller's HostOps sends its fence with every call and batch
    stale_ops = HostOps(t, str(root), fence=stale)
    with pytest.raises(HostOpFailed) as batch:
        stale_ops.batch([build.state("a"), build.mark_bad("a", rid(1))])
    assert batch.value.kind is OpKind.FENCED
    assert HostOps(t, str(root), fence=later).run(build.mark_bad("a", rid(1)))
    ok("deploy-unlock", root, app="a", deployment="d1")
    fails("unmark-bad", root, "fenced", app="a", release_id=rid(1), fence=later)  # no lock
    ok("unmark-bad", root, app="a", release_id=rid(1))  # unfenced: as before


def test_hostlock_maps_busy_to_deploy_locked(root: Path) -> None:
    from orchestrator.hosts import hostlock

    t = LocalTransport()  # the tools are shipped into root/.orchestrator/tools, as on a host
    assert hostlock.acquire(t, str(root), "a", "d1")["resumed"] is False
    assert hostlock.acquire(t, str(root), "a", "d1")["resumed"] is True
    with pytest.raises(hostlock.DeployLocked) as locked:
        hostlock.acquire(t, str(root), "a", "d2")
    assert "d1" in str(locked.value) and locked.value.owner["deployment"] == "d1"
    hostlock.release(t, str(root), "a", "d2")  # not the holder: nothing happens
    assert (root / "a" / hostlock.LOCK_DIR).is_dir()
    hostlock.release(t, str(root), "a", "d1")
    assert not (root / "a" / hostlock.LOCK_DIR).exists()


def test_kill_group_op_kills_the_group_and_removes_the_files(root: Path, tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    pid_file, req = tmp_path / "req.json.pid", tmp_path / "req.json"
    pid_file.write_text(f"{sleeper.pid}\n")
    req.write_text("{}")
    assert ok("kill-group", root, pid_file=str(pid_file), remove=[str(req)])["killed"] is True
    assert sleeper.wait(timeout=10) == -9
    assert not pid_file.exists() and not req.exists()
    assert ok("kill-group", root, pid_file=str(pid_file))["killed"] is False


def test_audit_op_reports_no_current_as_its_kind(root: Path) -> None:
    fails("audit", root, "no-current", app="a")


def test_file_exists_op(root: Path) -> None:
    (root / "f").write_bytes(b"x")
    assert ok("file-exists", root, path=str(root / "f"))["exists"] is True
    assert ok("file-exists", root, path=str(root))["exists"] is False  # a directory
    fails("file-exists", root, "bad-args", path="f")
