"""One real OpenSSH sshd per testbed host: its config (pure), its keys, starting it detached,
waiting for its banner, and stopping exactly the process we started (never a reused pid).

sshd re-executes itself from `/` for every connection, so every path in its config is absolute.
As root it serves root (privilege separation needs /run/sshd); as an ordinary user it serves only
that user, which is all the testbed needs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import TestbedError

DEFAULT_SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")


class PortTaken(TestbedError):
    """Another process bound our port between `free_port` and sshd's bind: pick another."""


@dataclass(frozen=True)
class SshdSpec:
    """Everything one host's sshd needs; all paths absolute."""

    address: str
    port: int
    user: str
    host_key: Path
    config: Path
    log: Path
    pid_file: Path
    authorized_keys: Path
    env: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Running:
    """A started sshd, identified by pid and kernel start time (pid reuse cannot fake both)."""

    pid: int
    starttime: int


def render_config(spec: SshdSpec) -> str:
    env = " ".join(_quote(f"{k}={v}") for k, v in spec.env)
    lines = [
        f"Port {spec.port}",
        f"ListenAddress {spec.address}",
        f"HostKey {_quote(str(spec.host_key))}",
        f"PidFile {_quote(str(spec.pid_file))}",
        f"AuthorizedKeysFile {_quote(str(spec.authorized_keys))}",
        f"AllowUsers {spec.user}",
        "PubkeyAuthentication yes",
        # Keys and dirs live in a test tmp dir that sshd's ownership checks would refuse.
        "StrictModes no",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UseDNS no",
        "PrintMotd no",
        "X11Forwarding no",
        # A rollout opens many channels on one connection and many hosts connect at once.
        "MaxSessions 64",
        "MaxStartups 64:30:128",
        "Subsystem sftp internal-sftp",
        f"SetEnv {env}" if env else "",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def _quote(value: str) -> str:
    """sshd_config quoting: double quotes, which may not appear inside (we refuse such paths)."""
    if '"' in value or "\n" in value:
        raise TestbedError(f"path not usable in an sshd_config: {value!r}")
    return f'"{value}"'


def check_sshd(sshd: Path) -> Path:
    if not (sshd.is_file() and os.access(sshd, os.X_OK)):
        raise TestbedError(
            f"sshd not found at {sshd}: install the Debian package openssh-server "
            "(apt-get install openssh-server)"
        )
    return sshd


def keygen(paths: Sequence[Path], comment: str) -> None:
    """ed25519 keys without passphrase at each path that lacks one (generated in parallel)."""
    procs = []
    for path in paths:
        if path.exists() and path.with_suffix(".pub").exists():
            continue
        path.unlink(missing_ok=True)
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
        try:
            procs.append((path, subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
        except FileNotFoundError as exc:
            raise TestbedError(
                "ssh-keygen not found: install the Debian package openssh-client"
            ) from exc
    for path, proc in procs:
        out, _ = proc.communicate(timeout=30)
        if proc.returncode != 0:
            raise TestbedError(f"ssh-keygen {path} failed: {out.decode(errors='replace').strip()}")
        path.chmod(0o600)


def ensure_privsep_dir() -> None:
    """Root's sshd refuses to start without its privilege-separation dir (tmpfs: gone at boot)."""
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)


def start(sshd: Path, spec: SshdSpec, wrap: Sequence[str] = ()) -> Running:
    """Start sshd in its own session, detached from our terminal and stdio; returns at once.
    `wrap` is a command that execs it (`ip netns exec NS`: the pid stays sshd's).

    posix_spawn rather than Popen: the server outlives this call (and the CLI process), and a
    Popen object for it would warn when collected; `stop` reaps it if it is still our child.
    """
    spec.log.unlink(missing_ok=True)
    return spawn_detached([*wrap, *argv(sshd, spec)])


def spawn_detached(command: Sequence[str], env: dict[str, str] | None = None) -> Running:
    """`command` (looked up on PATH) in its own session, stdio on /dev/null; returns at once."""
    devnull = os.devnull
    pid = os.posix_spawnp(
        command[0],
        list(command),
        dict(os.environ) if env is None else env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, devnull, os.O_WRONLY, 0),
        ],
        setsid=True,
    )
    return Running(pid, starttime(pid) or 0)


def argv(sshd: Path, spec: SshdSpec) -> list[str]:
    return [str(sshd), "-D", "-f", str(spec.config), "-E", str(spec.log)]


