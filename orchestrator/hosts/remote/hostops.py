"""Host-side release operations: staging, wheel cache, venvs, atomic switch, rollback, prune.

Shipped to a host and run by its own `python3` (3.9+, stdlib only):

    python3 hostops.py <op> --json-args '<json object>'      (or --json-args - : read from stdin)

It prints exactly one JSON object on stdout: {"ok": true, ...} and exit 0, or
{"ok": false, "error": "<one line>", "kind": "<stable word>", ...} and exit 1 (2 for bad arguments).
Every op is idempotent: re-run after a crash it finds its own half-done work and finishes or
cleans it. Every op takes "root" (the host's deploy_root); app ops take "app". A daemon's
call also carries "fence" ({deployment, token}, its lease): an op that changes an app's
releases then first checks the app's deploy lock is still that deployment's under no later
token (hostops_host.check_fence; kind "fenced"), inherited by each op of a batch.

This file is the dispatch (and `probe`, `batch`); the ops live in modules shipped beside it in the
same flat tools bundle, each stdlib only: hostlayout (the paths), contenthash (file and tree
hashes, names), hostops_host (free-bytes, the deploy lock, audit, kill-group), hostops_fs (OpError,
argument checks, atomic writes, flocks, tree hash), hostops_releases (app state, switch, rollback,
the `releases` and `state` views), hostops_stage, hostops_venvs (wheel cache, venvs),
hostops_receive (wheels and model files streamed on stdin, hashed on arrival), hostops_fetch
(wheels pulled from an operator's mirror), hostops_pylock (PEP 751 reading), hostops_health
(a service's health check), hostops_prune and hostops_warmup (the warmup runner, for the
agent).
Each hostops_* module lists its ops in its own `OPS` (and in `STREAMING` those whose stdin
carries data after the JSON line); this file gathers them (a new module's ops need no edit).

Layout under root (DESIGN.md "Host layout"):
    <app>/releases/<id>.staging/   being staged: model/, requirements.lock, .owner, .verified
    <app>/releases/<id>/           committed: model/, requirements.lock, manifest.json, venv -> ...
    <app>/current -> releases/<id> replaced only by rename of a new symlink
    <app>/state.json               {"generation", "generation_release" (the switch that
                                   generation made), "history" (ids that were current, oldest
                                   first), "bad", "switching"}; `current` itself is the truth
    <app>/.lock                    flock held by every op that changes the app (briefly)
    .orchestrator/venvs/<env_hash>/  with .orchestrator-complete.json written last
    .orchestrator/venvs/<env_hash>.lock  flock: one builder at a time; a second one WAITS (up
                                   to "wait_s") and then reuses the finished venv
    .orchestrator/wheels/<sha256>.whl  uploads land in <sha256>.whl.part, then wheels-verify
    .orchestrator/links/<sha256>/<real filename>  -> the cached wheel: the installers' find-links
    .orchestrator/uv-cache/        uv's cache (venvs hardlink into it: no second copy on disk)

Ops (arguments besides "root"; what a success adds; failure kinds worth branching on):
    stage-begin         app, release_id, [deployment, force, lock_sha256] -> path, model_path,
                        state ("staging"|"committed"), resumed, free_bytes, lock_present (the
                        lock with that sha256 is in place, copied from a release that had
                        it: no upload needed);  busy
    stage-verify-model  app, release_id, sha256, [path="model"] -> hash_kind;  hash-mismatch
    stage-commit        app, release_id -> path, already;  not-verified
    write-file          app, release_id, path (relative), data (base64) -> path, written
                        (false for a committed release: never changed), bytes
    write-manifest      app, release_id, manifest (object) -> path
    abort-stage         app, release_id -> removed;  is-current, is-rollback-target
    wheels-missing      shas -> missing, present
    wheels-verify       shas -> verified;  wheel-hash-mismatch (bad), missing-wheel
    wheels-receive      files [{sha, size}] on its stdin's first line, then their bytes
                        (hostops_receive) -> verified;  wheel-hash-mismatch, missing-wheel
    model-receive       app, release_id, files [{path, size}] likewise, into the staged
                        release -> files, bytes;  not-found, missing-file
    file-receive        what ("uv"|"bytecode"), sha, size on its stdin's first line, then
                        the bytes: kept at the content address only if they hash to sha
                        -> path, bytes;  hash-mismatch, missing-file, too-large
    wheels-fetch        url, layout, wheels [{sha, filename, size}] (hostops_fetch: the host
                        downloads from the mirror) -> verified, bytes;  mirror-unreachable,
                        wheel-hash-mismatch
    venv-ensure         env_hash, lock (abs path: a requirements lock, or a PEP 751 pylock
                        the installers get as a hash-pinned requirements file derived from
                        the wheels, each checked against it), wheels {sha: filename},
                        [installer="uv"|"pip",
                        uv, python, compile_bytecode=false, wait_s, timeout_s, app+release_id
                        (links <release>/venv), need_uv, want_bytecode + bytecode {sha256,
                        size} (hostops_bytecode)] -> path, reused, installer, fallback_reason,
                        freeze, durations, waited_s, bytecode;  missing-wheel,
                        install-failed (the installer's own message, or the pylock check's:
                        package and both hashes), bad-lock (a pylock without packages),
                        check-failed, busy, uv-missing (need_uv: a build is needed
                        and the "uv" file is not there: upload it and call again),
                        bytecode-missing (likewise for the archive), bad-bytecode
    switch              app, release_id, generation -> current, before, changed, generation,
                        previous_good;  stale-generation, bad-release, not-found
    rollback            app, [to="previous"|id, from, generation, mark_bad, forget] -> as
                        switch, and marked_bad, service (the `service` of the now current
                        release's manifest: restart and check it so); every check before any
                        write;  no-rollback-target, bad-release, not-found, bad-args
    mark-bad            app, release_id -> bad
    unmark-bad          app, release_id -> bad, changed (false: it was not marked)
    releases            app -> releases [{release_id, state, path, created, env_hash,
                        manifest}], current, previous_good
    state               app -> current, current_resolves, generation, previous_good, bad,
                        history, switching, staging, committed
    prune               app, [keep=5, grace_s=600] -> removed_releases, removed_venvs,
                        removed_wheels, uv_cache_cleared, kept
    probe               [engines=true] -> facts (probe.py's object, from the same bundle;
                        without the container engines, "engines": null, when false)
    free-bytes          [path=root] -> free_bytes (statvfs: what an unprivileged user may use)
    file-exists         path -> exists (a regular file is there)
    deploy-lock         app, owner {deployment, started}, [force] -> lock, resumed;  busy
                        (with the holder's "owner"): <app>/.deploy-lock/owner.json, by mkdir
    deploy-unlock       app, deployment -> released (only the holder's lock is removed)
    audit               app -> audit.py's report of the current release;  no-current,
                        bad-manifest
    kill-group          pid_file, [remove] -> killed (SIGKILL to the group in pid_file; the
                        files are removed; needs no "root")
    health              app, mode (url|command), target, budget -> healthy, attempts, error
                        (health.py's check, in this process: hostops_health)
    warmup-run          python, request, kill_after_s, [visible_devices], [before (ops
                        run first as a batch: the request file and the golden written in
                        the same request)] -> exit_code, stdout, stderr, killed, [before:
                        their replies] (warmup.py run and cleaned up after, its progress
                        relayed by the agent: hostops_warmup);  output-too-large
    batch               ops [{op, args}] -> results (each op's reply), in order, stopping at
                        the first failure (then the batch fails with its kind, error,
                        failed_op and the results so far): one process for a step's calls

The host agent, `hostops.py serve DIGEST` (a mode, not an op): one process for a whole
deployment on this host, on one SSH channel. It first checks that its own bundle is complete
(the `.complete` marker beside it holds DIGEST) and says so in one line, then reads requests,
one JSON object a line on stdin ({"op", "args"}; any op but the streaming ones), and answers
each with one line, `<exit code> <the reply the op alone would print>`, until stdin ends; an
op of `RELAYING` (`warmup-run`, hostops_warmup) may send lines of its own before that reply
(the warmup runner's `orchestrator-progress ...` lines, never starting with a digit). The
ops' own children (installers) get /dev/null as stdin and stderr as stdout: the channel's two
streams carry requests and replies only.
"""

