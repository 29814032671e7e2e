"""Slow and surplus connections, handled where uvicorn reads the bytes.

uvicorn bounds how long an idle keep-alive connection may stay, but not how long a client may
take to send its request headers: a client that sends one header byte every few seconds (a
slowloris) holds its connection forever.  `GuardedH11Protocol` gives every request
`header_timeout` seconds, counted from when the connection starts waiting for it, to deliver all
its headers; after that a client that has sent part of a request gets 408 and the connection is
closed (one that sent nothing is closed silently, as an idle keep-alive connection would be).
The time to send the body is bounded in `gateway/security.py`.

Beyond `max_connections` open connections, a new connection's requests get 503
`too_many_connections` (OpenAI's error shape, `Retry-After`), and the connection is closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.errors import RequestTimeout, ServiceUnavailable


def _raw_response(status: str, body: dict[str, Any]) -> bytes:
    """A complete HTTP/1.1 response that closes the connection (written before h11 saw a request)."""
    payload = json.dumps(body).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
            "connection: close\r\n\r\n")  # fmt: skip
    return head.encode() + payload


_HEADERS_TOO_SLOW = _raw_response(
    "408 Request Timeout", RequestTimeout("The request headers did not arrive in time.").body()
)


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    error = ServiceUnavailable("This gateway has too many open connections; retry shortly or use another gateway.",
                               code="too_many_connections",
                               headers={"Retry-After": "1", "Connection": "close"})  # fmt: skip
    await error.response()(scope, receive, send)


class GuardedH11Protocol(H11Protocol):
    header_timeout: float = 10.0
    max_connections: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self.app = _over_capacity  # this connection's requests only
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Run the clock while the connection waits for a request's headers (h11 says the client
        is IDLE), from the moment it starts waiting: bytes that trickle in do not reset it."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)
        elif not waiting:
            self._stop_timer()

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        partial, _closed = self.conn.trailing_data
        if partial:
            self.transport.write(_HEADERS_TOO_SLOW)
        self.transport.close()


def guarded_protocol(header_timeout: float, max_connections: int | None) -> type[GuardedH11Protocol]:
    """uvicorn's h11 protocol with these limits (pass it as uvicorn's `http`)."""
    limits = {"header_timeout": header_timeout, "max_connections": max_connections}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), limits)
