"""Host-side audit of an app's current release: are its files still what was deployed?

Shipped to a host and run by its own `python3` (3.9+, stdlib only):

    python3 audit.py --json-args -        (stdin: {"root": <deploy_root>, "app": <name>})

It prints exactly one JSON object on stdout and changes nothing on the host:

    {"ok": true, "app", "release_id", "release_path", "manifest": {...manifest.json...},
     "model": {"ok", "expected", "actual", "kind": "file"|"tree"|"missing", "files": {rel: sha}},
     "venv": {"ok", "path", "packages", "files_checked", "changed": [{"path", "package"}],
              "missing": [{"path", "package"}], "truncated": bool, "error": str | null}
              | null (an image release)}
    {"ok": false, "error": "<one line>", "kind": "no-current" | "bad-manifest" | "bad-args" | ...}

The model is checked against the manifest's `model_sha256`: sha256 of the file when the release's
model/ holds one file (a file model), else the tree hash of model/ (a directory model; the same
definition as orchestrator/core/hashing.py). Every model file's own sha256 is reported so the
controller can name which file changed. The venv is checked against each installed package's
RECORD (PEP 376/627: `path,sha256=<urlsafe base64, unpadded>,size`): each changed or missing file
is named by its path relative to site-packages. Entries without a hash (RECORD itself, .pyc
files written after install) are skipped, as are files no RECORD lists.
"""

from __future__ import annotations

import base64
import csv
import glob
import hashlib
import json
import os
import sys
from typing import Any

# contenthash is shipped beside this file (the tools bundle is flat). Run as a script, this
# directory is sys.path[0] already; loaded by path (tests) it is not, so it goes first here.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import hostlayout  # noqa: E402
from contenthash import NAME_RE, sha256_file, tree_hash_of_lines, tree_line  # noqa: E402

#: Listed by path at most this many each of changed/missing (the counts are always whole).
MAX_LISTED = 100


class AuditError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def _file_hashes(directory):
    """{relative posix path: sha256 hex} of every regular file under directory."""
    out = {}
    for dirpath, _dirnames, filenames in os.walk(directory):
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, directory).replace(os.sep, "/")
            if os.path.isfile(full) and not os.path.islink(full):
                out[rel] = sha256_file(full)
            else:
                out[rel] = "not-a-regular-file"
    return out


def tree_hash_of(files):
    """The tree hash (contenthash, shared with the controller) over already computed per-file
    hashes."""
    return tree_hash_of_lines([tree_line(sha, rel) for rel, sha in files.items()])


def audit_model(release, expected):
    model_dir = hostlayout.model_dir(release)
    if not os.path.isdir(model_dir):
        return {"ok": False, "expected": expected, "actual": None, "kind": "missing",
                "files": {}}
    files = _file_hashes(model_dir)
    # A file model is staged as model/<name>: its hash is the file's own sha256.
    single = next(iter(files.values())) if len(files) == 1 else None
    if single == expected:
        return {"ok": True, "expected": expected, "actual": single, "kind": "file",
                "files": files}
    tree = tree_hash_of(files) if files else None
    if tree == expected:
        return {"ok": True, "expected": expected, "actual": tree, "kind": "tree", "files": files}
    return {"ok": False, "expected": expected, "actual": single or tree,
            "kind": "file" if single else "tree", "files": files}


def _record_digest(field):
    """'sha256=<urlsafe b64>' -> (algorithm, raw digest bytes), or None when unusable."""
    algo, _, value = field.partition("=")
    if not value or algo not in hashlib.algorithms_guaranteed:
        return None
    try:
        return algo, base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        return None


def _check_record(site, record_path, package, out):
    with open(record_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    for row in rows:
        if len(row) < 2 or not row[0]:
            continue
        wanted = _record_digest(row[1])
        if wanted is None:
            continue
        rel = row[0]
        full = os.path.normpath(os.path.join(site, rel))
        out["files_checked"] += 1
        try:
            digest = hashlib.new(wanted[0])
            with open(full, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except FileNotFoundError:
            _note(out, "missing", rel, package)
            continue
        except IsADirectoryError:
            _note(out, "changed", rel, package)
            continue
        if digest.digest() != wanted[1]:
            _note(out, "changed", rel, package)


def _note(out, key, rel, package):
    out[f"{key}_count"] += 1
    if len(out[key]) < MAX_LISTED:
        out[key].append({"path": rel, "package": package})
    else:
        out["truncated"] = True


def audit_venv(release):
    link = hostlayout.release_venv(release)
    out: dict[str, Any] = {
        "ok": False, "path": None, "packages": 0, "files_checked": 0, "changed": [],
        "missing": [], "changed_count": 0, "missing_count": 0, "truncated": False, "error": None}
    if not os.path.isdir(link):
        out["error"] = f"the release has no venv: {link} is missing"
        return out
    venv = os.path.realpath(link)
    out["path"] = venv
    sites = sorted(glob.glob(os.path.join(venv, "lib", "python*", "site-packages")))
    if not sites:
        out["error"] = f"no site-packages under {venv}"
        return out
    for site in sites:
        for record in sorted(glob.glob(os.path.join(site, "*.dist-info", "RECORD"))):
            package = os.path.basename(os.path.dirname(record))[: -len(".dist-info")]
            out["packages"] += 1
            _check_record(site, record, package, out)
    out["ok"] = out["changed_count"] == 0 and out["missing_count"] == 0
    return out


def audit(args):
    root, app = args.get("root"), args.get("app")
    if not isinstance(root, str) or not os.path.isabs(root):
        raise AuditError("bad-args", f"root must be an absolute path: {root!r}")
    if not isinstance(app, str) or not NAME_RE.match(app):
        raise AuditError("bad-args", f"invalid app: {app!r}")
    current = hostlayout.current_link(hostlayout.app_dir(root, app))
    if not os.path.islink(current) or not os.path.isdir(current):
        raise AuditError("no-current", f"app {app} has no current release on this host")
    release = os.path.realpath(current)
    try:
        with open(hostlayout.manifest(release), "rb") as fh:
            manifest = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise AuditError("bad-manifest", f"{release}/manifest.json unreadable: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model_sha256"), str):
        raise AuditError("bad-manifest", f"{release}/manifest.json has no model_sha256")
    return {"app": app, "release_id": os.path.basename(release), "release_path": release,
            "manifest": manifest, "model": audit_model(release, manifest["model_sha256"]),
            # An image release has no venv: its environment is the image, which its re-run
            # warmup exercises through the release's launcher (deploy/environments/image.py).
            "venv": None if isinstance(manifest.get("image"), dict) else audit_venv(release)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] != ["--json-args"] or len(argv) != 2:
            raise AuditError("bad-args", "usage: audit.py --json-args JSON|-")
        args = json.loads(sys.stdin.read() if argv[1] == "-" else argv[1])
        if not isinstance(args, dict):
            raise AuditError("bad-args", "--json-args must be a JSON object")
        result, code = dict(audit(args), ok=True), 0
    except AuditError as exc:
        result, code = {"ok": False, "error": str(exc), "kind": exc.kind}, 1
    except ValueError as exc:
        result, code = {"ok": False, "error": f"arguments are not JSON: {exc}",
                        "kind": "bad-args"}, 2
    except OSError as exc:
        result, code = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                        "kind": "os-error"}, 1
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
