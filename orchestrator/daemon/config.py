"""The daemon's configuration: a TOML file (configs/orchestrator.toml is the example).

Layered like fabric/invoke: built-in defaults < the file < `ORCHESTRATOR_*` environment
(`ORCHESTRATOR_STATE_DIR`, `ORCHESTRATOR_SOCKET`) < command-line flags. The defaults work for an
ordinary user with no file at all: the state in `$XDG_STATE_HOME/orchestrator` (else
`~/.local/state/orchestrator`), the socket at `$XDG_RUNTIME_DIR/orchestrator.sock` (else
`<state_dir>/orchestrator.sock`). Relative paths in the file are relative to the file.

Unknown keys, wrong types and bad values are `SpecError`s naming the file, the line where tomllib
can tell it (syntax errors) and the field.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.deploy.pkgindex import PackageIndex
from orchestrator.errors import InvalidInput, SpecError

DEFAULT_RUNNER = "orchestrator.daemon.runners.deploy:DeployRunner"
#: Where the default runner lived before: an operator's config naming it there keeps working
#: (read as the new name at load time, so `make_runner` never imports a stale path).
RUNNER_ALIASES = {
    "orchestrator.deploy:DeployRunner": DEFAULT_RUNNER,
    "orchestrator.deploy.rollout:DeployRunner": DEFAULT_RUNNER,
}
DEFAULT_MAX_BODY = 2 << 30  # a TensorFlow SavedModel plus a wheelhouse fits; a runaway does not


@dataclass(frozen=True)
class TcpConfig:
    """Off by default. When on: loopback only, a bearer token, and a Host-header allowlist."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8470
    token_file: Path | None = None
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")


# -- webhooks (daemon/webhooks.py): one block -------------------------------------------------

WEBHOOK_EVENTS = ("rollout.started", "rollout.finished", "rollout.rolled_back", "host.degraded")
_WEBHOOK_KEYS = {"urls", "secret_file", "events", "timeout_s", "max_attempts", "backoff_s",
                 "queue_size"}
_URL = re.compile(r"^https?://[^\s\x00-\x1f/?#]+(?:[/?#][^\s\x00-\x1f]*)?$")


@dataclass(frozen=True)
class WebhookConfig:
    """`[webhooks]`: where rollout outcomes are POSTed, signed with the secret in `secret_file`
    (required with any URL; read at start, never logged)."""

    urls: tuple[str, ...] = ()
    secret_file: Path | None = None
    events: tuple[str, ...] = WEBHOOK_EVENTS
    timeout_s: float = 10.0
    max_attempts: int = 5  # the first try and 4 retries
    backoff_s: float = 1.0  # before the first retry; doubled each time, jittered, capped
    queue_size: int = 1000  # past it a notification is dropped (and logged), never waited for


def _webhooks(data: object, base: Path, file: str) -> WebhookConfig:
    if not isinstance(data, dict):
        raise SpecError("must be a table", file=file, field="webhooks")
    for key in data:
        if key not in _WEBHOOK_KEYS:
            raise SpecError(f"unknown key (expected one of: {', '.join(sorted(_WEBHOOK_KEYS))})",
                            file=file, field=f"webhooks.{key}")
    urls = data.get("urls", [])
    if not isinstance(urls, list):
        raise SpecError("must be a list of URLs", file=file, field="webhooks.urls")
    for i, url in enumerate(urls):
        if not isinstance(url, str) or not _URL.match(url):
            raise SpecError("must be an http:// or https:// URL", file=file,
                            field=f"webhooks.urls[{i}]")
    secret = _path(data["secret_file"], base, file, "webhooks.secret_file") \
        if "secret_file" in data else None
    if urls and secret is None:
        raise SpecError("required when webhooks.urls is set (every body is signed)", file=file,
                        field="webhooks.secret_file")
    events = data.get("events", list(WEBHOOK_EVENTS))
    if not isinstance(events, list) or not events:
        raise SpecError("must be a non-empty list", file=file, field="webhooks.events")
    for i, name in enumerate(events):
        if name not in WEBHOOK_EVENTS:
            raise SpecError(f"must be one of: {', '.join(WEBHOOK_EVENTS)}", file=file,
                            field=f"webhooks.events[{i}]")
    return WebhookConfig(
        urls=tuple(urls), secret_file=secret, events=tuple(dict.fromkeys(events)),
        timeout_s=float(_number(data.get("timeout_s", 10.0), (int, float), 0.1, 300.0, file,
                                "webhooks.timeout_s")),
        max_attempts=_number(data.get("max_attempts", 5), int, 1, 20, file,
                             "webhooks.max_attempts"),
        backoff_s=float(_number(data.get("backoff_s", 1.0), (int, float), 0.0, 600.0, file,
                                "webhooks.backoff_s")),
        queue_size=_number(data.get("queue_size", 1000), int, 1, 1_000_000, file,
                           "webhooks.queue_size"))