from __future__ import annotations

import errno
import json
import os
import sys

# hashlib, shutil, subprocess and tempfile are imported where they are used (in the hostops_*
# modules): most calls need none of them, and the interpreter's start is most of what a small
# op costs on a busy host.

# The ops live in the hostops_* modules beside this file (the tools bundle is flat). Run as a
# script, this directory is sys.path[0] already; loaded by path (tests: spec_from_file_location)
# it is not, so it goes first here, before the imports below.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import importlib  # noqa: E402

from hostops_fs import OpError, checked_arg, root_arg  # noqa: E402
from hostops_host import check_fence  # noqa: E402

# ---------------------------------------------------------------- probe and batch


def op_probe(args):
    """The host's facts (`probe.py`, shipped in the same bundle, run in this process): the
    probe step then costs one interpreter start with `state` in the same batch, not two."""
    root = root_arg(args)
    engines = args.get("engines", True)
    if not isinstance(engines, bool):
        raise OpError("bad-args", "engines must be true or false")
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")
    if not os.path.isfile(path):
        raise OpError("not-found", f"probe.py is not beside hostops.py: {path}")
    spec = importlib.util.spec_from_file_location("orchestrator_probe", path)
    assert spec is not None and spec.loader is not None  # a .py file that exists
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)  # its own directory is sys.path[0]: it finds pynvml there
    return {"facts": probe.collect(root, engines)}


