"""One-off HTTP calls from the benchmark itself (log in, check, revoke): stdlib ``http.client``
on 127.0.0.1, keep-alive when the caller keeps the connection. The load is wrk's, not this."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from benchkit.procs import HOST, BenchError


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A keep-alive connection to one port; reconnects once if the server closed it."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self._conn = http.client.HTTPConnection(HOST, port, timeout=timeout)

    def call(
        self,
        method: str,
        path: str,
        *,
        form: dict[str, str] | None = None,
        json_body: Any = None,
        bearer: str | None = None,
    ) -> Answer:
        headers = {"Accept": "application/json"}
        body: bytes | None = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        for attempt in range(2):
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                return Answer(response.status, response.read())
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._conn.close()


def call(port: int, method: str, path: str, **kwargs: Any) -> Answer:
    """One request on a connection of its own."""
    client = Client(port)
    try:
        return client.call(method, path, **kwargs)
    finally:
        client.close()


def expect(answer: Answer, status: int, what: str) -> Answer:
    if answer.status != status:
        text = answer.body[:300].decode(errors="replace")
        raise BenchError(f"{what}: HTTP {answer.status} (expected {status}): {text}")
    return answer


def healthy(port: int, path: str = "/healthz") -> bool:
    """True when ``GET path`` answers 200 (False, not an error, while it is starting)."""
    try:
        return call(port, "GET", path).status == 200
    except (OSError, http.client.HTTPException):
        return False