def wait_ready(servers: Sequence[tuple[SshdSpec, Running]], timeout: float) -> None:
    """Poll every server until each shows an SSH banner; a server that died or stays silent is a
    TestbedError carrying the end of its log."""
    pending = list(servers)
    deadline = time.monotonic() + timeout
    while pending:
        for item in list(pending):
            spec, run = item
            if _has_banner(spec.address, spec.port):
                pending.remove(item)
            elif not alive(run.pid):
                where, tail = f"{spec.address}:{spec.port}", log_tail(spec.log)
                error = PortTaken if "Address already in use" in tail else TestbedError
                raise error(f"sshd on {where} exited: {tail}")
        if pending and time.monotonic() > deadline:
            spec = pending[0][0]
            raise TestbedError(
                f"sshd on {spec.address}:{spec.port} not ready after {timeout:.0f}s: "
                f"{log_tail(spec.log)}"
            )
        if pending:
            time.sleep(0.02)


def _has_banner(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def log_tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return " | ".join(text.splitlines()[-lines:]) or "(empty log)"


def free_port(addresses: Sequence[str], first: int = 20000, last: int = 60000) -> int:
    """A port free on every address at once, so one inventory port serves all hosts; searched
    from a pid-dependent start so two testbeds started together rarely collide."""
    span = last - first
    start_at = first + (os.getpid() * 7919 + int(time.time())) % span
    for offset in range(0, span, 97):
        port = first + (start_at - first + offset) % span
        if all(_bindable(a, port) for a in addresses):
            return port
    raise TestbedError(f"no TCP port free on all of {', '.join(addresses)}")


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


# ---- /proc: identity and stopping ----


def starttime(pid: int) -> int | None:
    """Kernel start time of `pid` in clock ticks (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields start after the last ")".
    return int(stat[stat.rindex(")") + 2:].split()[19])


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting to be reaped."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def is_ours(run: Running, sshd: Path, config: Path) -> bool:
    """Is `run.pid` still the sshd we started with `config`? sshd retitles its listener
    ("sshd: /usr/sbin/sshd -D -f CFG ... [listener]"), so the config path is searched in it."""
    if not run.pid or starttime(run.pid) != run.starttime:
        return False
    try:
        cmdline = Path(f"/proc/{run.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return str(sshd) in cmdline and f"-f {config}" in cmdline


def descendants(pids: Iterable[int]) -> list[int]:
    """Every process below `pids` (sshd's per-connection children and the commands they run:
    they start their own sessions, so only the parent chain finds them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM the servers and everything below them, SIGKILL what is left after `grace`, and
    wait until none is running."""
    victims = freeze(pids)
    _signal(victims, signal.SIGTERM)
    _signal(victims, signal.SIGCONT)  # the SIGTERM pending on each is delivered now
    deadline = time.monotonic() + grace
    while any(alive(p) for p in victims) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [p for p in victims if alive(p)]
    if left:
        _signal(left, signal.SIGKILL)
        deadline = time.monotonic() + grace
        while any(alive(p) for p in left) and time.monotonic() < deadline:
            time.sleep(0.02)
    still = [p for p in victims if alive(p)]
    if still:
        raise TestbedError(f"processes survived SIGKILL: {still}")


def freeze(pids: Sequence[int], timeout: float = 2.0) -> list[int]:
    """SIGSTOP `pids` and all their descendants, and return them all. A session being set up
    forks while we look: a stopped process cannot, so repeat until a scan finds nobody new."""
    victims = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        victims = _signal(victims, signal.SIGSTOP)
        while not all(_stopped(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.005)
        new = [p for p in descendants(victims) if p not in victims]
        if not new or time.monotonic() > deadline:
            return [*victims, *new]
        victims.extend(new)


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone counts as unable to fork
    return stat[stat.rindex(")") + 2:].split()[0] in ("T", "t", "Z", "X")


def _signal(pids: Iterable[int], sig: signal.Signals) -> list[int]:
    """Signal each pid; returns those we may signal (another user's process is not ours)."""
    ours = []
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            ours.append(pid)  # already gone: nothing left to wait for, harmless to keep
        except PermissionError:
            continue
        else:
            ours.append(pid)
    return ours


def _reap(pid: int) -> None:
    """Collect `pid` if it is our own exited child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