#: A batch may not nest (one level keeps the reply's shape, and its failure, obvious).
MAX_BATCH = 32


def op_batch(args):
    """Run several ops in order in this one process; stop at the first that fails.

    "ops" is a list of {"op": name, "args": {...}} ("root" is inherited). The reply's "results"
    holds each op's reply, as the op alone would give it (with "ok"), up to and including a
    failed one; the batch itself is ok only when all were, and then carries the failed op's
    "error" and "kind" and its name as "failed_op"."""
    root = root_arg(args)
    calls = checked_arg(args, "ops")
    if not isinstance(calls, list) or not 0 < len(calls) <= MAX_BATCH:
        raise OpError("bad-args", f"ops must be a list of 1 to {MAX_BATCH} calls")
    for call in calls:
        if not (isinstance(call, dict) and call.get("op") in OPS and call["op"] != "batch"
                and call["op"] not in STREAMING and call["op"] not in RELAYING
                and isinstance(call.get("args", {}), dict)):
            raise OpError("bad-args", f"bad batch entry: {call!r}")
    results = []
    for call in calls:
        inherited = {"root": root, **({"fence": args["fence"]} if "fence" in args else {})}
        reply, _code = _run_op(call["op"], dict(inherited, **call.get("args", {})))
        results.append(reply)
        if not reply["ok"]:
            raise OpError(reply["kind"], reply["error"], results=results, failed_op=call["op"])
    return {"results": results}


# ---------------------------------------------------------------- main

def _gather_ops():
    """probe and batch (here), and every op of the hostops_* modules beside this file, each of
    which lists its own in `OPS`: a new kind of host work is a new module, no edit here. A name
    offered twice is a packaging bug, refused at once rather than one silently winning."""
    found = {"probe": op_probe, "batch": op_batch}
    for name in sorted(os.listdir(_HERE)):
        if not (name.startswith("hostops_") and name.endswith(".py")):
            continue
        module = importlib.import_module(name[:-3])
        for op, fn in getattr(module, "OPS", {}).items():
            if op in found:
                raise RuntimeError(f"host op {op!r} is offered twice ({name})")
            found[op] = fn
        STREAMING.update(getattr(module, "STREAMING", ()))
        RELAYING.update(getattr(module, "RELAYING", ()))
    return found


#: Ops whose stdin is one line of JSON arguments followed by data they read themselves.
STREAMING: set[str] = set()
#: Ops that take a second argument, `relay(line)`, for lines they send while they run (the
#: warmup runner's progress): the agent writes them on its channel before the reply.
RELAYING: set[str] = set()
OPS = _gather_ops()


