"""A host is untrusted input: what it replies is parsed with bounds and typed, and anything else
is a BadHostOutput naming the host and the op, never an internal error (issue 13 item 2).
The fleet-level consequence (the other hosts still go back) is in tests/test_rollout.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import hostjson
from orchestrator.core.facts import parse_facts
from orchestrator.core.gates import parse_result
from orchestrator.errors import BadHostOutput, OrchestratorError
from orchestrator.hosts import ops
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.opresults import parse_reply
from orchestrator.hosts.shipping import RemoteTools
from orchestrator.hosts.transport import CommandResult

FIXTURES = Path(__file__).parent / "fixtures" / "probe"


@pytest.mark.parametrize("text, why", [
    ('{"free_bytes": Infinity}', "non-finite number Infinity"),
    ('{"free_bytes": -Infinity}', "non-finite number -Infinity"),
    ('{"x": NaN}', "non-finite number NaN"),
    ('{"x": 1e999}', "non-finite number 1e999"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' * 40 + "1" + "}" * 40, "nested 40 levels deep"),
])
def test_host_json_refuses_what_would_crash_or_poison_the_controller(text: str,
                                                                     why: str) -> None:
    with pytest.raises(hostjson.HostJsonError, match=why):
        hostjson.loads(text)


def test_host_json_takes_ordinary_replies() -> None:
    assert hostjson.loads('{"ok": true, "n": [1, 2.5, -3], "s": "x"}') == {
        "ok": True, "n": [1, 2.5, -3], "s": "x"}


def test_an_op_reply_with_an_infinite_number_is_the_hosts_error() -> None:
    with pytest.raises(BadHostOutput, match=r"gpu-07: host sent an invalid reply to state: "
                                            r"non-finite number Infinity"):
        parse_reply("gpu-07", "state", 0, '{"ok": true, "generation": Infinity}\n', "")


def test_a_probe_with_infinite_free_bytes_is_the_hosts_error() -> None:
    facts = json.loads((FIXTURES / "h100.json").read_text())
    text = json.dumps(facts).replace(f'"free_bytes": {facts["disk"]["free_bytes"]}',
                                     '"free_bytes": Infinity')
    assert "Infinity" in text
    with pytest.raises(BadHostOutput, match="gpu-01: probe output is not JSON"):
        parse_facts("gpu-01", text)


def test_a_deeply_nested_warmup_result_is_the_hosts_error() -> None:
    with pytest.raises(BadHostOutput, match="nested too deeply"):
        parse_result("gpu-01", "[" * 50_000 + "]" * 50_000)


class Replying:
    """A transport whose host answers every command with one fixed stdout (the parse path of
    HostOps, with no SSH: what a real host sends is tested on the testbed)."""

    host = "gpu-07"

    def __init__(self, stdout: str) -> None:
        self.stdout = stdout

    def run(self, argv: Sequence[str], *, timeout: float | None = None,
            stdin: bytes | None = None, check: bool = True,
            max_output: int | None = None,
            on_stderr: Callable[[bytes], None] | None = None) -> CommandResult:
        return CommandResult(" ".join(argv), 0, self.stdout, "", 0.01)

    def put(self, data_or_local_path: bytes | Path, remote_path: str, mode: int = 0o644,
            progress: Callable[[int, int], None] | None = None) -> None:
        raise AssertionError("nothing is uploaded here")

    def get(self, remote_path: str, *, max_bytes: int | None = None,
            timeout: float | None = None) -> bytes:
        raise AssertionError("nothing is read here")

    @property
    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


def host_ops(stdout: str) -> HostOps:
    hostops = HostOps(Replying(stdout), "/srv/models")
    hostops._tools = RemoteTools("/srv/models", "x")  # no shipping: the argv names the script
    return hostops


SWITCHED = {"ok": True, "current": "r2", "before": "r1", "changed": True, "generation": 3,
            "previous_good": "r1"}


@pytest.mark.parametrize("reply, why", [
    ({k: v for k, v in SWITCHED.items() if k != "generation"}, "missing field 'generation'"),
    ({**SWITCHED, "generation": "three"}, "field 'generation' is not a whole number"),
    ({**SWITCHED, "generation": -1}, "field 'generation' is not a whole number"),
    ({**SWITCHED, "current": ["r2"]}, "field 'current' is not a string"),
    ({**SWITCHED, "changed": "yes"}, "field 'changed' is not true or false"),
])
def test_a_switch_reply_missing_or_mistyped_is_the_hosts_error(reply: dict[str, Any],
                                                               why: str) -> None:
    hostops = host_ops(json.dumps(reply) + "\n")
    with pytest.raises(BadHostOutput) as failed:
        hostops.switch("app", "r2", 3)
    assert str(failed.value).startswith("gpu-07: host sent an invalid reply to switch: ")
    assert why in str(failed.value)
    assert isinstance(failed.value, OrchestratorError)  # a host failure, not a bug


def test_a_batch_reply_is_checked_against_every_call_before_a_step_reads_it() -> None:
    good_state: dict[str, Any] = {
        "ok": True, "current": None, "current_resolves": False, "generation": 0,
        "previous_good": None, "bad": [], "history": [], "switching": None, "staging": [],
        "committed": []}
    missing = {"ok": True}  # wheels-missing without its "missing" list
    hostops = host_ops(json.dumps({"ok": True, "results": [good_state, missing]}) + "\n")
    with pytest.raises(BadHostOutput, match="invalid reply to wheels-missing: missing field "
                                            "'missing'"):
        hostops.batch([ops.state("app"), ops.wheels_missing(["a" * 64])])
    fewer = host_ops(json.dumps({"ok": True, "results": [good_state]}) + "\n")
    with pytest.raises(BadHostOutput):
        fewer.batch([ops.state("app"), ops.wheels_missing(["a" * 64])])
