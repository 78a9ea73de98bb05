"""Where a client command finds the daemon: the flags, else the environment, else the client
context file, else the daemon's default socket.

The context file is TOML at `$ORCHESTRATOR_CONTEXT`, else
`$XDG_CONFIG_HOME/orchestrator/context.toml` (else `~/.config/orchestrator/context.toml`):

    socket = "/run/orchestrator/orchestrator.sock"   # the Unix socket, or:
    url = "http://127.0.0.1:8470"                    # the daemon's TCP listener ([tcp])
    token_file = "~/.config/orchestrator/token"      # its bearer token (the file, never the value)
    daemon_config = "/etc/orchestrator/orchestrator.toml"  # or: take the socket from the daemon's

At each level (flags: --socket / --url / --token-file; environment: ORCHESTRATOR_SOCKET /
ORCHESTRATOR_URL / ORCHESTRATOR_TOKEN_FILE) the first level that names an endpoint wins whole:
a socket from the flags is never paired with a URL from the file. Relative paths in the file
are relative to the file. A missing file is no error; a bad one is exit 2 naming the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator.errors import SpecError
from orchestrator.xdg import user_dir

CONTEXT_ENV = "ORCHESTRATOR_CONTEXT"
_KEYS = {"socket", "url", "token_file", "daemon_config"}


@dataclass(frozen=True)
class Endpoint:
    """The daemon to talk to: a Unix socket, or a TCP URL with its token (read when used)."""

    socket: Path | None = None
    url: str | None = None
    token_file: Path | None = None
    source: str = "default"  # where it came from, named in "no daemon answers" messages

    def where(self) -> str:
        return self.url if self.url else str(self.socket)

    def token(self) -> str | None:
        if self.url is None or self.token_file is None:
            return None
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise SpecError(f"cannot read the token file: {exc.strerror}",
                            file=str(self.token_file)) from None
        if not token:
            raise SpecError("the token file is empty", file=str(self.token_file))
        return token


def context_file(env: Mapping[str, str]) -> Path:
    return user_dir("CONFIG", "context.toml", override=CONTEXT_ENV, env=env)


def resolve(*, socket: str | None = None, url: str | None = None, token_file: str | None = None,
            env: Mapping[str, str] | None = None) -> Endpoint:
    """The endpoint: flags > environment > context file > the daemon's default socket."""
    env = os.environ if env is None else env
    flags = _level(socket, url, token_file, "flags (--socket/--url)")
    if flags is not None:
        return _with_token(flags, token_file or env.get("ORCHESTRATOR_TOKEN_FILE"), env)
    from_env = _level(env.get("ORCHESTRATOR_SOCKET"), env.get("ORCHESTRATOR_URL"),
                      env.get("ORCHESTRATOR_TOKEN_FILE"), "environment")
    if from_env is not None:
        return _with_token(from_env, token_file, env)
    from_file = _from_file(context_file(env))
    if from_file is not None:
        return _with_token(from_file, token_file or env.get("ORCHESTRATOR_TOKEN_FILE"), env)
    from orchestrator.daemon.config import default_socket, default_state_dir

    state_dir = Path(env.get("ORCHESTRATOR_STATE_DIR") or default_state_dir(env))
    return Endpoint(socket=default_socket(env, state_dir))


def _level(socket: str | None, url: str | None, token_file: str | None,
           source: str) -> Endpoint | None:
    if socket and url:
        raise SpecError(f"both a socket and a URL given by the {source}: name one")
    if url:
        return Endpoint(url=_check_url(url, source), source=source,
                        token_file=Path(token_file).expanduser() if token_file else None)
    if socket:
        return Endpoint(socket=Path(socket).expanduser(), source=source)
    return None


def _with_token(endpoint: Endpoint, token_file: str | None, env: Mapping[str, str]) -> Endpoint:
    """A higher level's token file overrides the endpoint's own (flag > env > file)."""
    if endpoint.url is None or not token_file:
        return endpoint
    return Endpoint(url=endpoint.url, token_file=Path(token_file).expanduser(),
                    source=endpoint.source)


def _check_url(url: str, source: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(f"not an http(s) URL: {url!r}", field=f"url ({source})")
    return url.rstrip("/")


def _from_file(path: Path) -> Endpoint | None:
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(exc), file=str(path)) from None
    for key, value in data.items():
        if key not in _KEYS:
            raise SpecError(f"unknown key (known: {', '.join(sorted(_KEYS))})",
                            file=str(path), field=key)
        if not isinstance(value, str) or not value:
            raise SpecError("must be a non-empty string", file=str(path), field=key)
    base, source = path.parent, f"context file {path}"

    def rel(key: str) -> str | None:
        value = data.get(key)
        return str(base / Path(value).expanduser()) if value else None

    if "daemon_config" in data:
        if "socket" in data or "url" in data:
            raise SpecError("daemon_config names the socket itself: drop socket/url",
                            file=str(path), field="daemon_config")
        from orchestrator.daemon.config import load_config

        config = load_config(rel("daemon_config"))
        return Endpoint(socket=config.socket, source=source)
    endpoint = _level(rel("socket"), data.get("url"), rel("token_file"), source)
    if endpoint is None and "token_file" in data:
        raise SpecError("a token file without a url", file=str(path), field="token_file")
    return endpoint
