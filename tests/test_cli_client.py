"""The CLI as people and scripts meet it, without hosts: the client context file and its
precedence, shell completion run by a real bash, the live follow view, `validate --json`."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from orchestrator.cli import follow
from orchestrator.cli.app import build_parser, main
from orchestrator.cli.completion import bash, fish, tree, zsh
from orchestrator.cli.context import resolve
from orchestrator.errors import SpecError

# -- the context file ---------------------------------------------------------------------------


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp / "config"), "XDG_RUNTIME_DIR": str(tmp / "run"),
            **extra}


def _context(tmp: Path, text: str) -> Path:
    path = tmp / "config" / "orchestrator" / "context.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_without_anything_the_daemons_default_socket(tmp_path: Path) -> None:
    endpoint = resolve(env=_env(tmp_path))
    assert endpoint.socket == tmp_path / "run" / "orchestrator.sock" and endpoint.url is None


def test_flag_beats_env_beats_context_file(tmp_path: Path) -> None:
    _context(tmp_path, 'socket = "from-file.sock"\n')
    env = _env(tmp_path)
    assert resolve(env=env).socket == tmp_path / "config" / "orchestrator" / "from-file.sock"
    env["ORCHESTRATOR_SOCKET"] = "/env.sock"
    assert resolve(env=env).socket == Path("/env.sock")
    assert resolve(socket="/flag.sock", env=env).socket == Path("/flag.sock")


def test_a_url_level_wins_whole_and_a_higher_token_file_replaces_the_files(
        tmp_path: Path) -> None:
    _context(tmp_path, 'url = "http://127.0.0.1:8470/"\ntoken_file = "token"\n')
    (tmp_path / "config" / "orchestrator" / "token").write_text("s3cret-token-0123456789\n")
    endpoint = resolve(env=_env(tmp_path))
    assert endpoint.url == "http://127.0.0.1:8470" and endpoint.socket is None
    assert endpoint.token() == "s3cret-token-0123456789"
    (tmp_path / "other").write_text("another-token-0123456789")
    replaced = resolve(env=_env(tmp_path, ORCHESTRATOR_TOKEN_FILE=str(tmp_path / "other")))
    assert replaced.token() == "another-token-0123456789"
    # A socket flag is never paired with the file's URL.
    assert resolve(socket="/flag.sock", env=_env(tmp_path)).url is None


def test_daemon_config_gives_its_socket(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "orchestrator.toml").write_text('state_dir = "s"\nsocket = "x.sock"\n')
    _context(tmp_path, f'daemon_config = "{tmp_path / "d" / "orchestrator.toml"}"\n')
    assert resolve(env=_env(tmp_path)).socket == tmp_path / "d" / "x.sock"


@pytest.mark.parametrize(("text", "names"), [
    ('sockett = "x"\n', "sockett"),
    ('url = "ftp://x"\n', "url"),
    ('socket = "a"\nurl = "http://127.0.0.1:1"\n', "both a socket and a URL"),
    ('token_file = "t"\n', "token_file"),
    ("socket = \n", "context.toml"),
])
def test_a_bad_context_file_is_exit_2_naming_file_and_key(tmp_path: Path, text: str,
                                                          names: str) -> None:
    _context(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        resolve(env=_env(tmp_path))
    assert caught.value.exit_code == 2 and names in str(caught.value)


def test_the_cli_names_where_the_endpoint_came_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    context = _context(tmp_path, f'socket = "{tmp_path / "none.sock"}"\n')
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ORCHESTRATOR_SOCKET", raising=False)
    assert main(["status"]) == 4
    err = capsys.readouterr().err
    assert f"no orchestrator daemon answers on {tmp_path / 'none.sock'}" in err
    assert f"context file {context}" in err


# -- completion, run by bash itself ---------------------------------------------------------------


def _complete(script: Path, *words: str) -> list[str]:
    """What bash offers after `words` (the last one being completed)."""
    line = " ".join(f"'{w}'" for w in words)
    program = (f"source {script}; complete -p orchestrator; COMP_WORDS=(orchestrator {line}); "
               f"COMP_CWORD={len(words)}; _orchestrator; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    out = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True,
                         check=True, cwd=script.parent).stdout.splitlines()
    assert out[0] == "complete -o filenames -F _orchestrator orchestrator"
    return [word for word in out[1:] if word]  # printf prints one empty line for none


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "orchestrator.bash"
    path.write_text(bash(tree(build_parser(()))))
    (path.parent / "spec.yaml").write_text("")
    return path


def test_bash_completes_commands_flags_choices_and_files(script: Path) -> None:
    assert _complete(script, "") == sorted(_complete(script, ""))  # argparse's order: sorted
    assert {"submit", "wait", "completion", "golden", "testbed"} <= set(_complete(script, ""))
    assert _complete(script, "wa") == ["wait"]
    assert _complete(script, "golden", "") == ["record", "show"]
    assert _complete(script, "golden", "record", "--format", "") == \
        ["tensorflow-savedmodel", "keras", "joblib"]
    assert "--timeout" in _complete(script, "wait", "ID", "--")
    assert _complete(script, "completion", "") == ["bash", "fish", "zsh"]
    assert _complete(script, "deploy", "--inventory", "sp") == ["spec.yaml"]  # a file
    assert _complete(script, "validate", "sp") == ["spec.yaml"]  # a SPEC positional
    assert _complete(script, "wait", "--timeout", "") == []  # a free value: nothing offered
    assert "--json" in _complete(script, "testbed", "up", "--j")


def test_the_cli_prints_the_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    assert capsys.readouterr().out == bash(tree(build_parser(())))
    assert main(["completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#compdef orchestrator") and "bashcompinit" in out
    assert zsh(tree(build_parser(()))) == out
    assert main(["completion", "fish"]) == 0
    out = capsys.readouterr().out
    assert "complete -c orchestrator -n __fish_use_subcommand -a wait" in out
    assert ("complete -c orchestrator -n '__fish_seen_subcommand_from golden; and "
            "__fish_seen_subcommand_from record' -l format -r -a "
            "'tensorflow-savedmodel keras joblib'") in out
    assert fish(tree(build_parser(()))) == out


# -- the live follow view -------------------------------------------------------------------------


def _events() -> list[dict[str, object]]:
    t = 1_700_000_000.0
    return [
        {"event": "deployment", "status": "running", "ts": t, "seq": 1, "targets": ["a"],
         "from": None},
        {"event": "deployment.started", "status": "started", "release_id": "r-1", "ts": t},
        {"event": "host.started", "host": "gpu-01", "status": "started", "ts": t + 1},
        {"event": "step", "host": "gpu-01", "step": "install", "status": "running", "ts": t + 1},
        {"event": "step", "host": "gpu-02", "step": "install", "status": "running", "ts": t + 2},
        {"event": "step", "host": "gpu-01", "step": "install", "status": "ok", "ts": t + 31,
         "duration_ms": 30_000.0},
        {"event": "step", "host": "gpu-01", "step": "verify", "status": "ok", "ts": t + 41,
         "duration_ms": 10_000.0, "p50_ms": 1.25, "p95_ms": 2.5, "p99_ms": 3.75},
        {"event": "host.finished", "host": "gpu-01", "status": "succeeded", "ts": t + 42},
        {"event": "step", "host": "gpu-02", "step": "install", "status": "failed", "ts": t + 45,
         "duration_ms": 43_000.0, "error": "pip: no matching distribution"},
        {"event": "host.finished", "host": "gpu-02", "status": "failed", "ts": t + 46,
         "reason": "install failed"},
        {"event": "deployment.finished", "status": "failed", "ts": t + 46},
        {"event": "deployment", "status": "failed", "reason": "1 of 2 hosts failed",
         "ts": t + 47, "seq": 9},
    ]


def test_one_line_per_finished_step_and_a_block_with_elapsed_time() -> None:
    view = follow.FollowView()
    printed: list[str] = []
    events = _events()
    for event in events[:5]:
        printed += view.apply(event)
    assert [p.split(" ", 1)[1] for p in printed] == ['deployment running targets=["a"]']
    assert view.block(now=1_700_000_013.0) == ["  gpu-01  install      running 12.0 s",
                                                "  gpu-02  install      running 11.0 s"]
    for event in events[5:]:
        printed += view.apply(event)
    steps = [p.split(" ", 1)[1] for p in printed[1:]]
    assert steps == ["gpu-01 install ok 30.0 s", "gpu-01 verify ok 10.0 s",
                     "gpu-02 install failed 43.0 s pip: no matching distribution",
                     "deployment failed reason=1 of 2 hosts failed"]
    assert view.block(now=1_700_000_100.0) == ["  gpu-01  succeeded", "  gpu-02  failed"]


def test_the_ending_has_outcome_release_percentiles_duration_and_the_exit_code() -> None:
    view = follow.FollowView()
    for event in _events():
        view.apply(event)
    text = follow.ending(view, "d-1", "failed", "1 of 2 hosts failed", 3)
    assert text.splitlines()[1:] == [
        "HOST    OUTCOME    RELEASE  P50 MS  P95 MS  P99 MS  DURATION",
        "gpu-01  succeeded  r-1      1.25    2.50    3.75    41.0 s",
        "gpu-02  failed     r-1      -       -       -       44.0 s",
        "  gpu-02: install failed",
        "",
        "d-1: failed: 1 of 2 hosts failed (exit 3)"]


def test_many_hosts_are_counted_and_the_slowest_running_named() -> None:
    view = follow.FollowView(max_rows=3)
    for i in range(5):
        view.apply({"event": "step", "host": f"h{i}", "step": "install", "status": "running",
                    "ts": 100.0 + i})
    view.apply({"event": "host.finished", "host": "h4", "status": "failed", "ts": 110.0})
    assert view.block(now=120.0) == ["  5 hosts: 1 failed, 4 running",
                                     "  h0  install      running 20.0 s",
                                     "  h1  install      running 19.0 s",
                                     "  h2  install      running 18.0 s"]


def test_the_live_view_redraws_in_place_and_clears_at_the_end() -> None:
    out = io.StringIO()
    live = follow.LiveFollow(out, colour=False, tick=60)
    events = _events()
    live.show(events[3])
    live.show(events[5])
    live.close()
    text = out.getvalue()
    assert text.count("\x1b[1F\x1b[J") == 2  # redrawn once, cleared once
    assert "gpu-01 install ok 30.0 s\n" in text


# -- validate --json ------------------------------------------------------------------------------


def test_validate_json_of_a_spec_that_does_not_load(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("apiVersion: orchestrator/v1\nkind: Deployment\nname: x\nbogus: 1\n")
    assert main(["validate", str(spec), "--json"]) == 2
    body = json.loads(capsys.readouterr().out)
    assert body["valid"] is False and body["summary"] is None and body["errors"]
    assert set(body["errors"][0]) == {"message", "file", "line", "field"}


def test_hash_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w").write_bytes(b"w")
    assert main(["hash", str(tmp_path / "m"), str(tmp_path / "m" / "w"), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [(b["kind"], len(b["sha256"])) for b in body] == [("directory", 64), ("file", 64)]
