"""hostops' image ops: the OCI image environment on a host (Docker or Podman). Shipped beside
hostops.py (stdlib only, Python 3.9+).

    image-present   root, image_id, engine -> {"present": bool, "upload_path": str}
                    whether the engine already has the image (by its id, the sha256 of its
                    config); where the controller uploads the archive when it has not
    image-ensure    root, image_id, archive_sha256, engine, app, release_id, gpu_args (the
                    engine's GPU arguments for the placed GPUs, orchestrator/core/enginegpu.py;
                    [] for a CPU release) -> {"image_id", "reused", "launcher"}
                    under the archive's lock: unless the engine has the image, the uploaded
                    archive must hash to archive_sha256 (else it is deleted, "hash-mismatch",
                    nothing loaded), is loaded, and the loaded id must be image_id
                    ("image-mismatch"); the archive is then deleted. Writes the staged
                    release's `python` launcher and `image.json`.

The launcher is the environment's interpreter (argv-compatible with python): it runs python3
inside the image, without network, with the release (model, golden) and the orchestrator's
tools mounted read-only at their own paths, and the request file the warmup passes last too.

Offers hostops.py its OPS; nothing to the other modules."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from contenthash import sha256_file
from hostops_fs import (
    HASH_RE,
    RELEASE_RE,
    Flock,
    OpError,
    app_dir_arg,
    checked_arg,
    orch_path,
    root_arg,
    write_atomic,
    write_json,
)
from hostops_releases import STAGING, releases_dir

IMAGE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
ENGINE_RE = re.compile(r"^/[A-Za-z0-9_./-]*/(docker|podman)$")
LAUNCHER = "python"
IMAGE_FILE = "image.json"
LOAD_TIMEOUT_S = 1800
#: What a GPU argument may be (they reach `engine run` as argv, also written into the shell
#: launcher, quoted): the flags core/enginegpu.py builds and their values.
GPU_ARG_RE = re.compile(r'^(--device|--gpus|-e|nvidia\.com/gpu=[A-Za-z0-9_.-]+|'
                        r'"?device=[A-Za-z0-9_,-]+"?|NVIDIA_VISIBLE_DEVICES=[A-Za-z0-9_,-]+)$')


def _engine(args):
    return checked_arg(args, "engine", ENGINE_RE)


def _image_id(engine, ref):
    """The engine's id of image `ref`, or None when it has no such image."""
    try:
        done = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}}", ref],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise OpError("engine-failed", f"{engine} image inspect: {exc}") from exc
    if done.returncode != 0:
        return None
    found = done.stdout.strip()
    return found if found.startswith("sha256:") else f"sha256:{found}"


def _images_dir(root):
    path = orch_path(root, "images")
    os.makedirs(path, exist_ok=True)
    return path


def op_image_present(args):
    root, engine = root_arg(args), _engine(args)
    image_id = checked_arg(args, "image_id", IMAGE_ID_RE)
    sha = checked_arg(args, "archive_sha256", HASH_RE)
    return {"present": _image_id(engine, image_id) == image_id,
            "upload_path": os.path.join(_images_dir(root), f"{sha}.tar.part")}


def op_image_ensure(args):
    root, engine = root_arg(args), _engine(args)
    image_id = checked_arg(args, "image_id", IMAGE_ID_RE)
    sha = checked_arg(args, "archive_sha256", HASH_RE)
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    gpu_args = gpu_args_of(args)
    staging = os.path.join(releases_dir(app_dir), rid + STAGING)
    if not os.path.isdir(staging):
        raise OpError("not-found", f"no staged release {rid}")
    part = os.path.join(_images_dir(root), f"{sha}.tar.part")
    with Flock(part + ".lock", float(args.get("wait_s", 1800))):
        reused = _image_id(engine, image_id) == image_id
        if not reused:
            _load(engine, part, sha, image_id)
        if os.path.exists(part):
            os.unlink(part)
    launcher = os.path.join(staging, LAUNCHER)
    write_atomic(launcher, _launcher(engine, image_id, root, gpu_args).encode())
    os.chmod(launcher, 0o755)
    write_json(os.path.join(staging, IMAGE_FILE), {"image_id": image_id, "engine": engine,
                                                   "archive_sha256": sha, "gpu_args": gpu_args})
    return {"image_id": image_id, "reused": reused, "launcher": launcher}


def gpu_args_of(obj):
    """The checked `gpu_args` of an op's arguments or of an image.json ([] when absent)."""
    gpu_args = obj.get("gpu_args") or []
    if not (isinstance(gpu_args, list) and len(gpu_args) <= 64
            and all(isinstance(a, str) and GPU_ARG_RE.match(a) for a in gpu_args)):
        raise OpError("bad-args", f"gpu_args must be engine GPU arguments: {gpu_args!r}")
    return gpu_args


def _load(engine, part, sha, image_id):
    if not os.path.isfile(part):
        raise OpError("not-uploaded", f"the image archive is not on the host: {part}")
    actual = sha256_file(part)
    if actual != sha:
        os.unlink(part)
        raise OpError("hash-mismatch", f"the uploaded image archive hashes to {actual}, not "
                      f"{sha}: deleted, nothing loaded")
    try:
        done = subprocess.run([engine, "load", "-i", part], capture_output=True, text=True,
                              timeout=LOAD_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise OpError("engine-failed", f"{engine} load: {exc}") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise OpError("engine-failed", f"{engine} load exited {done.returncode}: {tail}")
    loaded = _image_id(engine, image_id)
    if loaded != image_id:
        raise OpError("image-mismatch", f"the archive loaded, but {engine} has no image "
                      f"{image_id} (found {loaded})")


def _launcher(engine, image_id, root, gpu_flags):
    q = shlex.quote
    run = " ".join([q(engine), "run", "--rm", "-i", "--network=none",
                    "-v", '"$rel:$rel:ro"', "-v", q(f"{orch_path(root, 'tools')}:"
                                                    f"{orch_path(root, 'tools')}:ro"),
                    *[q(f) for f in gpu_flags]])
    return f"""#!/bin/sh
# python3 inside image {image_id} (written by hostops image-ensure): the release and the
# orchestrator's tools read-only at their own paths; the last argument too when it is a file
# (the warmup's request); no network.
rel=$(cd "$(dirname "$0")" && pwd -P)
last=""
for a in "$@"; do last=$a; done
if [ -f "$last" ]; then
  exec {run} -v "$last:$last:ro" {q(image_id)} python3 "$@"
fi
exec {run} {q(image_id)} python3 "$@"
"""


#: The ops this module offers, by wire name: hostops.py gathers every hostops_* module's.
OPS = {"image-present": op_image_present, "image-ensure": op_image_ensure}
