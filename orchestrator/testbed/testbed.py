"""The testbed: N real sshd "hosts" on 127.0.0.2.. whose GPUs are a fake libnvidia-ml.so.1.

    tb = Testbed.up(dir, hosts=8, profiles=["h100", "t4"])   # profiles cycle; default h100
    tb = Testbed.load(dir)                                   # the one running per dir/state.json
    tb.set_profile("tb-02", "mismatch")                      # seen at the next nvmlInit there
    with tb.profile("tb-02", "no-driver"): ...               # restored on exit
    Testbed.down(dir)                                        # stops exactly what up started

A DIR holds at most one running testbed; a DIR/.lock serialises up, down and profile changes
between processes (the demo's CLI and a test run may share nothing but must not interleave).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from orchestrator.errors import InvalidInput, TestbedError
from orchestrator.testbed import fakelibs, far, layout, netns, podman, sshd
from orchestrator.testbed import profiles as gpu_profiles
from orchestrator.testbed.layout import TestbedHost

READY_TIMEOUT_S = 10.0
PORT_ATTEMPTS = 3  # a port found free can be taken by another testbed before sshd binds it


class Testbed:
    __test__ = False  # not a pytest test class

    def __init__(self, root: Path, hosts: list[TestbedHost], sshd_path: Path) -> None:
        self.dir = root
        self.hosts = hosts
        self.sshd_path = sshd_path

    # ---- files clients use ----

    @property
    def inventory_path(self) -> Path:
        return self.dir / "inventory.yaml"

    @property
    def known_hosts_path(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def identity_path(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def port(self) -> int:
        return self.hosts[0].port

    def host(self, name: str) -> TestbedHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise InvalidInput(f"no host {name!r} in the testbed at {self.dir}")

    def hosts_with(self, profile: str) -> list[TestbedHost]:
        return [h for h in self.hosts if h.profile == profile]

    def ssh_argv(self, host: str | TestbedHost) -> list[str]:
        """The real `ssh` client reaching `host` with the testbed's key and known_hosts only."""
        h = host if isinstance(host, TestbedHost) else self.host(host)
        return [
            "ssh", "-F", "none", "-i", str(self.identity_path), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_path}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(h.port),
            f"{h.user}@{h.address}",
        ]

    # ---- lifecycle ----

    @classmethod
    def up(
        cls, dir: Path, hosts: int, profiles: Sequence[str] = (), *, sshd_path: Path | None = None,
        rtt_ms: float | None = None,
    ) -> Testbed:
        """`rtt_ms`: each host in a network namespace that far away (testbed/far.py, root
        only); None: every host on this machine's loopback."""
        root = Path(dir).resolve()
        if not 1 <= hosts <= layout.MAX_HOSTS:
            raise InvalidInput(f"--hosts must be between 1 and {layout.MAX_HOSTS}, not {hosts}")
        names = gpu_profiles.cycle(tuple(profiles), hosts)
        binary = sshd.check_sshd(sshd_path or default_sshd())
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root):
            _refuse_if_running(root)
            for _ in range(PORT_ATTEMPTS - 1):
                with contextlib.suppress(sshd.PortTaken):
                    return cls._start(root, names, binary, rtt_ms)
            return cls._start(root, names, binary, rtt_ms)

    @classmethod
    def _start(cls, root: Path, names: list[str], binary: Path,
               rtt_ms: float | None) -> Testbed:
        user = pwd.getpwuid(os.geteuid()).pw_name
        port = sshd.free_port([layout.host_address(i) for i in range(len(names))])
        planned = [layout.new_host(root, i, port, user, p) for i, p in enumerate(names)]
        relayed = False
        if rtt_ms is not None:
            planned, relayed = far.place(root, planned, rtt_ms)
        identity = root / "id_ed25519"
        for h in planned:
            for d in (h.deploy_root, h.lib_dir, h.home):
                d.mkdir(parents=True, exist_ok=True)
        sshd.keygen([identity, *(h.host_key for h in planned)], comment=f"testbed@{root}")
        layout.write_atomic(root / "authorized_keys", _pub(identity))
        # Behind a relay, sshd listens on the namespace's loopback; the relay on the host address.
        specs = [_prepare_host(root, h, "127.0.0.1" if relayed else h.address) for h in planned]
        sshd.ensure_privsep_dir()
        started: list[TestbedHost] = []
        try:
            for h, spec in zip(planned, specs, strict=True):
                run = sshd.start(binary, spec, netns.exec_argv(h.netns, []) if h.netns else ())
                relay = far.start_relay(h, spec.address) if relayed else sshd.Running(0, 0)
                started.append(replace(h, pid=run.pid, starttime=run.starttime,
                                       relay_pid=relay.pid, relay_starttime=relay.starttime))
            tb = cls(root, started, binary)
            tb._save()  # before waiting: a failed start is still stoppable by `down`
            sshd.wait_ready([(replace(s, address=h.address), sshd.Running(h.pid, h.starttime))
                             for s, h in zip(specs, started, strict=True)], READY_TIMEOUT_S)
        except BaseException:
            sshd.stop([h.pid for h in started])
            far.remove([*started, *planned[len(started):]])
            (root / "state.json").unlink(missing_ok=True)
            raise
        known = "".join(layout.known_hosts_line(h, _pub(h.host_key)) for h in started)
        layout.write_atomic(tb.known_hosts_path, known)
        return tb

    @classmethod
    def load(cls, dir: Path) -> Testbed:
        root = Path(dir).resolve()
        state = root / "state.json"
        try:
            binary, hosts = layout.parse_state(state.read_text())
        except FileNotFoundError:
            raise TestbedError(
                f"no testbed in {root} (start one with: orchestrator testbed up)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise TestbedError(f"{state}: unreadable testbed state: {exc}") from exc
        return cls(root, hosts, Path(binary))

    @classmethod
    def down(cls, dir: Path) -> int:
        """Stop the sshd servers this DIR's testbed started (and their sessions); returns how many
        were running. A pid now owned by another process is left alone."""
        root = Path(dir).resolve()
        if not (root / "state.json").exists():
            return 0
        with _locked(root):
            if not (root / "state.json").exists():
                return 0
            tb = cls.load(root)
            ours = tb._running()
            sshd.stop([h.pid for h in ours])
            (root / "state.json").unlink()
            far.remove(tb.hosts)  # relays and namespaces of `--rtt` hosts (none otherwise)
            for h in tb.hosts:
                (h.host_dir / "sshd.pid").unlink(missing_ok=True)
                podman.release(h.containers_dir)
                # Its runroot under /tmp (Podman's run-time state, useless once stopped).
                shutil.rmtree(podman.runroot(h.containers_dir), ignore_errors=True)
            return len(ours)

    def _running(self) -> list[TestbedHost]:
        return [h for h in self.hosts
                if sshd.is_ours(sshd.Running(h.pid, h.starttime), self.sshd_path, h.sshd_config)]

    def running(self) -> bool:
        return bool(self._running())

    # ---- profiles ----

    def set_profile(self, host_name: str, profile: str) -> None:
        """Switch one host's simulated GPU stack; the next process there to call nvmlInit sees it.
        No restart: sshd passes the same LD_LIBRARY_PATH and profile file to every session."""
        gpu_profiles.check_name(profile)
        with _locked(self.dir):
            fresh = Testbed.load(self.dir)  # another process may have changed another host
            host = fresh.host(host_name)
            changed = replace(host, profile=profile)
            _write_profile(changed)
            fresh.hosts = [changed if h.name == host_name else h for h in fresh.hosts]
            fresh._save()
            self.hosts = fresh.hosts

    @contextlib.contextmanager
    def profile(self, host_name: str, profile: str) -> Iterator[TestbedHost]:
        """Use `profile` on one host for the duration of a `with` block, then restore it."""
        previous = self.host(host_name).profile
        self.set_profile(host_name, profile)
        try:
            yield self.host(host_name)
        finally:
            self.set_profile(host_name, previous)

    def _save(self) -> None:
        state = layout.render_state(str(self.sshd_path), self.hosts)
        layout.write_atomic(self.dir / "state.json", state)
        layout.write_atomic(self.inventory_path, layout.render_inventory(self.hosts))


def default_sshd() -> Path:
    """$ORCHESTRATOR_SSHD, else Debian's /usr/sbin/sshd."""
    return Path(os.environ.get("ORCHESTRATOR_SSHD") or sshd.DEFAULT_SSHD)


def _prepare_host(root: Path, host: TestbedHost, listen: str) -> sshd.SshdSpec:
    _write_profile(host)
    # The host's own Podman configuration and storage, named by the sshd environment.
    containers = tuple(podman.configure(host.containers_dir).items())
    spec = sshd.SshdSpec(
        address=listen, port=host.port, user=host.user, host_key=host.host_key,
        config=host.sshd_config, log=host.sshd_log, pid_file=host.host_dir / "sshd.pid",
        authorized_keys=root / "authorized_keys",
        env=(
            ("LD_LIBRARY_PATH", str(host.lib_dir)),
            ("FAKE_NVML_PROFILE", str(host.profile_path)),
            # Xid events cannot come from the fake NVML (NVML events need the kernel): the probe
            # reads this file in place of journalctl -k / /dev/kmsg (docs/troubleshooting.md).
            ("ORCHESTRATOR_KERNEL_LOG", str(host.kernel_log_path)),
            # A home of its own, as a separate machine has: the controller user's ~/.bashrc (here
            # pyenv's shims, ~0.5 s per command) never runs, so `python3` is the system's
            # /usr/bin/python3, and caches under ~ are per host.
            ("HOME", str(host.home)),
            *containers,
        ),
    )
    layout.write_atomic(host.sshd_config, sshd.render_config(spec))
    return spec


def _write_profile(host: TestbedHost) -> None:
    rendered = gpu_profiles.render(host.profile, host.name)
    # Library first: the profile file then never describes a library that is not there yet.
    fakelibs.install(host.lib_dir, rendered)
    layout.write_atomic(host.profile_path, json.dumps(rendered, indent=2) + "\n")
    # Stamped now, as the kernel would: a profile applied after a deploy is a new event then.
    layout.write_atomic(host.kernel_log_path, gpu_profiles.kernel_log(rendered, time.time()))


def _pub(key: Path) -> str:
    return Path(f"{key}.pub").read_text().strip() + "\n"


def _refuse_if_running(root: Path) -> None:
    if not (root / "state.json").exists():
        return
    try:
        existing = Testbed.load(root)
    except TestbedError:
        (root / "state.json").unlink()  # unreadable state from a crash: nothing we can stop
        return
    if existing.running():
        raise TestbedError(
            f"a testbed is already up in {root} ({len(existing.hosts)} hosts, port "
            f"{existing.port}); stop it first with: orchestrator testbed down --dir {root}"
        )
    far.remove(existing.hosts)  # a stale --rtt testbed's relays and namespaces
    (root / "state.json").unlink()  # stale: its servers died (e.g. a reboot)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / ".lock", "a") as f:
        deadline = time.monotonic() + 30
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TestbedError(f"{root}/.lock held by another process for 30s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
