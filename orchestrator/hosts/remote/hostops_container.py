"""hostops' container ops: the serving container of an image release (`service.container`).
Shipped beside hostops.py (stdlib only, Python 3.9+).

    container-serve   root, app, name, command, ready_command, budget_s, stop_timeout_s
                      -> {"container", "release_id", "image_id", "reused", "replaced", "ready_s"}
                      makes the container `name` serve the app's `current` release in its
                      image (image.json, written by image-ensure): unless `name` already runs
                      that release in that image, `<name>-next` is started beside it (host
                      network, the release read-only at its own path, the GPU arguments the
                      release was verified with), must keep running and pass `ready_command`
                      inside itself within budget_s, and only then is the old container stopped
                      (SIGTERM, then SIGKILL after stop_timeout_s) and removed and the new one
                      renamed to `name`. A new one that exits or is not ready is removed,
                      "check-failed", and the old one serves on untouched.
    container-remove  root, app, name, release_id, stop_timeout_s -> {"removed": bool}
                      stops and removes container `name`, run by the engine release_id's
                      image.json names: a rollback to a release without a serving container
                      (its own restart serves) must not leave the undone one serving.
    container-status  root, app, name -> {"container", "running", "image_id", "release_id",
                      "expected_image_id", "current"}
                      what `name` runs against what the app's current release names:
                      re-verification reports a container replaced by hand.

The switch and every rollback reach container-serve through the release's recorded `service`
(orchestrator/deploy/steps/service.py): a rollback starts the previous release's image again.

Offers hostops.py its OPS; nothing to the other modules."""

from __future__ import annotations

import os
import subprocess
import time

import hostlayout
from contenthash import NAME_RE
from hostops_fs import (
    RELEASE_RE,
    Flock,
    OpError,
    app_dir_arg,
    checked_arg,
    orch_path,
    read_json,
    root_arg,
)
from hostops_image import ENGINE_RE, IMAGE_FILE, IMAGE_ID_RE, gpu_args_of
from hostops_releases import current_id, release_path

NEXT = "-next"
LABEL_APP, LABEL_RELEASE = "orchestrator.app", "orchestrator.release"
ENGINE_TIMEOUT_S = 120
MAX_ARGS, MAX_ARG = 256, 4096
_INSPECT = ('{{.State.Running}}|{{.Image}}|{{index .Config.Labels "' + LABEL_RELEASE + '"}}')