def _parse(argv):
    """<op> [--json-args JSON|-] (argparse costs more to import than most ops take to run)."""
    if not argv or argv[0] not in OPS:
        raise OpError("bad-args", f"usage: hostops.py <op> [--json-args JSON|-]; op is one of "
                      f"{', '.join(sorted(OPS))}; got {argv[:1]!r}")
    rest, raw = argv[1:], "{}"
    if len(rest) == 2 and rest[0] == "--json-args":
        raw = rest[1]
    elif len(rest) == 1 and rest[0].startswith("--json-args="):
        raw = rest[0].partition("=")[2]
    elif rest:
        raise OpError("bad-args", f"unrecognized arguments: {' '.join(rest)}")
    try:
        if raw != "-":
            args = json.loads(raw)
        elif argv[0] in STREAMING:  # its data follows the line: leave it unread
            args = json.loads(sys.stdin.buffer.readline())
        else:
            args = json.loads(sys.stdin.read())
    except ValueError as exc:
        raise OpError("bad-args", f"--json-args is not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise OpError("bad-args", "--json-args must be a JSON object")
    return argv[0], args


def _run_op(op, args, relay=None):
    """One op's reply (with "ok") and exit code: 0, 1 for a failure, 2 for bad arguments."""
    try:
        check_fence(op, args)
        if op not in RELAYING:
            return dict(OPS[op](args), ok=True), 0
        before = _before(args)
        reply = dict(OPS[op](args, relay), ok=True)
        if before is not None:
            reply["before"] = before
        return reply, 0
    except OpError as exc:
        result = dict(exc.extra, ok=False, error=str(exc), kind=exc.kind)
        return result, 2 if exc.kind == "bad-args" else 1
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "OSError")
        return {"ok": False, "error": f"{name}: {exc}", "kind": "os-error", "errno": name}, 1
    except Exception as exc:  # a bug in this script: still one JSON object, traceback on stderr
        import traceback

        traceback.print_exc()
        return {"ok": False, "error": repr(exc), "kind": "internal"}, 1


def _before(args):
    """A relaying op's "before": ops run first, as a `batch` (root and fence inherited), in the
    same request: verify's golden file and runner request go with the runner's start. Their
    replies, or the batch's failure (then the op itself does not run)."""
    calls = args.pop("before", None)
    if calls is None:
        return None
    inherited = {k: args[k] for k in ("root", "fence") if k in args}
    return op_batch(dict(inherited, ops=calls))["results"]


#: A request line's bound: a step's batch carries a small model's bytes in base64 (write-file).
MAX_REQUEST = 64 << 20
MARKER = ".complete"


def _hello(argv):
    """The agent's first line: whether the bundle it runs from is the complete one the
    controller means (the marker is written last by the upload): (reply, exit code)."""
    if len(argv) != 1:
        return {"ok": False, "kind": "bad-args", "error": "usage: hostops.py serve DIGEST"}, 2
    try:
        with open(os.path.join(_HERE, MARKER), "rb") as f:
            found = f.read(4096).decode("ascii", "replace").strip()
    except OSError:
        found = ""
    if found != argv[0]:
        return {"ok": False, "kind": "not-found",
                "error": f"the tools bundle {_HERE} is not complete"}, 1
    return {"ok": True, "agent": 1, "pid": os.getpid()}, 0


def _request(line):
    """One request line as (op, args), or an OpError: a request the one-shot form would refuse
    (unknown op, streaming op, not an object) is refused the same way."""
    try:
        request = json.loads(line)
    except ValueError as exc:
        raise OpError("bad-args", f"request is not JSON: {exc}") from None
    if not (isinstance(request, dict) and request.get("op") in OPS
            and request["op"] not in STREAMING and isinstance(request.get("args"), dict)):
        raise OpError("bad-args", "a request is {\"op\": <a non-streaming op>, \"args\": {...}}")
    return request["op"], request["args"]


def serve(argv):
    """The agent's loop (module docstring): one reply line per request line, until EOF."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    # What the ops start must not read our requests nor write into our replies.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin, sys.stdout = open(os.devnull), sys.stderr  # noqa: SIM115 - for the process' life

    def answer(result, code):
        replies.write(f"{code} {json.dumps(result, sort_keys=True)}\n".encode())
        replies.flush()

    def relay(line):  # a line an op sends while it runs (never starts with a digit)
        replies.write(line)
        replies.flush()

    result, code = _hello(argv)
    answer(result, code)
    if code != 0:
        return code
    while True:
        line = requests.readline(MAX_REQUEST + 1)
        if not line:
            return 0  # the controller's pipeline ended: so does the agent
        if len(line) > MAX_REQUEST or not line.endswith(b"\n"):
            answer({"ok": False, "kind": "bad-args", "error": "request line too long"}, 2)
            return 2  # the stream is out of step: end rather than guess
        try:
            op, args = _request(line)
        except OpError as exc:
            answer(dict(exc.extra, ok=False, error=str(exc), kind=exc.kind), 2)
            continue
        answer(*_run_op(op, args, relay))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    try:
        op, args = _parse(argv)
        result, code = _run_op(op, args)
    except OpError as exc:
        result, code = dict(exc.extra, ok=False, error=str(exc), kind=exc.kind), 2
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
