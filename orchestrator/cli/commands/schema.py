"""`orchestrator schema`: the JSON Schema of the spec, generated from the pydantic models.

docs/spec.schema.json is this command's output (`orchestrator schema > docs/spec.schema.json`);
a test fails when the committed file is stale. Editors can validate specs with it (e.g. the YAML
language server's `# yaml-language-server: $schema=...`); it does not express the checks that
need the file system (paths inside the spec's folder, hashes), which `orchestrator validate` does.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

from orchestrator.cli import exits
from orchestrator.core.spec import Spec
from orchestrator.errors import EXIT_OK

EXITS = exits.table({EXIT_OK: "printed"})


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "schema", help="print the JSON Schema of the deployment spec",
        description="Print the JSON Schema of the deployment spec (docs/spec.schema.json).",
        **exits.help_args(EXITS))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(spec_json_schema(), indent=2))
    return EXIT_OK


def spec_json_schema() -> dict[str, Any]:
    return Spec.model_json_schema(mode="validation")


def schema_field_paths(schema: dict[str, Any]) -> list[str]:
    """Dotted paths of every field the schema describes ("verify.latency_ms.p50"), in order."""
    return list(_walk(schema, schema, ""))


def _walk(node: dict[str, Any], root: dict[str, Any], prefix: str) -> Iterator[str]:
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        for target in _objects(sub, root):
            yield from _walk(target, root, path)


def _objects(sub: dict[str, Any], root: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The object schemas a property refers to, directly or through anyOf (optional sections)."""
    for option in sub.get("anyOf", [sub]):
        ref = option.get("$ref")
        if ref is not None:
            yield root["$defs"][ref.rsplit("/", 1)[-1]]