def _run(engine, *argv, timeout=ENGINE_TIMEOUT_S):
    try:
        done = subprocess.run([engine, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise OpError("engine-failed", f"{engine} {argv[0]}: {exc}") from exc
    return done


def _must(engine, *argv):
    done = _run(engine, *argv)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise OpError("engine-failed", f"{engine} {argv[0]} exited {done.returncode}: {tail}")
    return done.stdout


def _inspect(engine, name):
    """(running, image id, release label) of container `name`, or None when there is none."""
    done = _run(engine, "container", "inspect", "--format", _INSPECT, name)
    if done.returncode != 0:
        return None
    running, image, release = [*done.stdout.strip().split("|"), "", ""][:3]
    image = image if image.startswith("sha256:") else f"sha256:{image}"
    # A container without the label: podman prints nothing, docker "<no value>".
    return running == "true", image, release if release not in ("", "<no value>") else None


def _logs(engine, name):
    done = _run(engine, "logs", "--tail", "5", name)
    return " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])


def _released(args):
    """The app's current release: (release id, its path, its image.json's image and engine)."""
    app_dir = app_dir_arg(args)
    rid = current_id(app_dir)
    if rid is None:
        raise OpError("no-current", "the app has no current release")
    rel = os.path.realpath(release_path(app_dir, rid))
    info = read_json(os.path.join(rel, IMAGE_FILE), None)
    if not isinstance(info, dict):
        raise OpError("not-found", f"release {rid} is not an image release (no {IMAGE_FILE})")
    image_id, engine = info.get("image_id"), info.get("engine")
    if not (isinstance(image_id, str) and IMAGE_ID_RE.match(image_id)
            and isinstance(engine, str) and ENGINE_RE.match(engine)):
        raise OpError("bad-release", f"release {rid}: {IMAGE_FILE} names no valid image/engine")
    return rid, rel, image_id, engine, gpu_args_of(info)


def _command(args):
    command = args.get("command")
    if not (isinstance(command, list) and 0 < len(command) <= MAX_ARGS and all(
            isinstance(a, str) and len(a) <= MAX_ARG and "\x00" not in a for a in command)):
        raise OpError("bad-args", "command must be a non-empty list of strings")
    return command


def op_container_serve(args):
    root, name = root_arg(args), checked_arg(args, "name", NAME_RE)
    command, ready = _command(args), checked_arg(args, "ready_command")
    budget, stop_s = float(args.get("budget_s", 30)), int(float(args.get("stop_timeout_s", 10)))
    rid, rel, image_id, engine, gpu_args = _released(args)
    os.makedirs(orch_path(root, "images"), exist_ok=True)
    # One serve at a time per container name (a rollback may race a re-verification's).
    with Flock(orch_path(root, "images", f"container-{name}.lock"), budget + 60):
        old = _inspect(engine, name)
        if old is not None and old == (True, image_id, rid):
            return {"container": name, "release_id": rid, "image_id": image_id,
                    "reused": True, "replaced": None, "ready_s": 0.0}
        nxt = name + NEXT
        _run(engine, "rm", "-f", nxt)
        _must(engine, "run", "-d", "--name", nxt, "--network=host",
              "--label", f"{LABEL_APP}={args['app']}", "--label", f"{LABEL_RELEASE}={rid}",
              "-v", f"{rel}:{rel}:ro", "-e", f"ORCHESTRATOR_RELEASE={rel}",
              "-e", f"ORCHESTRATOR_MODEL={hostlayout.model_dir(rel)}", *gpu_args,
              image_id, *command)
        ready_s = _wait_ready(engine, nxt, ready, budget)
        if old is not None:
            _run(engine, "stop", "-t", str(stop_s), name, timeout=stop_s + ENGINE_TIMEOUT_S)
            _must(engine, "rm", "-f", name)
        _must(engine, "rename", nxt, name)
    return {"container": name, "release_id": rid, "image_id": image_id, "reused": False,
            "replaced": old[2] if old is not None else None, "ready_s": round(ready_s, 3)}


def _wait_ready(engine, nxt, ready, budget):
    """Seconds until `nxt` passed `ready` inside itself while running; else it is removed and
    check-failed says why (its last log lines)."""
    start = time.monotonic()
    last = "not run yet"
    while True:
        state = _inspect(engine, nxt)
        if state is None or not state[0]:
            why = f"the new container exited before it was ready: {_logs(engine, nxt)}"
            break
        left = budget - (time.monotonic() - start)
        try:
            done = _run(engine, "exec", nxt, "sh", "-c", ready, timeout=max(1.0, left))
        except OpError as exc:
            done, last = None, str(exc)
        if done is not None and done.returncode == 0:
            state = _inspect(engine, nxt)  # ready, and still the one running
            if state is not None and state[0]:
                return time.monotonic() - start
        elif done is not None:
            last = f"exit {done.returncode}: " + " | ".join(
                (done.stdout + done.stderr).strip().splitlines()[-3:])
        if time.monotonic() - start + 0.5 >= budget:
            why = f"not ready within {budget:g} s (ready_command: {last})"
            break
        time.sleep(0.5)
    _run(engine, "rm", "-f", nxt)
    raise OpError("check-failed", f"container {nxt}: {why}; the old container serves on")


def op_container_remove(args):
    app_dir, name = app_dir_arg(args), checked_arg(args, "name", NAME_RE)
    rid = checked_arg(args, "release_id", RELEASE_RE)
    stop_s = int(float(args.get("stop_timeout_s", 10)))
    info = read_json(os.path.join(release_path(app_dir, rid), IMAGE_FILE), None)
    engine = info.get("engine") if isinstance(info, dict) else None
    if not (isinstance(engine, str) and ENGINE_RE.match(engine)):
        return {"removed": False}  # not an image release: it ran no container of ours
    if _inspect(engine, name) is None:
        return {"removed": False}
    _run(engine, "stop", "-t", str(stop_s), name, timeout=stop_s + ENGINE_TIMEOUT_S)
    _must(engine, "rm", "-f", name)
    return {"removed": True}


def op_container_status(args):
    name = checked_arg(args, "name", NAME_RE)
    rid, _, image_id, engine, _ = _released(args)
    found = _inspect(engine, name)
    running, image, release = found if found is not None else (False, None, None)
    return {"container": name, "running": running, "image_id": image, "release_id": release,
            "expected_image_id": image_id, "current": rid}


#: The ops this module offers, by wire name: hostops.py gathers every hostops_* module's.
OPS = {"container-serve": op_container_serve, "container-remove": op_container_remove,
       "container-status": op_container_status}
