"""The tools bundle's receiver: sent as `python3 -E -S -c <this file> TOOLS_DIR DIGEST`, since
the bundle it writes holds every other host script (stdlib only, 3.9+, imports nothing of ours).

stdin: one JSON line {"files": [{"name", "sha", "size"}, ...]}, then each file's bytes back to
back in that order. The names and hashes must give DIGEST (the controller's shipping.bundle():
sha256 over "<name>\\0<sha256>\\n" in name order) before anything is written. Each file goes to a
temporary name and is hashed as it is written; only when every one hashes right are they renamed
into TOOLS_DIR, and then the `.complete` marker (holding DIGEST) is written last. A short stream,
a longer one or a file that hashes otherwise leaves nothing. A bundle already complete is left
as it is, unread. Prints one JSON object, as hostops.py does (exit 0, 1, or 2: bad arguments).
"""

import hashlib
import json
import os
import re
import sys

MARKER = ".complete"
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_FILES = 256
MAX_FILE_BYTES = 16 << 20
_CHUNK = 1 << 16


class Refused(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def _header(line, digest):
    try:
        files = json.loads(line)["files"]
    except (ValueError, KeyError, TypeError):
        raise Refused("bad-args", "the header is not {\"files\": [...]}") from None
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise Refused("bad-args", f"files must be a list of 1 to {MAX_FILES} entries")
    out, seen, whole = [], set(), hashlib.sha256()
    for f in files:
        if not (isinstance(f, dict) and isinstance(f.get("name"), str)
                and NAME_RE.match(f["name"]) and f["name"] != MARKER
                and f["name"] not in seen and isinstance(f.get("sha"), str)
                and HASH_RE.match(f["sha"]) and isinstance(f.get("size"), int)
                and not isinstance(f["size"], bool) and 0 <= f["size"] <= MAX_FILE_BYTES):
            raise Refused("bad-args", f"bad file entry {f!r}: want {{name, sha, size}}")
        seen.add(f["name"])
        out.append((f["name"], f["sha"], f["size"]))
    for name, sha, _ in sorted(out):
        whole.update(f"{name}\0{sha}\n".encode())
    if whole.hexdigest() != digest:
        raise Refused("hash-mismatch", f"the files announced make bundle {whole.hexdigest()}, "
                      f"not {digest}; nothing written")
    return out


def _receive(stream, part, name, sha, size):
    digest, left = hashlib.sha256(), size
    with open(part, "wb") as out:
        while left:
            chunk = stream.read(min(left, _CHUNK))
            if not chunk:
                raise Refused("missing-file", f"{name} never arrived whole: "
                              f"{size - left} of {size} bytes")
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha:
        raise Refused("hash-mismatch", f"{name} arrived as sha256 {digest.hexdigest()}, "
                      f"expected {sha}; nothing kept")


def _complete(tools, digest):
    try:
        with open(os.path.join(tools, MARKER), "rb") as f:
            return f.read(4096).decode("ascii", "replace").strip() == digest
    except OSError:
        return False


def receive(tools, digest, stream):
    """See the module docstring; the reply's fields besides "ok"."""
    if not (HASH_RE.match(digest) and os.path.isabs(tools)
            and os.path.basename(os.path.normpath(tools)) == digest):
        raise Refused("bad-args", f"usage: TOOLS_DIR (absolute, ending in DIGEST) DIGEST: "
                      f"{tools!r} {digest!r}")
    files = _header(stream.readline(1 << 20), digest)
    if _complete(tools, digest):
        return {"already": True, "files": 0, "bytes": 0}
    os.makedirs(tools, exist_ok=True)
    parts = []
    try:
        for name, sha, size in files:
            parts.append((os.path.join(tools, f".{name}.part-{os.getpid()}"), name))
            _receive(stream, parts[-1][0], name, sha, size)
        if stream.read(1):
            raise Refused("too-large", "the stream goes on past the files announced; "
                          "nothing kept")
    except BaseException:
        for part, _ in parts:
            if os.path.exists(part):
                os.unlink(part)
        raise
    for part, name in parts:
        os.replace(part, os.path.join(tools, name))
    marker = os.path.join(tools, f".{MARKER}.part-{os.getpid()}")
    with open(marker, "w") as f:
        f.write(digest + "\n")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tools)  # the files' names on disk before the marker's
    os.replace(marker, os.path.join(tools, MARKER))
    _fsync_dir(tools)
    return {"already": False, "files": len(files), "bytes": sum(f[2] for f in files)}


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv):
    try:
        if len(argv) != 2:
            raise Refused("bad-args", "usage: toolsreceive TOOLS_DIR DIGEST")
        reply, code = dict(receive(argv[0], argv[1], sys.stdin.buffer), ok=True), 0
    except Refused as exc:
        reply = {"ok": False, "kind": exc.kind, "error": str(exc)}
        code = 2 if exc.kind == "bad-args" else 1
    except OSError as exc:
        reply, code = {"ok": False, "kind": "os-error", "error": str(exc)}, 1
    sys.stdout.write(json.dumps(reply, sort_keys=True) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
