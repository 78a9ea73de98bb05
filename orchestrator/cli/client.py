"""The CLI's side of the API: httpx over the daemon's Unix socket, errors mapped once here.

Every client command is a thin use of `Client`; the CLI holds no state and never reads the
store. A daemon that is not running is one clear line (`DaemonUnavailable`); an error response
becomes the orchestrator error of its status (400/401/403/422 `InvalidInput` and 404 `NotFound`:
exit 2, 409 `Conflict`: exit 2, others exit 1), with the daemon's message. The daemon is found
through orchestrator/cli/context.py (flags > environment > context file > default socket).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import quote

import httpx

from orchestrator.cli.context import Endpoint, resolve
from orchestrator.cli.follow import FollowView, LiveFollow, ending
from orchestrator.cli.render import event_line, use_colour
from orchestrator.core.states import DEPLOYMENT_TERMINAL, DeploymentState
from orchestrator.daemon.bundle import pack_bundle
from orchestrator.errors import (
    EXIT_DEPLOY_FAILED,
    EXIT_OK,
    Conflict,
    DaemonUnavailable,
    InvalidInput,
    NotFound,
    OrchestratorError,
    PayloadTooLarge,
)

_STATUS_ERRORS: dict[int, type[OrchestratorError]] = {
    400: InvalidInput, 401: InvalidInput, 403: InvalidInput, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: InvalidInput,
}


def add_client_args(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument("--socket", metavar="PATH",
                        help="the daemon's Unix socket (default: $ORCHESTRATOR_SOCKET, else the "
                             "context file, else $XDG_RUNTIME_DIR/orchestrator.sock)")
    parser.add_argument("--url", help="the daemon's TCP listener instead, e.g. "
                                      "http://127.0.0.1:8470 (default: $ORCHESTRATOR_URL, else "
                                      "the context file)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="the bearer token for --url (default: $ORCHESTRATOR_TOKEN_FILE, "
                             "else the context file's token_file)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON")


class Client:
    def __init__(self, endpoint: Endpoint | Path, *, timeout: float = 30.0) -> None:
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else Endpoint(socket=endpoint)
        token = self.endpoint.token()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if self.endpoint.url is not None:
            self._http = httpx.Client(base_url=self.endpoint.url, headers=headers,
                                      timeout=timeout)
        else:
            self._http = httpx.Client(
                transport=httpx.HTTPTransport(uds=str(self.endpoint.socket)),
                base_url="http://orchestrator", timeout=timeout)

    @property
    def socket(self) -> str:
        """Where the daemon was looked for (a socket path or a URL), for messages."""
        return self.endpoint.where()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Client:
        return cls(resolve(socket=getattr(args, "socket", None), url=getattr(args, "url", None),
                           token_file=getattr(args, "token_file", None)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unavailable(self, exc: Exception) -> NoReturn:
        source = "" if self.endpoint.source == "default" else f" (from the {self.endpoint.source})"
        raise DaemonUnavailable(
            f"no orchestrator daemon answers on {self.socket}{source} ({type(exc).__name__}); "
            "start it with `orchestrator daemon` or point --socket / ORCHESTRATOR_SOCKET or the "
            "context file at it") from None

    def _no_socket_file(self) -> None:
        """A socket path with nothing there: no daemon, said before httpcore opens a socket it
        would leave unclosed on the failed connect."""
        sock = self.endpoint.socket
        if self.endpoint.url is None and sock is not None and not sock.exists():
            self._unavailable(FileNotFoundError(sock))

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self._no_socket_file()
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError,
                ConnectionRefusedError) as exc:
            self._unavailable(exc)
        except httpx.TimeoutException as exc:
            raise DaemonUnavailable(f"the daemon on {self.socket} did not answer in time "
                                    f"({type(exc).__name__})") from None
        check(response)
        return response.json()

    # -- the API, one method per endpoint ---------------------------------------------------

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/healthz")
        return result

    def submit(self, spec: Path, *, force: bool = False) -> dict[str, Any]:
        """Pack the spec and its files (model, lock, golden, wheelhouse) and upload them. The
        answer has `noop` when the daemon queued nothing (already serving; `force` skips that)."""
        with tempfile.TemporaryFile() as bundle:
            pack_bundle(spec, bundle)
            bundle.seek(0)
            result: dict[str, Any] = self.request(
                "POST", "/v1/deployments", content=bundle, params={"force": "true"} if force
                else None, headers={"content-type": "application/x-tar"}, timeout=None)
        return result

    def deployments(self, app: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request(
            "GET", "/v1/deployments", params={"app": app} if app else None)
        return result

    def deployment(self, deployment: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/deployments/{_q(deployment)}")
        return result

    def cancel(self, deployment: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/deployments/{_q(deployment)}/cancel")
        return result

    def rollback(self, deployment: str | None = None, app: str | None = None,
                 to: str | None = None) -> dict[str, Any]:
        path = (f"/v1/deployments/{_q(deployment)}/rollback" if deployment
                else f"/v1/apps/{_q(app or '')}/rollback")
        # Asks every host first (over SSH): longer than a plain request.
        result: dict[str, Any] = self.request("POST", path, json={"to": to} if to else None,
                                              timeout=300)
        return result

    def releases(self, app: str, hosts: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/apps/{_q(app)}/releases",
                                              params={"host": hosts}, timeout=300)
        return result

    def unmark_bad(self, app: str, release_id: str, hosts: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"/v1/apps/{_q(app)}/releases" + f"/{_q(release_id)}/unmark-bad",
            json={"hosts": hosts}, timeout=300)
        return result

    def control(self, deployment: str, action: str) -> dict[str, Any]:
        """`action` is pause, resume or abort."""
        result: dict[str, Any] = self.request(
            "POST", f"/v1/deployments/{_q(deployment)}/{_q(action)}")
        return result

    def metrics(self) -> str:
        self._no_socket_file()
        try:
            response = self._http.get("/metrics")
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            self._unavailable(exc)
        check(response)
        return response.text

    def hosts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/hosts")
        return result

    def verify(self, hosts: list[str]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("POST", "/v1/hosts/verify",
                                                    json={"hosts": hosts}, timeout=None)
        return result

    def events(self, deployment: str, *, after: int = 0, host: str | None = None,
               follow: bool = False) -> Iterator[dict[str, Any]]:
        """The deployment's events in seq order; with `follow`, until it finishes. When the
        daemon drops a follower that fell behind (a `lagged` marker line, not an event), the
        stream is reopened after the marker's seq: the caller sees each event once."""
        while True:
            marker = None
            for event in self._event_stream(deployment, after, host, follow):
                if event.get("event") == "lagged" and "seq" not in event:
                    marker = event  # the daemon dropped this slow reader: resume by seq
                    break
                yield event
            if marker is None:
                return
            after = int(marker["after"])

    def _event_stream(self, deployment: str, after: int, host: str | None,
                      follow: bool) -> Iterator[dict[str, Any]]:
        self._no_socket_file()
        params: dict[str, Any] = {"after": after, "follow": follow}
        if host:
            params["host"] = host
        try:
            with self._http.stream("GET", f"/v1/deployments/{_q(deployment)}/events",
                                   params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            self._unavailable(exc)
        except httpx.RemoteProtocolError as exc:
            raise DaemonUnavailable(f"the daemon closed the event stream ({exc}); "
                                    f"resume with `orchestrator logs {deployment} --follow`"
                                    ) from None


def _q(segment: str) -> str:
    """A user-given id as one URL path segment (a `/` in it cannot reach another route)."""
    return quote(segment, safe="")


def check(response: httpx.Response) -> None:
    """Raise the orchestrator error an error response stands for."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
        message = str(body.get("error") or body)
    except ValueError:
        message = response.text.strip()[:500] or response.reason_phrase
    kind = _STATUS_ERRORS.get(response.status_code, OrchestratorError)
    raise kind(f"{message} (HTTP {response.status_code})")


def print_events(client: Client, deployment: str, *, follow: bool, host: str | None = None,
                 as_json: bool = False, quiet: bool = False,
                 out: IO[str] | None = None) -> FollowView | None:
    """Print the events (one JSON line each with `as_json`), following until the end. Following
    on a terminal, the live view (orchestrator/cli/follow.py) instead, returned for the caller
    to print its `ending` with the outcome (None otherwise)."""
    out = out or sys.stdout
    colour = use_colour(out)
    terminal = bool(getattr(out, "isatty", lambda: False)())
    live = LiveFollow(out, colour) if follow and terminal and not as_json and not quiet else None
    try:
        for event in client.events(deployment, host=host, follow=follow):
            if quiet:
                continue
            if live is not None:
                live.show(event)
                continue
            print(json.dumps(event, separators=(",", ":")) if as_json
                  else event_line(event, colour=colour), file=out, flush=True)
    finally:
        view = live.close() if live is not None else None
    return view


def wait_for_end(client: Client, deployment: str, *, show: bool, as_json: bool = False,
                 host: str | None = None) -> int:
    """Follow the deployment to its end (a dropped stream is resumed); the outcome's exit code
    (orchestrator/errors.py): 0 succeeded, 3 failed / rolled back / cancelled. On a terminal
    the live view ends with a summary per host and the exit code."""
    view = print_events(client, deployment, follow=True, as_json=as_json, quiet=not show,
                           host=host)
    record = client.deployment(deployment)
    if record["state"] not in FINISHED:  # the stream ended early (daemon stopping)
        raise DaemonUnavailable(f"the daemon stopped while {deployment} was {record['state']}; "
                                f"follow it again with `orchestrator logs {deployment} --follow`")
    code = exit_code(record["state"])
    if view is not None:
        print(ending(view, deployment, record["state"],
                     (record.get("result") or {}).get("reason"), code), flush=True)
    return code


#: The API's words for a deployment that is over (the states' own values).
FINISHED = frozenset(str(s) for s in DEPLOYMENT_TERMINAL)


def exit_code(state: str) -> int:
    return EXIT_OK if state == DeploymentState.SUCCEEDED else EXIT_DEPLOY_FAILED
