"""The demo's stage 7 (orchestrator/demo.py): the scikit-learn example released as a container
image, built by the daemon at deploy time from the hashed lock onto a Debian base image
(`environment.image_base`), shipped to the hosts whose Podman lacks it, verified inside the image,
then each host's image shown. Skipped, saying why, where Podman, runc or debootstrap is missing or
the demo does not run as root (orchestrator/testbed/baseimage.py `why_not`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from orchestrator.cli.render import table
from orchestrator.core.hashing import hash_file, hash_path
from orchestrator.errors import TestbedError
from orchestrator.testbed import baseimage

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "examples" / "sklearn-joblib"
APP = "iris-sklearn"
TITLE = "7. The scikit-learn model as a container image, built at deploy time"
# A CPU container needs no driver, so tb-04 (old driver) serves it too; tb-02 is left out,
# degraded at its last verification (stage 6): the daemon would exclude it.
TARGETS = ["tb-01", "tb-03", "tb-04"]

SPEC = """\
# The scikit-learn example as an image release: the daemon builds the image at deploy time from
# the hashed lock onto the Debian base image (environment.image_base), once per (base, lock).
apiVersion: orchestrator/v1
kind: Deployment
name: {app}
model: {{path: model.joblib, format: joblib, sha256: {sha}}}
environment:
  python: "3.11"
  requirements: requirements.lock
  image_base: {{archive: base.tar, sha256: {base_sha}}}
gpu: {{required: false}}
targets: [{targets}]
rollout: {{canary: 1, batch_size: 2, max_failed_hosts: 0, on_failure: rollback}}
verify:
  golden: golden.npz
  method: predict_proba
  warmup_iterations: 5
  iterations: 50
  latency_ms: {{p99: 200}}
  timeout_s: 300
"""

WHY = """\
Most teams ship a model as a container image. Here the daemon makes one at deploy time: the
example's hashed lock (scikit-learn 1.9.1) installed offline into a Debian bookworm base image
(debootstrap + `podman import`, made once), with no network inside the build; the image is
kept in the controller's image cache, so only the first run builds it (30-60 s, the events
`image.build started` and `finished`).
Each host's Podman gets the archive only if it lacks the image (checked by sha256 on the host),
and verify runs the golden and latency checks inside the image with the model mounted
read-only. The targets are tb-01, tb-03 and tb-04: this release sets gpu.required: false and
runs on the CPU, so tb-04's old driver does not matter to it. tb-02 is left out: the daemon
excludes a host degraded at its last verification (stage 6's driver/library mismatch) from
every rollout until a verification finds it healthy again."""


class Story(Protocol):
    """What the stage needs of the demo (orchestrator/demo.py `Demo`)."""

    dir: Path

    def stage(self, title: str, text: str = "") -> None: ...

    def run(self, *args: str, capture: bool = False) -> str: ...

    def relative(self, arg: str) -> str: ...

    def last_deployment(self) -> str: ...


def image_release(demo: Story) -> None:
    why = baseimage.why_not()
    if why is not None:
        demo.stage(TITLE, f"Skipped: {why}.")
        return
    demo.stage(TITLE, WHY)
    fresh = not baseimage.archive_path().is_file()
    if fresh:
        print("\nMaking the base image (once, about a minute; debootstrap from "
              f"{baseimage.mirror()}) ...", flush=True)
    try:
        base = baseimage.base_archive()
    except TestbedError as exc:
        print(f"\nSkipped: the base image could not be made: {exc}", flush=True)
        return
    print(f"\nBase image: {demo.relative(str(base))} ({base.stat().st_size >> 20} MiB"
          f"{', made now' if fresh else ', cached'})", flush=True)
    spec = write_spec(demo.dir / "specs", base)
    demo.run("submit", str(spec), "--follow")
    out = demo.run("logs", demo.last_deployment(), "--json", capture=True)
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    print("\n" + render_images(events, {h: demo.dir / "hosts" / h / "root" for h in TARGETS}))
    demo.run("releases", APP)


def write_spec(specs: Path, base: Path) -> Path:
    d = specs / "image"
    d.mkdir()
    for name in ("model.joblib", "golden.npz", "requirements.lock"):
        shutil.copy(EXAMPLE / name, d / name)
    try:  # the cached archive, without a copy of 275 MB when DIR is on the same disk
        os.link(base, d / "base.tar")
    except OSError:
        shutil.copy(base, d / "base.tar")
    (d / "spec.yaml").write_text(SPEC.format(
        app=APP, sha=hash_path(d / "model.joblib"), base_sha=hash_file(d / "base.tar"),
        targets=", ".join(TARGETS)))
    return d / "spec.yaml"


def render_images(events: list[dict[str, Any]], roots: dict[str, Path]) -> str:
    """Per host: the image its serving release runs (manifest.json) and the bytes install
    shipped to get it there (0: the host's engine had it)."""
    shipped = {str(e["host"]): e.get("shipped_bytes") for e in events
               if e.get("step") == "install" and e.get("status") == "ok"}
    p99 = {str(e["host"]): e.get("p99_ms") for e in events
           if e.get("step") == "verify" and e.get("status") == "ok"}
    rows = []
    for host, root in roots.items():
        try:
            image = json.loads((root / APP / "current" / "manifest.json").read_text())["image"]
            ident = str(image["image_id"])[:19]
            engine = f"{image['engine']} {image['engine_version']}"
        except (OSError, ValueError, KeyError, TypeError):
            ident, engine = "(not serving)", "-"
        size, latency = shipped.get(host), p99.get(host)
        rows.append((host, ident, engine, "-" if size is None else f"{int(size) / 1e6:.0f}",
                     "-" if latency is None else f"{float(latency):.2f}"))
    return table(("host", "image id", "engine", "shipped MB", "p99 ms"), rows)
