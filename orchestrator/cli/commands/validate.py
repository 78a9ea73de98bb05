"""`orchestrator validate SPEC [--inventory FILE]`: the spec and every file it names, offline.

Checks, reporting every problem found (one line each) and exiting 2 if there is any:
- the spec itself (`orchestrator.core.spec.load_spec`: strict YAML, models, paths inside its
  folder);
- the model exists, has the shape its format needs, and hashes to `model.sha256`;
- the lock file lints clean (`orchestrator.core.lockfile`);
- the golden file is a readable .npz (a zip of .npy members; checked without numpy) and, for
  a joblib model, was recorded calling `verify.method` (its `__golden__` metadata);
- the wheelhouse, when given, holds exactly the locked wheels for the spec's Python;
- with `--inventory`, every target names a known host, group or label.
Valid: one summary line on stdout, exit 0. With --json, one object either way (a spec that
does not load is its one error).

`check_references(spec)` is the reusable part (the daemon can run it on submit).
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from typing import Any

from orchestrator.cli import exits
from orchestrator.core.envinputs import load_image
from orchestrator.core.fingerprint import GOLDEN_META_KEY, read_npz_text
from orchestrator.core.inventory import load_inventory
from orchestrator.core.lockfile import Lock, check_wheelhouse, lint_lock
from orchestrator.core.spec import Spec, check_model_hash, load_spec
from orchestrator.core.terminal import safe
from orchestrator.deploy.imagebuild import pack_layout
from orchestrator.errors import EXIT_INVALID, EXIT_OK, InvalidInput, SpecError
from orchestrator.hosts.remote import formats

MAX_GOLDEN_MEMBERS = 10_000

EXITS = exits.table({EXIT_OK: "the spec and every file it names are valid",
                     EXIT_INVALID: "a problem (every one is listed, each naming file and field)"})


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "validate", help="check a spec and the files it names, without touching any host",
        description="Check a deployment spec and its model, lock file, golden file and "
                    "wheelhouse. Exit 0 when valid, 2 with every problem listed otherwise.",
        **exits.help_args(EXITS))
    parser.add_argument("spec", metavar="SPEC", help="the spec YAML file")
    parser.add_argument("--inventory", metavar="FILE",
                        help="also check that every target is in this inventory")
    parser.add_argument("--json", action="store_true",
                        help='print {"spec", "valid", "errors": [{"message", "file", "line", '
                             '"field"}], "summary"}')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)  # a SpecError here is printed by the CLI, exit 2
    except SpecError as exc:
        if not args.json:
            raise
        print(json.dumps({"spec": str(args.spec), "valid": False,
                          "errors": [_error_json(exc)], "summary": None}, indent=2))
        return EXIT_INVALID
    errors, lock = check_references(spec)
    if args.inventory:
        errors.extend(_check_targets(spec, args.inventory))
    if args.json:
        print(json.dumps({"spec": spec.file, "valid": not errors,
                          "errors": [_error_json(e) for e in errors],
                          "summary": None if errors else _summary(spec, lock)}, indent=2))
        return EXIT_INVALID if errors else EXIT_OK
    if errors:
        for err in errors:
            print(safe(f"error: {err}"), file=sys.stderr)
        print(safe(f"{spec.file}: {len(errors)} problem{'s' if len(errors) > 1 else ''}"),
              file=sys.stderr)
        return EXIT_INVALID
    print(safe(_summary(spec, lock)))
    return EXIT_OK


def _error_json(err: SpecError) -> dict[str, Any]:
    return {"message": err.reason, "file": err.file, "line": err.line, "field": err.field}


def check_references(spec: Spec) -> tuple[list[SpecError], Lock | None]:
    """Every problem with the files `spec` names, and the lock when it lints clean."""
    errors = _check_model(spec)
    lock_path, lock = spec.paths.requirements, None
    if lock_path is None:  # an image environment: its archive, hashed then read
        try:
            load_image(pack_layout(spec))  # an OCI layout directory: hashed, read packed
        except InvalidInput as exc:  # a SpecError at the sha256, or an unreadable archive
            errors.append(exc if isinstance(exc, SpecError) else spec.error(
                ("environment", "image", "archive"), str(exc)))
    elif not lock_path.is_file():
        errors.append(spec.error(("environment", "requirements"),
                                 f"{lock_path} does not exist or is not a file"))
    else:
        try:
            result = lint_lock(lock_path)
            errors.extend(result.errors)
            lock = result.lock
        except SpecError as exc:  # unreadable or over the size limit
            errors.append(exc)
    errors.extend(_check_golden(spec))
    wheelhouse = spec.paths.wheelhouse
    if wheelhouse is not None:
        if not wheelhouse.is_dir():
            errors.append(spec.error(("environment", "wheelhouse"),
                                     f"{wheelhouse} is not a directory"))
        elif lock is not None:
            errors.extend(check_wheelhouse(lock, wheelhouse, python=spec.environment.python))
    return errors, lock


def _check_model(spec: Spec) -> list[SpecError]:
    path, fmt = spec.paths.model, spec.model.format
    if not path.exists():
        return [spec.error(("model", "path"), f"{path} does not exist")]
    shape = formats.get(fmt).shape_problem(str(path))  # the format's own check
    if shape:
        return [spec.error(("model", "format"), f"{path}: {shape}")]
    try:
        check_model_hash(spec)
    except SpecError as exc:
        return [exc]
    return []


def _check_golden(spec: Spec) -> list[SpecError]:
    path = spec.paths.golden
    where = ("verify", "golden")
    if not path.is_file():
        return [spec.error(where, f"{path} does not exist or is not a file")]
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not names:
                return [spec.error(where, f"{path}: the .npz holds no array")]
            if len(names) > MAX_GOLDEN_MEMBERS:
                return [spec.error(where, f"{path}: more than {MAX_GOLDEN_MEMBERS} arrays")]
            odd = [n for n in names if not n.endswith(".npy")]
            if odd:
                return [spec.error(where, f"{path}: not an .npz: member {odd[0]!r} is not .npy")]
            bad = archive.testzip()  # CRC of every member: truncation and corruption
            if bad is not None:
                return [spec.error(where, f"{path}: member {bad!r} is corrupt")]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return [spec.error(where, f"{path}: not a readable .npz ({exc})")]
    return _check_golden_method(spec)


def _check_golden_method(spec: Spec) -> list[SpecError]:
    """A joblib golden file records the method it called (orchestrator/core/golden.py); another
    method than verify.method gives other outputs, and the canary would fail on it."""
    path = spec.paths.golden
    try:
        text = read_npz_text(path, GOLDEN_META_KEY)
        meta = json.loads(text) if text else None
    except (InvalidInput, ValueError) as exc:
        return [spec.error(("verify", "golden"), f"{path}: unreadable metadata ({exc})")]
    recorded = meta.get("method") if isinstance(meta, dict) else None
    if not formats.get(spec.model.format).calls_method or not isinstance(recorded, str):
        return []
    if recorded != spec.verify.method:
        return [spec.error(("verify", "method"),
                           f"is {spec.verify.method!r} but {path} was recorded with method "
                           f"{recorded!r}: record it again with `orchestrator golden record "
                           f"--method {spec.verify.method}`, or set verify.method: {recorded}")]
    return []


def _check_targets(spec: Spec, inventory_path: str) -> list[SpecError]:
    inventory = load_inventory(inventory_path)
    errors: list[SpecError] = []
    for i, target in enumerate(spec.targets):
        try:
            inventory.resolve([target])
        except SpecError as exc:
            errors.append(spec.error(("targets", i), f"{exc.reason} in {inventory_path}"))
    return errors


def _summary(spec: Spec, lock: Lock | None) -> str:
    packages = len(lock.packages) if lock else 0
    gpu = f"{spec.gpu.count} GPU(s)" if spec.gpu.required else "CPU"
    image = spec.environment.image
    env = (f"image {image.archive} {image.sha256[:12]}" if image else
           f"{packages} locked packages, python {spec.environment.python}")
    return (f"{spec.file}: valid: {spec.name}, {spec.model.format} model "
            f"{spec.model.sha256[:12]}, {env}, {gpu}, {len(spec.targets)} target(s)")
