"""`orchestrator golden record|show`: golden predictions, recorded where the model was trained.

    orchestrator golden record --model PATH --format F --inputs FILE.npz [--signature S]
                               [--method M] -o golden.npz
    orchestrator golden show golden.npz [--json]

`record` runs the model here through the warmup runner's own code and writes inputs, outputs
and this environment's fingerprint (orchestrator/core/golden.py). `show` prints what a golden file
holds: its arrays and its fingerprint. Needs numpy and the model's framework installed here.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from orchestrator.cli import exits
from orchestrator.core.fingerprint import GOLDEN_META_KEY, read_fingerprint, read_npz_text
from orchestrator.core.spec import METHOD_PATTERN
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_INVALID, EXIT_OK, InvalidInput
from orchestrator.hosts.remote import formats

EXITS = exits.table(
    {EXIT_OK: "recorded, or shown",
     EXIT_INVALID: "a missing or unreadable model, inputs or golden file; a model the format "
                   "cannot load or call"})


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "golden", help="record or show a golden file (inputs, expected outputs, fingerprint)",
        description="Golden predictions: what verify compares each host's predictions with.",
        **exits.help_args(EXITS))
    sub = parser.add_subparsers(dest="golden_command", required=True, metavar="ACTION")
    rec = sub.add_parser("record", help="run the model here and write its golden file",
                         description="Run the model on the inputs, here, and write inputs, "
                                     "outputs and this environment's fingerprint to one .npz.")
    rec.add_argument("--model", required=True, type=Path, help="model file or directory")
    rec.add_argument("--format", required=True, choices=formats.NAMES)
    rec.add_argument("--inputs", required=True, type=Path,
                     help=".npz with `inputs` or `input:<name>` arrays (or one .npy array)")
    rec.add_argument("--signature", default="serving_default",
                     help="SavedModel signature (default serving_default)")
    rec.add_argument("--method", default="predict", type=_method,
                     help="joblib model method: predict (default), predict_proba, ..., or "
                          "__call__")
    rec.add_argument("-o", "--output", required=True, type=Path, help="golden .npz to write")
    rec.add_argument("--json", action="store_true",
                     help='print {"path", "samples", "inputs": {name: shape}, "outputs": '
                          '{name: shape}, "format", "signature", "method"}')
    rec.set_defaults(func=run_record)
    show = sub.add_parser("show", help="print a golden file's arrays and fingerprint")
    show.add_argument("path", type=Path)
    show.add_argument("--json", action="store_true", help="the fingerprint as JSON")
    show.set_defaults(func=run_show)


def _method(value: str) -> str:
    if not re.match(METHOD_PATTERN, value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: a public method name (predict, predict_proba, ...) or __call__")
    return value


def run_record(args: argparse.Namespace) -> int:
    from orchestrator.core import golden  # numpy and the frameworks: only for this command

    if not args.inputs.is_file():
        raise InvalidInput(f"{args.inputs}: no such inputs file")
    summary = golden.record(args.model, args.format, args.inputs, args.output,
                            signature=args.signature, method=args.method)
    if args.json:
        print(json.dumps({"path": str(summary.path), "samples": summary.samples,
                          "inputs": {k: list(v) for k, v in summary.inputs.items()},
                          "outputs": {k: list(v) for k, v in summary.outputs.items()},
                          "format": args.format, "signature": args.signature,
                          "method": args.method}, indent=2))
        return EXIT_OK
    arrays = ", ".join(f"{k} {list(v)}" for k, v in {**summary.inputs, **summary.outputs}.items())
    print(safe(f"wrote {summary.path}: {summary.samples} samples; {arrays}"))
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.is_file():
        raise InvalidInput(f"{path}: no such golden file")
    fp = read_fingerprint(path)
    meta = read_npz_text(path, GOLDEN_META_KEY)
    if args.json:
        print(json.dumps({"golden": json.loads(meta) if meta else None, "fingerprint": fp},
                         indent=2, sort_keys=True))
        return EXIT_OK
    print(safe(f"golden: {meta or 'no metadata'}"))
    if fp is None:
        print("fingerprint: none")
        return EXIT_OK
    frameworks = ", ".join(f"{k} {v}" for k, v in (fp.get("frameworks") or {}).items() if v)
    gpu = fp.get("gpu") or {}
    print(safe(f"python {fp.get('python')} on {fp.get('platform')}"))
    print(safe(f"frameworks: {frameworks or 'none'}"))
    print(safe(f"gpu: driver {gpu.get('driver') or 'none'}, "
               f"cuda {gpu.get('cuda_driver') or 'none'}, "
               f"devices {len(gpu.get('devices') or [])}"
               + (f" ({gpu['error']})" if gpu.get("error") else "")))
    print(safe(f"packages: {len(fp.get('packages') or {})}"))
    return EXIT_OK
