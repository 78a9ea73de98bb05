"""The anchors' side-by-side, set up (bench/anchors.py measures): the harness in
../shared/bench-anchors (or $ORCHESTRATOR_BENCH_ANCHORS_SRC), never written to, is
materialised (its own materialize.sh) into the cache dir ($ORCHESTRATOR_BENCH_ANCHORS_DIR, else
~/.cache/orchestrator/bench-anchors) with
  tools/ansible, tools/pyinfra  venvs of a Python >= 3.12 ($ORCHESTRATOR_BENCH_PYTHON312, else
                                found), unless the harness's own tools/ run; tools/uv/bin/uv is
                                the uv this project ships to its hosts
  wheelhouse-<lock sha>/        the lock's wheels, from this project's wheel cache (by hash)
  harness/, project/v1, v2      the harness (models built with this Python's TensorFlow); the
                                project's specs (wheelhouse in the spec, golden recorded):
                                spec.yaml ships the wheels; spec-mirror.yaml (written per run,
                                `mirror_specs`) also names a mirror of the wheelhouse as
                                `environment.wheel_source`, so the hosts pull them themselves;
                                spec-peers.yaml (`peers_specs`) ships them with
                                `environment.wheel_peers: true`: the controller streams to
                                one host, the others pull from it
then the harness's fleet is started (and, at a round trip, put behind the delay relays of
bench/_farharness.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from orchestrator.bench import _farharness
from orchestrator.core.hashing import hash_file, hash_path
from orchestrator.deploy.bytecode import cache_dir_beside, ensure_bundle, interpreter_for
from orchestrator.deploy.environments.venv import local_uv
from orchestrator.deploy.steps.wheels import default_cache_dir
from orchestrator.deploy.wheelcache import WheelCache, from_wheelhouse, platform_tags
from orchestrator.testbed.far import MAX_HOSTS
from orchestrator.xdg import user_dir

REPO = Path(__file__).resolve().parents[2]
# The controller tools, pinned to what the 2026-12-03 figures used (comparable across runs).
TOOL_PACKAGES = {"ansible": ("ansible-core==2.21.*", "ansible-playbook"),
                 "pyinfra": ("pyinfra==3.10.*", "pyinfra")}


def _source() -> Path:
    return Path(os.environ.get("ORCHESTRATOR_BENCH_ANCHORS_SRC")
                or REPO.parent / "shared" / "bench-anchors")


def cache_dir() -> Path:
    return user_dir("CACHE", "bench-anchors", override="ORCHESTRATOR_BENCH_ANCHORS_DIR")


@dataclass(frozen=True)
class Setup:
    harness: Path
    project: Path  # v1/, v2/: the project's spec dirs
    results: Path
    wheelhouse: Path  # the lock's wheels under their file names (what a mirror serves)
    hosts: int
    rtt_ms: float | None

    def env(self) -> dict[str, str]:
        """The harness scripts' environment (its clients pointed at the relays at --rtt)."""
        return _farharness.client_env(self.hosts, self.rtt_ms is not None)


def _python312() -> str | None:
    """A Python >= 3.12 for the anchors' venvs (the controller's is 3.11)."""
    explicit = os.environ.get("ORCHESTRATOR_BENCH_PYTHON312")
    candidates = [explicit] if explicit else [
        *(shutil.which(f"python3.{m}") for m in range(14, 11, -1)),
        *sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.1[2-9]*/bin/python3")),
                reverse=True)]
    for c in candidates:
        if c and subprocess.run([c, "-c", "import sys; assert sys.version_info >= (3, 12)"],
                                capture_output=True, check=False).returncode == 0:
            return c
    return None


def _runs(argv: list[str]) -> bool:
    return Path(argv[0]).exists() and not subprocess.run(argv, capture_output=True).returncode


def _tools(cache: Path, source: Path, python: str) -> Path:
    tools = cache / "tools"
    for name, (package, exe) in TOOL_PACKAGES.items():
        shared = source / "tools" / name
        if _runs([str(shared / "bin" / exe), "--version"]):
            _relink(tools / name, shared)  # the harness's own venv: reused, not rebuilt
        elif not _runs([str(tools / name / "bin" / exe), "--version"]):
            print(f"  setup: {name} venv ({package}) with {python}", flush=True)
            if (tools / name).is_symlink():
                (tools / name).unlink()
            check([python, "-m", "venv", "--clear", str(tools / name)])
            check([str(tools / name / "bin" / "pip"), "install", "-q", package])
    (tools / "uv" / "bin").mkdir(parents=True, exist_ok=True)
    _relink(tools / "uv" / "bin" / "uv", Path(local_uv()))
    return tools


def _wheelhouse(cache: Path, lock: Path) -> Path:
    """The lock's wheels under their own file names, from the wheel cache (checked by hash)."""
    house = cache / f"wheelhouse-{hash_file(lock)[:12]}"
    if (house / ".complete").exists():
        return house
    print(f"  setup: wheelhouse {house} (the project's wheel cache, by hash)", flush=True)
    wheels = WheelCache(default_cache_dir()).fill(lock, "3.11",
                                                  platform_tags("x86_64", "glibc 2.36"))
    house.mkdir(parents=True, exist_ok=True)
    for w in wheels.values():
        _link(w.path, house / w.filename)
    (house / ".complete").touch()
    return house