def read_webhook_secret(config: WebhookConfig) -> bytes | None:
    """The signing secret, read at start; a missing, unreadable or short one refuses to
    start. The error names the file, never its content."""
    if config.secret_file is None:
        return None
    try:
        secret = config.secret_file.read_bytes().strip()
    except OSError as exc:
        raise SpecError(f"cannot read webhook secret: {exc.strerror}",
                        file=str(config.secret_file), field="webhooks.secret_file") from None
    if len(secret) < 16:
        raise SpecError("the webhook secret must be at least 16 bytes",
                        file=str(config.secret_file), field="webhooks.secret_file")
    return secret


# -- the whole file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path
    socket: Path
    inventory: Path | None = None
    known_hosts: Path | None = None
    identity: Path | None = None
    specs_dir: Path | None = None
    max_parallel_deployments: int = 2
    max_ssh_sessions: int = 16
    max_body_bytes: int = DEFAULT_MAX_BODY
    # Live log followers at once (each holds a connection and a task); past it, HTTP 503.
    max_followers: int = 2048
    shutdown_grace_s: float = 30.0
    # A running deployment silent this long is stopped after its current step (the daemon's own
    # watchdog; a verify step with a long warmup emits nothing meanwhile, hence generous).
    progress_timeout_s: float = 7200.0
    runner: str = DEFAULT_RUNNER
    tcp: TcpConfig = field(default_factory=TcpConfig)
    index: PackageIndex | None = None  # `[index]`: where the wheel cache downloads from
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    # -- the store (issue 16) ---------------------------------------------------------------
    # None: SQLite in the state dir. "postgresql://...": one database several daemons share.
    store: str | None = None
    # How long a daemon's hold on a deployment or a re-verification lasts without a renewal
    # (renewed every third of it); another daemon takes the work over after it expires.
    lease_ttl_s: float = 15.0

    @property
    def store_path(self) -> Path:
        return self.state_dir / "state.sqlite3"

    @property
    def store_target(self) -> Path | str:
        """What `open_store` opens: the PostgreSQL URL if configured, else the SQLite file."""
        return self.store if self.store is not None else self.store_path

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def bundles_dir(self) -> Path:
        return self.state_dir / "bundles"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "daemon.log"


_PATHS = ("state_dir", "socket", "inventory", "known_hosts", "identity", "specs_dir")
_INTS = {"max_parallel_deployments": (1, 64), "max_ssh_sessions": (1, 1024),
         "max_body_bytes": (1024, 1 << 40), "max_followers": (1, 100_000)}
_FLOATS = {"shutdown_grace_s": (0.0, 3600.0), "progress_timeout_s": (1.0, 7 * 86400.0),
           "lease_ttl_s": (1.0, 3600.0)}
_STORE_SCHEMES = ("postgresql://", "postgres://")
_TCP_KEYS = {"enabled", "host", "port", "token_file", "allowed_hosts"}
_INDEX_KEYS = {"url", "extra_urls", "ca_bundle", "credentials_file"}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def default_state_dir(env: Mapping[str, str]) -> Path:
    home = Path(env.get("HOME", "~")).expanduser()
    base = env.get("XDG_STATE_HOME") or str(home / ".local/state")
    return Path(base) / "orchestrator"


