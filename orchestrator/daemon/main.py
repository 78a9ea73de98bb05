"""The daemon process: lock, log, store, API sockets, systemd notification, clean stop.

Order at start: take `<state_dir>/daemon.lock` (a second daemon stops here, before touching
anything), configure structlog once, open the store (integrity check, migrations), reconcile
what the last process left in flight, bind the sockets, serve, then tell systemd READY=1.
On SIGTERM/SIGINT: stop accepting (uvicorn closes the sockets; followers' streams end), tell
in-flight runners to stop after their current step, wait up to `shutdown_grace_s`, remove the
socket file, release the lock. A deployment still in flight stays `running` in the store and is
reconciled at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from types import FrameType
from typing import TextIO

import structlog
import uvicorn
from starlette.concurrency import run_in_threadpool

from orchestrator.core.terminal import safe
from orchestrator.daemon import routing, watchdog
from orchestrator.daemon.api import create_app
from orchestrator.daemon.config import DaemonConfig, read_token
from orchestrator.daemon.events import EventHub
from orchestrator.daemon.fanout import with_transport
from orchestrator.daemon.journal import PriorityFormatter, is_journal_stream
from orchestrator.daemon.listener import Listener
from orchestrator.daemon.runners.base import make_runner
from orchestrator.daemon.service import Service
from orchestrator.daemon.statedir import lock_state_dir, open_private, private_dir
from orchestrator.daemon.store import open_store
from orchestrator.daemon.watch import SpecWatcher
from orchestrator.errors import DaemonError, StoreUnavailable

log = structlog.get_logger("orchestrator.daemon.main")
WATCH_INTERVAL_S = 2.0  # how often `specs_dir` is scanned for new or changed specs
WEBHOOK_GRACE_S = 5.0  # at stop, for notifications still queued (a dead receiver is not waited)
PROGRESS_CHECK_S = 10.0  # how often in-flight deployments are checked for a dead or stalled worker


def _shown_safe(logger: object, name: str,
                event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """The readable lines' text values (a host's error tail, a message) through the one
    terminal sanitiser (issue 13): a host cannot drive the operator's terminal through the
    daemon's log. Other values are shown by repr, which escapes controls itself; the log file
    keeps everything raw (JSON)."""
    return {key: safe(value) if isinstance(value, str) else value
            for key, value in event_dict.items()}


def _safe_traceback(out: TextIO, exc_info: structlog.typing.ExcInfo) -> None:
    """A traceback on the terminal, its text (an exception may quote a host) through `safe`."""
    text = io.StringIO()
    structlog.dev.plain_traceback(text, exc_info)
    out.write(safe(text.getvalue()))


def configure_logging(log_file: Path, *, stream: object = None,
                      env: Mapping[str, str] | None = None) -> None:
    """structlog, once per process: JSON lines in the daemon's log file; on stderr readable
    coloured lines when it is a terminal, JSON lines otherwise; when stderr is systemd's
    journald stream, each line starts with its priority (`<3>` for errors: daemon/journal.py)."""
    stream = stream or sys.stderr
    env = os.environ if env is None else env
    private_dir(log_file.parent)
    open_private(log_file, "a").close()  # 0600 before FileHandler appends to it
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    json_fmt = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        foreign_pre_chain=shared)
    tty = bool(getattr(stream, "isatty", lambda: False)())
    term_fmt = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    _shown_safe,
                    structlog.dev.ConsoleRenderer(colors=tty,
                                                  exception_formatter=_safe_traceback)],
        foreign_pre_chain=shared) if tty else json_fmt
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(json_fmt)
    term_handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    term_handler.setFormatter(PriorityFormatter(term_fmt) if is_journal_stream(stream, env)
                              else term_fmt)
    root = logging.getLogger()
    root.handlers[:] = [file_handler, term_handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("paramiko").setLevel(logging.WARNING)


def sd_notify(message: str) -> bool:
    """systemd's notify protocol: one datagram to $NOTIFY_SOCKET (no libsystemd needed)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed", message=message, error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (passed as $WATCHDOG_USEC), or None when not watched."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def bind_unix(path: Path) -> socket.socket:
    """Bind the API socket with mode 0660; a stale socket file is replaced, a live one refused."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    if path.exists() or path.is_symlink():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()
            else:
                raise DaemonError(f"{path}: another daemon is already listening on this socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)  # never world-accessible, not even for an instant
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DaemonError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


class _Server(uvicorn.Server):
    """uvicorn with our signal handling (uvicorn's re-raises the signal after serving, which
    would kill the process before the workers are stopped) and systemd notifications."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None],
                 watcher: SpecWatcher | None = None, service: Service | None = None) -> None:
        super().__init__(config)
        self._service = service
        self._on_stop = on_stop
        self._watcher = watcher
        self._scan: asyncio.Task[list[str]] | None = None
        self._last_scan = 0.0
        self._check: asyncio.Task[list[str]] | None = None
        self._last_check = time.monotonic()
        self._beat: asyncio.Task[list[str]] | None = None
        self._last_beat = 0.0
        self._listener = Listener(service.hub) if service and service.store.shared else None
        self._answer: asyncio.Task[int] | None = None
        self._last_answer = 0.0
        self._watchdog = watchdog_interval()
        self._last_ping = 0.0

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        def handle(sig: int, frame: FrameType | None) -> None:
            log.info("stopping", signal=signal.Signals(sig).name)
            self.should_exit = True
            self._on_stop()  # followers' streams end now, new submissions are refused

        previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            sd_notify("READY=1\nSTATUS=serving")
            log.info("ready")

    async def on_tick(self, counter: int) -> bool:
        now = time.monotonic()
        if self._watchdog and now - self._last_ping >= self._watchdog:
            self._last_ping = now
            sd_notify("WATCHDOG=1")
        if (self._watcher is not None and not self.should_exit
                and (self._scan is None or self._scan.done())
                and now - self._last_scan >= WATCH_INTERVAL_S):
            self._last_scan = now
            if self._scan is not None and self._scan.exception() is not None:
                log.error("specs_dir scan failed", error=repr(self._scan.exception()))
            # In the API's thread pool: packing a model must not stall the event loop.
            self._scan = asyncio.create_task(run_in_threadpool(self._watcher.scan))
        if (self._service is not None and not self.should_exit
                and (self._check is None or self._check.done())
                and now - self._last_check >= PROGRESS_CHECK_S):
            self._last_check = now
            self._check = asyncio.create_task(
                run_in_threadpool(self._service.check_progress, time.time()))
        if (self._service is not None and not self.should_exit
                and (self._beat is None or self._beat.done())
                and now - self._last_beat >= self._service.config.lease_ttl_s / 3):
            self._last_beat = now  # leases renewed, lost ones stopped, expired ones taken over
            if self._beat is not None and self._beat.exception() is not None:
                log.error("lease heartbeat failed", error=repr(self._beat.exception()))
            self._beat = asyncio.create_task(run_in_threadpool(watchdog.heartbeat, self._service))
        if self._listener is not None:
            # Other daemons' events reach this one's followers as their NOTIFY arrives; the
            # tick only starts the listening, restarts it, and checks once a second.
            if self.should_exit:
                self._listener.stop()
            else:
                self._listener.tick(now)
        if (self._service is not None and self._service.store.shared and not self.should_exit
                and (self._answer is None or self._answer.done())
                and now - self._last_answer >= routing.ANSWER_EVERY_S):
            self._last_answer = now  # actions asked of other daemons for this one's work
            failed = self._answer.exception() if self._answer is not None else None
            if failed is not None and not isinstance(failed, StoreUnavailable):  # said already
                log.warning("routed actions not answered", error=repr(failed))
            self._answer = asyncio.create_task(run_in_threadpool(routing.answer, self._service))
        return await super().on_tick(counter)


