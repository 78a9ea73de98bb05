"""The testbed against the real things: sshd processes in /proc, the real `ssh` client with strict
host-key checking, the fake NVML/CUDA libraries loaded by the hosts' own python3 through ctypes,
and the real pynvml loading the fake library."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.inventory import load_inventory
from orchestrator.errors import InvalidInput, TestbedError
from orchestrator.testbed import PROFILES, Testbed, TestbedHost, fakelibs, profiles
from orchestrator.testbed import sshd as sshd_mod
from orchestrator.testbed.sshd import starttime

GIB = 1 << 30

# Runs on a host under /usr/bin/python3 with the session's LD_LIBRARY_PATH: calls the C functions.
NVML_SCRIPT = r"""
import ctypes, json, os
out = {"env_lib_dir": os.environ.get("LD_LIBRARY_PATH")}
try:
    lib = ctypes.CDLL("libnvidia-ml.so.1")
except OSError as exc:
    out["load_error"] = str(exc)
else:
    lib.nvmlErrorString.restype = ctypes.c_char_p
    rc = lib.nvmlInitWithFlags(0)
    out["init"] = rc
    out["init_message"] = lib.nvmlErrorString(rc).decode()
    if rc == 0:
        buf = ctypes.create_string_buffer(96)
        lib.nvmlSystemGetDriverVersion(buf, 80); out["driver"] = buf.value.decode()
        v = ctypes.c_int(); lib.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(v))
        out["cuda"] = v.value
        n = ctypes.c_uint(); lib.nvmlDeviceGetCount_v2(ctypes.byref(n))
        out["gpus"] = []
        for i in range(n.value):
            h = ctypes.c_void_p(); lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h))
            g = {}
            lib.nvmlDeviceGetName(h, buf, 96); g["name"] = buf.value.decode()
            lib.nvmlDeviceGetUUID(h, buf, 96); g["uuid"] = buf.value.decode()
            mem = (ctypes.c_ulonglong * 3)(); lib.nvmlDeviceGetMemoryInfo(h, mem)
            g["total"], g["free"] = mem[0], mem[1]
            ma, mi = ctypes.c_int(), ctypes.c_int()
            lib.nvmlDeviceGetCudaComputeCapability(h, ctypes.byref(ma), ctypes.byref(mi))
            g["cc"] = [ma.value, mi.value]
            out["gpus"].append(g)
        lib.nvmlShutdown()
libs = {}
for soname, fn, restype in (("libcudart.so.12", "cudaRuntimeGetVersion", None),
                            ("libcudart.so.11.0", "cudaRuntimeGetVersion", None),
                            ("libcudnn.so.9", "cudnnGetVersion", ctypes.c_size_t),
                            ("libcudnn.so.8", "cudnnGetVersion", ctypes.c_size_t)):
    try:
        l = ctypes.CDLL(soname)
    except OSError:
        continue
    if restype is None:
        v = ctypes.c_int(); getattr(l, fn)(ctypes.byref(v)); libs[soname] = v.value
    else:
        f = getattr(l, fn); f.restype = restype; libs[soname] = f()
