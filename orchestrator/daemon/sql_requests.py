"""Requests: an action on a deployment (pause, resume, abort, cancel, rollback) that a client
asked of one daemon while another works on it, as rows of the store (the `requests` table of
orchestrator/daemon/schema.py). The asker writes one (`ask`) and reads its answer
(`answer_of`); the daemon holding the deployment's lease reads the open ones (`open_requests`)
and answers each once (`answer`: the first answer stands). daemon/routing.py is the logic.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, Any]
Exec = Callable[[str, Sequence[Any]], list[Row]]


@dataclass(frozen=True)
class Request:
    id: str
    deployment: str
    action: str
    arg: str | None
    created: float


@dataclass(frozen=True)
class Answer:
    status: int  # an HTTP status: 200, or the error's (409 refused, 404 unknown, ...)
    error: str | None


class RequestRows:
    """The request queries, mixed into SqlStore (which supplies the connections)."""

    def _tx(self) -> AbstractContextManager[Exec]:
        raise NotImplementedError

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def ask(self, deployment: str, action: str, arg: str | None = None) -> str:
        """Record an action for the deployment's holder; returns the request's id."""
        request = uuid.uuid4().hex
        with self._tx() as q:
            q("INSERT INTO requests (id, deployment, action, arg, created) VALUES (?, ?, ?, ?, ?)",
              (request, deployment, action, arg, time.time()))
        return request

    def open_requests(self) -> list[Request]:
        """Every request not answered yet, oldest first."""
        return [Request(r["id"], r["deployment"], r["action"], r["arg"], float(r["created"]))
                for r in self._rows("SELECT id, deployment, action, arg, created FROM requests "
                                    "WHERE answered IS NULL ORDER BY created")]

    def answer(self, request: str, status: int, error: str | None = None) -> bool:
        """Answer a request; False when it already had an answer (that one stands)."""
        with self._tx() as q:
            return bool(q("UPDATE requests SET answered = ?, status = ?, error = ? "
                          "WHERE id = ? AND answered IS NULL RETURNING id",
                          (time.time(), status, error, request)))

    def answer_of(self, request: str) -> Answer | None:
        rows = self._rows("SELECT status, error FROM requests WHERE id = ? AND answered IS NOT "
                          "NULL", (request,))
        return Answer(int(rows[0]["status"]), rows[0]["error"]) if rows else None


__all__ = ["Answer", "Request", "RequestRows"]