def _harness(cache: Path, source: Path, house: Path, python: str, tools: Path) -> Path:
    """A writable copy of the harness with this machine's paths, its models and inventories."""
    harness = cache / "harness"
    stamp = hash_path(source)
    if (harness / ".source-sha256").exists() and \
            (harness / ".source-sha256").read_text() == stamp:
        return harness
    if (harness / "scripts" / "hosts.sh").exists():
        subprocess.run(["bash", str(harness / "scripts" / "hosts.sh"), "down"],
                       capture_output=True, check=False)
    shutil.rmtree(harness, ignore_errors=True)
    print(f"  setup: harness {harness} from {source}", flush=True)
    check(["bash", str(source / "materialize.sh"), str(harness), str(house), sys.prefix,
            python])
    for d, dirs, files in os.walk(harness):  # the source is read-only; the copy must not be
        for n in (d, *(os.path.join(d, f) for f in files + dirs)):
            os.chmod(n, os.stat(n).st_mode | 0o200)
    _relink(harness / "tools", tools)
    art = harness / "artifacts"
    print("  setup: SavedModels v1..v3 (make_models.py)", flush=True)
    check([sys.executable, "make_models.py", "models", "3"], cwd=art,
           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    for v in (1, 2, 3):
        shutil.copy(art / "warmup.py", art / "models" / f"v{v}")
        check(["tar", "-C", str(art / "models"), "-czf", f"v{v}.tgz", f"v{v}"],
               cwd=art / "models")
    (harness / ".source-sha256").write_text(stamp)
    return harness


def _project(cache: Path, harness: Path, house: Path) -> Path:
    """v1/, v2/: the same lock, model and warmup count, the wheelhouse in the spec."""
    project = cache / "project"
    stamp = (harness / ".source-sha256").read_text() + house.name + " one batch"
    if (project / ".stamp").exists() and (project / ".stamp").read_text() == stamp:
        return project
    import numpy as np

    shutil.rmtree(project, ignore_errors=True)
    for v in ("v1", "v2"):
        d = project / v
        shutil.copytree(harness / "artifacts" / "models" / v / "model", d / "model")
        shutil.copy(harness / "artifacts" / "requirements.lock", d / "requirements.lock")
        _link_tree(house, d / "wheelhouse")  # inside the spec's folder, as a spec requires
        np.savez(d / "inputs.npz", inputs=np.random.default_rng(0).normal(
            size=(16, 8)).astype(np.float32))
        print(f"  setup: project {v}: golden record", flush=True)
        check([sys.executable, "-m", "orchestrator", "golden", "record", "--model",
                str(d / "model"), "--format", "tensorflow-savedmodel", "--inputs",
                str(d / "inputs.npz"), "-o", str(d / "golden.npz")], env=project_env())
        (d / "spec.yaml").write_text(spec_yaml(hash_path(d / "model"), None))
    (project / ".stamp").write_text(stamp)
    return project


def _bytecode_archive(spec_dir: Path) -> None:
    """The lock's .pyc archive built before the timed runs, as the wheelhouse is: the project
    compiles it once per lock on the controller (deploy/bytecode.py), and inside a timed cold
    run the first rep alone would pay it (its controller CPU and its install step)."""
    python = "3.11"  # the spec's environment.python: the hosts' /usr/bin/python3
    interpreter = interpreter_for(python)
    if interpreter is None:
        print(f"  setup: no python{python} here: the project ships no bytecode", flush=True)
        return
    wheels = from_wheelhouse(spec_dir / "requirements.lock", spec_dir / "wheelhouse",
                             python_version=python)
    bundle = ensure_bundle(wheels, python, interpreter, cache_dir_beside(default_cache_dir()))
    if bundle is not None and not bundle.cached:
        print(f"  setup: the lock's bytecode archive built in {bundle.build_s:.1f} s "
              f"({bundle.files} .pyc, {bundle.size / 1e6:.0f} MB)", flush=True)


def spec_yaml(model_sha256: str, wheel_source: str | None, *, peers: bool = False) -> str:
    """The project's spec: the same lock, model and warmup as the anchors'; with
    `wheel_source` (a URL serving the wheel files by name) the hosts pull the wheels from it;
    with `peers`, from each other (`wheel_peers`). The wheelhouse stays in the spec either
    way: the controller reads the wheels' names and sizes there (docs/spec.md, "A wheel
    mirror"). Pure."""
    source = ("" if wheel_source is None
              else f', wheel_source: {{url: "{wheel_source}", layout: directory}}')
    source += ", wheel_peers: true" if peers else ""
    return f"""\
apiVersion: orchestrator/v1
kind: Deployment
name: anchors-bench
model: {{path: model, format: tensorflow-savedmodel, sha256: {model_sha256}}}
environment: {{python: "3.11", requirements: requirements.lock, wheelhouse: wheelhouse{source}}}
targets: [testbed]
rollout: {{canary: 0, batch_size: {MAX_HOSTS}, max_parallel: 16}}
verify: {{golden: golden.npz, warmup_iterations: 0, iterations: 200, timeout_s: 900}}
"""


def mirror_specs(project: Path, url: str) -> None:
    """v1/spec-mirror.yaml, v2/spec-mirror.yaml: the specs with `url` as the wheel mirror (its
    port is chosen per run)."""
    for v in ("v1", "v2"):
        d = project / v
        (d / "spec-mirror.yaml").write_text(spec_yaml(hash_path(d / "model"), url))


def peers_specs(project: Path) -> None:
    """v1/spec-peers.yaml, v2/spec-peers.yaml: the specs with `wheel_peers: true`."""
    for v in ("v1", "v2"):
        d = project / v
        (d / "spec-peers.yaml").write_text(spec_yaml(hash_path(d / "model"), None, peers=True))


def setup(hosts: int, rtt_ms: float | None) -> Setup:
    source, cache = _source(), cache_dir()
    python = _python312()
    if not (source / "materialize.sh").exists():
        raise SystemExit(f"anchors: no harness at {source} (set ORCHESTRATOR_BENCH_ANCHORS_SRC)")
    if python is None:
        raise SystemExit("anchors: no Python >= 3.12 for ansible-core (set "
                         "ORCHESTRATOR_BENCH_PYTHON312)")
    cache.mkdir(parents=True, exist_ok=True)
    _bytecode()
    tools = _tools(cache, source, python)
    house = _wheelhouse(cache, source / "artifacts" / "requirements.lock")
    harness = _harness(cache, source, house, python, tools)
    project = _project(cache, harness, house)
    peers_specs(project)  # beside a cached project too: cheap, and always this code's
    _bytecode_archive(project / "v1")
    s = Setup(harness, project, cache / "results.jsonl", house, hosts, rtt_ms)
    _farharness.stop(harness)  # a crashed --rtt run's relays
    # hosts.sh up without the relays' offset: the sshds keep their own ports.
    check(["bash", "scripts/hosts.sh", "up"], cwd=harness,
           env=_farharness.client_env(hosts, False), quiet=True)
    if rtt_ms is not None:
        _farharness.point_clients(harness)
        _farharness.start(harness, _farharness.plan(_farharness.endpoints(harness, hosts),
                                                    rtt_ms))
    check(["bash", "scripts/gen_inventory.sh"], cwd=harness, env=s.env(), quiet=True)
    return s


def _bytecode() -> None:
    """This checkout's modules and the controller venv's packages compiled, as an installed
    tool's are (pip compiles at install; uv and an editable checkout do not, and with
    PYTHONDONTWRITEBYTECODE set no run writes them): without it each timed `orchestrator
    deploy` compiled ~340 modules again, 0.3 s of its controller CPU. Once; then a stat pass."""
    check([sys.executable, "-m", "compileall", "-q", "-j", "0", str(REPO / "orchestrator"),
           sysconfig.get_path("purelib")], quiet=True)


def project_env() -> dict[str, str]:
    """This checkout's package first (a worktree's venv may point at another checkout)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def check(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
          quiet: bool = False) -> None:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"anchors: {' '.join(argv)} failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    if not quiet and proc.stdout.strip():
        print("    " + proc.stdout.strip().splitlines()[-1], flush=True)


def _link_tree(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for f in source.glob("*.whl"):
        _link(f, dest / f.name)


def _link(source: Path, target: Path) -> None:
    """A hard link (no copy of 335 MB), else a copy."""
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)


def _relink(link: Path, target: Path) -> None:
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def drop_caches(s: Setup) -> None:
    """Before every tool's cold run the kernel's clean caches are dropped. On this machine (a
    VM) an install that must first reclaim page cache wrote up to 4 times slower: the same
    4-host cold install took 8-10 s a host right after a drop and 17-38 s when earlier runs'
    files filled the cache, so a cold ratio said which tool ran after which. Then what a
    controller in use holds in memory is read back, for every tool alike (reading it from the
    disk of this VM cost the controller ~0.6 s of CPU, the host faulting the pages in): the
    wheelhouse (the floor's hosts read it, the project streams it), uv, the lock's .pyc
    archives and the project's modules."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        print(f"  (caches not dropped before a cold run: {exc})", flush=True)
        return
    archives = cache_dir_beside(default_cache_dir())
    files = [*sorted(s.wheelhouse.iterdir()), local_uv(),
             *(sorted(archives.iterdir()) if archives.is_dir() else [])]
    for path in files:
        if path.is_file():
            with open(path, "rb") as fh:
                while fh.read(1 << 20):
                    pass
    subprocess.run([sys.executable, "-c", "import orchestrator.cli.commands.deploy, "
                    "orchestrator.deploy.rollout, orchestrator.deploy.environments.registry"],
                   env=project_env(), capture_output=True, check=False)