out["libs"] = libs
print(json.dumps(out))
"""

EXPECTED: dict[str, dict[str, Any]] = {
    "h100": {"init": 0, "driver": "550.54.15", "cuda": 12040,
             "gpu": ("NVIDIA H100 80GB HBM3", [9, 0], 80 * GIB),
             "libs": {"libcudart.so.12": 12050, "libcudnn.so.9": 90300}},
    "t4": {"init": 0, "driver": "550.54.15", "cuda": 12040, "gpu": ("Tesla T4", [7, 5], 16 * GIB),
           "libs": {"libcudart.so.12": 12020, "libcudnn.so.8": 8907}},
    "old-driver": {"init": 0, "driver": "470.82.01", "cuda": 11040,
                   "gpu": ("Tesla V100-SXM2-16GB", [7, 0], 16 * GIB),
                   "libs": {"libcudart.so.11.0": 11040, "libcudnn.so.8": 8204}},
    "no-driver": {"init": 9, "init_message": "Driver Not Loaded"},
    "mismatch": {"init": 18, "init_message": "Driver/library version mismatch"},
}


def run_on(tb: Testbed, host: TestbedHost, script: str = NVML_SCRIPT) -> dict[str, Any]:
    proc = subprocess.run([*tb.ssh_argv(host), "python3", "-"], input=script,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def run_on_all(tb: Testbed, hosts: list[TestbedHost]) -> dict[str, dict[str, Any]]:
    """One ssh per host, all at once (2 shared cores: sequential would be slower, not safer)."""
    procs = {h.name: subprocess.Popen([*tb.ssh_argv(h), "python3", "-"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for h in hosts}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(NVML_SCRIPT, timeout=60)
        assert proc.returncode == 0, f"{name}: {stderr}"
        out[name] = json.loads(stdout)
    return out


def sshd_pids_for(root: Path) -> list[int]:
    """Every live sshd whose command line names a config under `root`."""
    return [p for p in pids_with(str(root)) if "sshd" in _cmdline(p)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def pids_with(text: str) -> list[int]:
    """Every live (non-zombie) process whose command line contains `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z" and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


# ---- lifecycle ----


def test_cli_up_then_down_leaves_no_sshd(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "orchestrator", "testbed"]
    up = subprocess.run([*cli, "up", "--hosts", "3", "--profile", "t4", "--dir", str(tmp_path)],
                        capture_output=True, text=True, timeout=60, check=False)
    assert up.returncode == 0, up.stderr
    tb = Testbed.load(tmp_path)
    assert [h.name for h in tb.hosts] == ["tb-01", "tb-02", "tb-03"]
    assert [h.address for h in tb.hosts] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert sorted(sshd_pids_for(tmp_path)) == sorted(h.pid for h in tb.hosts)
    assert all(h.deploy_root.is_dir() for h in tb.hosts)
    assert oct(tb.identity_path.stat().st_mode & 0o777) == "0o600"

    down = subprocess.run([*cli, "down", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert down.returncode == 0, down.stderr
    assert "stopped 3" in down.stdout
    assert sshd_pids_for(tmp_path) == []
    assert not (tmp_path / "state.json").exists()
    assert Testbed.down(tmp_path) == 0


def test_down_kills_the_sessions_too(tmp_path: Path) -> None:
    """Sessions running and sessions still being set up: none survives `down`."""
    marker = f"tb-marker-{os.getpid()}-{time.monotonic_ns()}"
    tb = Testbed.up(tmp_path, 1)
    clients: list[subprocess.Popen[bytes]] = []

    def remote() -> list[int]:  # the local ssh clients carry the marker too
        return [p for p in pids_with(marker) if p not in {c.pid for c in clients}]

    def connect() -> None:
        clients.append(subprocess.Popen(
            [*tb.ssh_argv(tb.hosts[0]), "exec", "python3", "-c",
             "'import time; time.sleep(300)'", marker],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        connect()
        deadline = time.monotonic() + 30
        while not remote() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert remote()
        for _ in range(3):
            connect()  # racing `down`: mid-handshake or mid-fork when it strikes
        time.sleep(0.1)
    finally:
        assert Testbed.down(tmp_path) == 1
    for client in clients:
        client.wait(timeout=20)
    assert remote() == []
    assert sshd_pids_for(tmp_path) == []


def test_down_never_kills_a_reused_pid(tmp_path: Path) -> None:
    tb = Testbed.up(tmp_path, 1)
    real_pid = tb.hosts[0].pid
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        # Make the state claim the stranger's pid, as after a reboot that recycled it.
        state = json.loads((tmp_path / "state.json").read_text())
        state["hosts"][0]["pid"], state["hosts"][0]["starttime"] = stranger.pid, 0
        (tmp_path / "state.json").write_text(json.dumps(state))
        assert Testbed.down(tmp_path) == 0
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
        os.kill(real_pid, 15)
        os.waitpid(real_pid, 0)


def test_up_on_a_live_dir_refuses(testbed: Testbed) -> None:
    with pytest.raises(TestbedError, match="already up"):
        Testbed.up(testbed.dir, 1)
    assert all(starttime(h.pid) == h.starttime for h in testbed.hosts)


def test_missing_sshd_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match="openssh-server"):
        Testbed.up(tmp_path, 1, sshd_path=tmp_path / "no-such-sshd")
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "testbed", "up", "--hosts", "1",
                           "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ORCHESTRATOR_SSHD": str(tmp_path / "nope")},
                          check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: sshd not found at {tmp_path / 'nope'}: install the Debian package "
        "openssh-server (apt-get install openssh-server)"
    ]


def test_unknown_profile_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown testbed profile 'a100'"):
        Testbed.up(tmp_path, 1, ["a100"])


# ---- what clients see ----


def test_inventory_is_loadable_and_complete(testbed: Testbed) -> None:
    inv = load_inventory(testbed.inventory_path)
    assert list(inv.hosts) == [f"tb-0{i}" for i in range(1, 9)]
    assert inv.groups["testbed"] == tuple(inv.hosts)
    assert [h.labels["profile"] for h in inv.hosts.values()] == [
        "h100", "t4", "old-driver", "no-driver", "no-gpu", "mismatch", "h100", "h100"]
    assert inv.ssh.known_hosts == testbed.known_hosts_path
    assert inv.ssh.identity_file == testbed.identity_path
    assert {h.port for h in inv.hosts.values()} == {testbed.port}


def test_each_host_serves_its_own_key_from_known_hosts(testbed: Testbed, tmp_path: Path) -> None:
    scan = subprocess.run(
        ["ssh-keyscan", "-T", "5", "-t", "ed25519", "-p", str(testbed.port),
         *(h.address for h in testbed.hosts)], capture_output=True, text=True, timeout=60,
        check=False)
    served = sorted(line.strip() for line in scan.stdout.splitlines() if line.strip())
    known = sorted(testbed.known_hosts_path.read_text().splitlines())
    assert served == known
    assert len({line.split()[2] for line in known}) == len(testbed.hosts)

    # tb-01 presenting a key known_hosts does not hold for it is refused by the real client.
    lines = testbed.known_hosts_path.read_text().splitlines()
    swapped = [lines[0].split()[0] + " " + " ".join(lines[1].split()[1:]), *lines[1:]]
    wrong = tmp_path / "known_hosts"
    wrong.write_text("\n".join(swapped) + "\n")
    argv = [a.replace(str(testbed.known_hosts_path), str(wrong)) for a in testbed.ssh_argv("tb-01")]
    proc = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr


def test_every_profile_reports_its_values_over_ssh(testbed: Testbed) -> None:
    results = run_on_all(testbed, testbed.hosts)
    uuids = []
    for h in testbed.hosts:
        got = results[h.name]
        assert got["env_lib_dir"] == str(h.lib_dir)
        if h.profile == "no-gpu":
            assert "load_error" in got and "libnvidia-ml.so.1" in got["load_error"]
            continue
        want = EXPECTED[h.profile]
        assert got["init"] == want["init"], h
        if "init_message" in want:
            assert got["init_message"] == want["init_message"]
        if "gpu" not in want:
            continue
        assert (got["driver"], got["cuda"]) == (want["driver"], want["cuda"])
        [gpu] = got["gpus"]
        assert (gpu["name"], gpu["cc"], gpu["total"]) == want["gpu"]
        assert gpu["free"] == gpu["total"]
        assert gpu["uuid"].startswith("GPU-")
        assert got["libs"] == want["libs"]
        uuids.append(gpu["uuid"])
    assert len(uuids) == 5 and len(set(uuids)) == 5  # h100 x3, t4, old-driver: all distinct


def test_set_profile_takes_effect_without_restart(testbed: Testbed) -> None:
    host = testbed.host("tb-01")
    assert host.profile == "h100"
    with testbed.profile("tb-01", "mismatch") as changed:
        assert changed.profile == "mismatch"
        assert run_on(testbed, host)["init"] == 18
        assert load_inventory(testbed.inventory_path).hosts["tb-01"].labels["profile"] == "mismatch"
    with testbed.profile("tb-01", "no-gpu"):
        assert "load_error" in run_on(testbed, host)
        assert not (host.lib_dir / "libnvidia-ml.so.1").exists()
    after = run_on(testbed, host)
    assert after["init"] == 0 and after["driver"] == "550.54.15"
    assert testbed.host("tb-01").profile == "h100"
    assert Testbed.load(testbed.dir).host("tb-01").profile == "h100"
    assert starttime(host.pid) == host.starttime  # the same sshd throughout


# ---- the fake library itself, loaded locally by the real pynvml ----


def _local(profile: dict[str, Any] | str | None, tmp_path: Path, code: str) -> str:
    lib_dir = tmp_path / "lib"
    fakelibs.install(lib_dir, profiles.render("h100", "local"))
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir)}
    env.pop("FAKE_NVML_PROFILE", None)
    if profile is not None:
        path = tmp_path / "profile.json"
        path.write_text(profile if isinstance(profile, str) else json.dumps(profile))
        env["FAKE_NVML_PROFILE"] = str(path)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


PYNVML_SCRIPT = """
import json, pynvml
try:
    pynvml.nvmlInit()
except pynvml.NVMLError as e:
    print(json.dumps({"error": type(e).__name__})); raise SystemExit
h = pynvml.nvmlDeviceGetHandleByIndex(0)
m2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
print(json.dumps({"driver": pynvml.nvmlSystemGetDriverVersion(),
    "cuda": pynvml.nvmlSystemGetCudaDriverVersion(), "count": pynvml.nvmlDeviceGetCount(),
    "uuid": pynvml.nvmlDeviceGetUUID(h), "cc": pynvml.nvmlDeviceGetCudaComputeCapability(h),
    "arch": pynvml.nvmlDeviceGetArchitecture(h), "free_v2": m2.free, "used_v2": m2.used,
    "procs": pynvml.nvmlDeviceGetComputeRunningProcesses(h)}))
pynvml.nvmlShutdown()
"""


def test_real_pynvml_reads_the_fake_library(tmp_path: Path) -> None:
    prof = profiles.render("h100", "tb-99")
    prof["gpus"][0]["memory_used"] = 3 * GIB
    got = json.loads(_local(prof, tmp_path, PYNVML_SCRIPT))
    assert got == {"driver": "550.54.15", "cuda": 12040, "count": 1,
                   "uuid": profiles.gpu_uuid("tb-99", 0, "NVIDIA H100 80GB HBM3"),
                   "cc": [9, 0], "arch": 9, "free_v2": 77 * GIB, "used_v2": 3 * GIB, "procs": []}


@pytest.mark.parametrize(("profile", "error"), [
    (None, "NVMLError_DriverNotLoaded"),          # FAKE_NVML_PROFILE unset
    ('{"driver_version": "550.54.15", "gpus": [}', "NVMLError_Unknown"),  # malformed JSON
    ('{"init_error": 18}', "NVMLError_LibRmVersionMismatch"),
])
def test_fake_library_failure_modes(profile: str | None, error: str, tmp_path: Path) -> None:
    assert json.loads(_local(profile, tmp_path, PYNVML_SCRIPT)) == {"error": error}


def test_profile_reread_at_every_init_in_one_process(tmp_path: Path) -> None:
    code = (
        "import pynvml, pathlib, os, json\n"
        "pynvml.nvmlInit(); a = pynvml.nvmlSystemGetDriverVersion(); pynvml.nvmlShutdown()\n"
        "p = pathlib.Path(os.environ['FAKE_NVML_PROFILE'])\n"
        "d = json.loads(p.read_text()); d['driver_version'] = '560.35.03'\n"
        "p.write_text(json.dumps(d))\n"
        "pynvml.nvmlInit(); print(a, pynvml.nvmlSystemGetDriverVersion())\n"
    )
    assert _local(profiles.render("h100", "x"), tmp_path, code) == "550.54.15 560.35.03"


def test_profiles_and_version_encodings() -> None:
    assert {"h100", "t4", "old-driver", "no-driver", "no-gpu", "mismatch"} <= set(PROFILES)
    assert profiles.encode_cudnn("9.3.0") == 90300
    assert profiles.encode_cudnn("8.9.7") == 8907
    assert profiles.encode_cudart("12.5") == 12050
    assert profiles.cycle(["t4", "h100"], 3) == ["t4", "h100", "t4"]
    assert profiles.cycle([], 2) == ["h100", "h100"]
    a, b = profiles.gpu_uuid("tb-01", 0, "Tesla T4"), profiles.gpu_uuid("tb-02", 0, "Tesla T4")
    assert a != b and a == profiles.gpu_uuid("tb-01", 0, "Tesla T4")


def test_up_retries_when_its_port_is_taken_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.2", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_port = sshd_mod.free_port
    answers = iter([taken])
    monkeypatch.setattr(sshd_mod, "free_port",
                        lambda addrs: next(answers, None) or real_free_port(addrs))
    try:
        tb = Testbed.up(tmp_path, 2)
        assert tb.port != taken
        assert sorted(sshd_pids_for(tmp_path)) == sorted(h.pid for h in tb.hosts)
        assert Testbed.down(tmp_path) == 2
    finally:
        squatter.close()
    assert sshd_pids_for(tmp_path) == []


def test_host_by_profile_finds_the_current_holder(
    testbed: Testbed, host_by_profile: Callable[[str], TestbedHost],
) -> None:
    assert host_by_profile("t4").name == "tb-02"
    assert host_by_profile("h100").name == "tb-01"
    with testbed.profile("tb-01", "old-driver"):
        assert host_by_profile("h100").name == "tb-07"
    with pytest.raises(LookupError):
        host_by_profile("a100")


def test_sessions_run_system_python_in_a_home_of_their_own(testbed: Testbed) -> None:
    host = testbed.host("tb-02")
    proc = subprocess.run([*testbed.ssh_argv(host), 'command -v python3; echo "$HOME"'],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["/usr/bin/python3", str(host.home)]
