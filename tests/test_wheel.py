"""A wheel install deploys (issue 14): the package built as a wheel, installed into a fresh venv
(not editable, as docs/operations.md installs it for systemd), and `orchestrator deploy` from
that venv to a testbed host. Everything a deploy reads from the package (the playbook, the host
scripts, the compatibility data) must be in the wheel: the test runs from outside the source
tree with PYTHONPATH cleared, and checks that the venv imports its own copy.

Cost: the build is `uv build --wheel` (an isolated build env from uv's cache), the install
`uv pip install` from uv's cache; the deploy is the joblib model of the other deploy tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.testbed import Testbed
from tests.specs import WHEEL_CACHE, joblib_spec

REPO = Path(__file__).resolve().parent.parent
UV = str(Path(sys.executable).parent / "uv")


def run(*args: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def test_a_wheel_installed_in_a_fresh_venv_deploys(testbed: Testbed, models_dir: Path,
                                                   tmp_path: Path) -> None:
    # A copy of the sources: building in place would leave build/ and *.egg-info in the tree.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(REPO / "orchestrator", src / "orchestrator",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run(UV, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), cwd=src, env=clean)
    wheel = next((tmp_path / "dist").glob("gpu_orchestrator-*.whl"))
    venv = tmp_path / "venv"
    run(UV, "venv", "--quiet", "--python", sys.executable, str(venv), cwd=tmp_path, env=clean)
    run(UV, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel),
        cwd=tmp_path, env=clean)
    shutil.rmtree(src)  # nothing can be read from the sources any more

    where = run(str(venv / "bin" / "python"), "-c",
                "import orchestrator.deploy.playbook as p; print(p.DEFAULT_PLAYBOOK)",
                cwd=tmp_path, env=clean).stdout.strip()
    assert where.startswith(str(venv)) and Path(where).is_file(), where

    host = testbed.hosts_with("h100")[0]
    spec = joblib_spec(tmp_path / "spec", "wheel-app", models_dir / "model.joblib",
                       models_dir / "golden.npz", [host.name],
                       extra="gpu: {required: false}\n")
    env = {**clean, "ORCHESTRATOR_WHEEL_CACHE": str(WHEEL_CACHE),
           "ORCHESTRATOR_STATE_DIR": str(tmp_path / "state")}
    done = run(str(venv / "bin" / "orchestrator"), "deploy", str(spec), "--inventory",
               str(testbed.inventory_path), cwd=tmp_path, env=env)
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{host.name}: succeeded "), done.stdout
    release = last.split()[2]
    current = Path(host.deploy_root) / "wheel-app" / "current"
    assert os.readlink(current).endswith(release)