def default_socket(env: Mapping[str, str], state_dir: Path) -> Path:
    runtime = env.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "orchestrator.sock" if runtime else state_dir / "orchestrator.sock"


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> DaemonConfig:
    """Read the file (if any) and apply the environment; no file means all defaults."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    file = "<defaults>"
    base = Path.cwd()
    if path is not None:
        file = str(path)
        base = Path(path).resolve().parent
        data = _read_toml(Path(path))
    return config_from_dict(data, file=file, base=base, env=env)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SpecError("config file not found", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise SpecError(
            f"not valid TOML: {exc}", file=str(path), line=int(match.group(1)) if match else None
        ) from None


def config_from_dict(data: dict[str, Any], *, file: str, base: Path,
                     env: Mapping[str, str]) -> DaemonConfig:
    known = set(_PATHS) | set(_INTS) | set(_FLOATS) | {"runner", "tcp", "index", "webhooks",
                                                        "store"}
    for key in data:
        if key not in known:
            raise SpecError(f"unknown key (expected one of: {', '.join(sorted(known))})",
                            file=file, field=key)
    values: dict[str, Any] = {}
    for key in _PATHS:
        if key in data:
            values[key] = _path(data[key], base, file, key)
    for key, (low, high) in _INTS.items():
        if key in data:
            values[key] = _number(data[key], int, low, high, file, key)
    for key, (flow, fhigh) in _FLOATS.items():
        if key in data:
            values[key] = float(_number(data[key], (int, float), flow, fhigh, file, key))
    if "runner" in data:
        if not isinstance(data["runner"], str) or ":" not in data["runner"]:
            raise SpecError("must be 'module:attribute'", file=file, field="runner")
        values["runner"] = RUNNER_ALIASES.get(data["runner"], data["runner"])
    if "tcp" in data:
        values["tcp"] = _tcp(data["tcp"], base, file)
    if "index" in data:
        values["index"] = _index(data["index"], base, file)
    if "webhooks" in data:
        values["webhooks"] = _webhooks(data["webhooks"], base, file)
    if "store" in data:
        values["store"] = _store(data["store"], file)
    if env.get("ORCHESTRATOR_STATE_DIR"):
        values["state_dir"] = Path(env["ORCHESTRATOR_STATE_DIR"])
    state_dir = values.setdefault("state_dir", default_state_dir(env))
    if env.get("ORCHESTRATOR_SOCKET"):
        values["socket"] = Path(env["ORCHESTRATOR_SOCKET"])
    values.setdefault("socket", default_socket(env, state_dir))
    return DaemonConfig(**values)


def _path(value: object, base: Path, file: str, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise SpecError("must be a non-empty path string", file=file, field=key)
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _number(value: object, kind: type | tuple[type, ...], low: float, high: float,
            file: str, key: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SpecError("must be a number", file=file, field=key)
    assert isinstance(value, int | float)
    if not low <= value <= high:
        raise SpecError(f"must be between {low} and {high}", file=file, field=key)
    return value


def _store(value: object, file: str) -> str:
    # A password belongs in ~/.pgpass or PGPASSFILE, not here: the config is often world-read.
    if not isinstance(value, str) or not value.startswith(_STORE_SCHEMES):
        raise SpecError("must be a postgresql:// URL (leave it out for SQLite in state_dir)",
                        file=file, field="store")
    return value


def _tcp(data: object, base: Path, file: str) -> TcpConfig:
    if not isinstance(data, dict):
        raise SpecError("must be a table", file=file, field="tcp")
    for key in data:
        if key not in _TCP_KEYS:
            raise SpecError("unknown key", file=file, field=f"tcp.{key}")
    enabled = data.get("enabled", False)
    if not isinstance(enabled, bool):
        raise SpecError("must be true or false", file=file, field="tcp.enabled")
    host = data.get("host", "127.0.0.1")
    if host not in _LOOPBACK:
        # The API can deploy to production hosts: it is never exposed beyond this machine.
        raise SpecError("must be a loopback address (127.0.0.1 or ::1)", file=file,
                        field="tcp.host")
    port = _number(data.get("port", 8470), int, 1, 65535, file, "tcp.port")
    token_file = _path(data["token_file"], base, file, "tcp.token_file") \
        if "token_file" in data else None
    if enabled and token_file is None:
        raise SpecError("required when tcp.enabled is true", file=file, field="tcp.token_file")
    allowed = data.get("allowed_hosts", list(TcpConfig.allowed_hosts))
    if not isinstance(allowed, list) or not all(isinstance(h, str) and h for h in allowed):
        raise SpecError("must be a list of host names", file=file, field="tcp.allowed_hosts")
    return TcpConfig(enabled, host, port, token_file, tuple(allowed))


def _index(data: object, base: Path, file: str) -> PackageIndex:
    """`[index]`; the credentials file is checked (mode, netrc) here, at start, not at the
    first deployment; what it holds never appears in an error."""
    if not isinstance(data, dict):
        raise SpecError("must be a table", file=file, field="index")
    for key in data:
        if key not in _INDEX_KEYS:
            raise SpecError(f"unknown key (expected one of: {', '.join(sorted(_INDEX_KEYS))})",
                            file=file, field=f"index.{key}")
    url = data.get("url")
    if url is not None and not isinstance(url, str):
        raise SpecError("must be a URL string", file=file, field="index.url")
    extra = data.get("extra_urls", [])
    if not isinstance(extra, list) or not all(isinstance(u, str) for u in extra):
        raise SpecError("must be a list of URL strings", file=file, field="index.extra_urls")
    paths = {key: _path(data[key], base, file, f"index.{key}")
             for key in ("ca_bundle", "credentials_file") if key in data}
    try:
        return PackageIndex(url=url, extra_urls=tuple(extra), ca_bundle=paths.get("ca_bundle"),
                            credentials_file=paths.get("credentials_file"))
    except InvalidInput as exc:
        raise SpecError(str(exc), file=file, field="index") from None


def read_token(tcp: TcpConfig) -> str:
    """The bearer token, read at start; an empty or missing file refuses to start."""
    assert tcp.token_file is not None
    try:
        token = tcp.token_file.read_text().strip()
    except OSError as exc:
        raise SpecError(f"cannot read token file: {exc.strerror}",
                        file=str(tcp.token_file), field="tcp.token_file") from None
    if len(token) < 16:
        raise SpecError("token must be at least 16 characters", file=str(tcp.token_file),
                        field="tcp.token_file")
    return token