def run_daemon(config: DaemonConfig) -> int:
    lock = lock_state_dir(config.state_dir)
    try:
        configure_logging(config.log_file)
        log.info("starting", state_dir=str(config.state_dir), socket=str(config.socket),
                 pid=os.getpid(), runner=config.runner)
        store = open_store(config.store_target)
        log.info("store open", store=store.location)  # never the password: `describe`
        hub = EventHub(store, config.logs_dir)
        service = Service(config, store, hub, make_runner(config))
        token = read_token(config.tcp) if config.tcp.enabled else None
        sockets = [bind_unix(config.socket)]
        try:
            if config.tcp.enabled:
                sockets.append(bind_tcp(config.tcp.host, config.tcp.port))
            service.start()
            _serve(service, sockets, token)
        finally:
            with contextlib.suppress(FileNotFoundError):
                config.socket.unlink()
            for sock in sockets:
                sock.close()
            sd_notify("STOPPING=1")
            finished = service.stop(config.shutdown_grace_s)
            service.webhooks.stop(WEBHOOK_GRACE_S)  # what the last events queued, if it can
            log.info("stopped", workers_finished=finished)
            hub.close()
            store.close()
    finally:
        lock.close()
    return 0


def _serve(service: Service, sockets: list[socket.socket], token: str | None) -> None:
    # The connections' transports in the scope: live followers are written to directly.
    app = with_transport(create_app(service, token=token))
    specs_dir = service.config.specs_dir
    watcher = SpecWatcher(service, specs_dir) if specs_dir is not None else None
    server = _Server(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False,
                                    timeout_graceful_shutdown=2, timeout_keep_alive=5),
                     service.stopping.set, watcher, service)
    server.run(sockets=sockets)
