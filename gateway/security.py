"""API keys and the request body's size and time limits, as ASGI middleware: no route can
forget them.

Keys are compared in constant time (every key is checked, whatever matches).  `/health` stays
open so load balancers and orchestrators can probe it.  A body must arrive whole within
`body_timeout` seconds of the request's start, else 408 (a slow client cannot hold a connection
and a task forever; the headers' own limit is in gateway/connections.py).
"""

from __future__ import annotations

import hmac
import time

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError, PayloadTooLarge, Unauthorized
from gateway.tenants import Tenant, current_tenant

OPEN_PATHS = frozenset({"/", "/health", "/metrics"})  # probes and scrapers; keep /metrics off the public network


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


def matching(presented: bytes, keys: list[bytes]) -> int | None:
    """The index of the key `presented` is, comparing with every key (constant time)."""
    found = None
    for index, key in enumerate(keys):
        if hmac.compare_digest(presented, key):
            found = index
    return found


class GuardMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str] | list[Tenant], max_body_bytes: int, body_timeout: float = 30.0,
                 uploads: dict[str, tuple[int, float]] | None = None) -> None:  # fmt: skip
        """`keys`: the API keys (or tenants); `uploads`: paths (POST /v1/files) with their own body
        size and time limits.  The matching key's tenant is `current_tenant` while the request runs."""
        self.app = app
        self.tenants = [k if isinstance(k, Tenant) else Tenant(key=k, name=f"key-{i + 1}") for i, k in enumerate(keys)]
        self.keys = [t.key.encode() for t in self.tenants]
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.uploads = uploads or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.keys and scope["path"] not in OPEN_PATHS:
            auth = _header(scope, b"authorization") or b""
            scheme, _, token = auth.partition(b" ")
            index = matching(token.strip(), self.keys) if scheme.lower() == b"bearer" else None
            if index is None:
                error = Unauthorized("Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.")
                await self._reject(error, scope, receive, send)
                return
            current_tenant.set(self.tenants[index])
        limit, timeout = self.uploads.get(scope["path"], (self.max_body_bytes, self.body_timeout))
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._reject(self._too_large(limit), scope, receive, send)
            return
        await self._call_counting(scope, receive, send, limit, timeout)

    async def _call_counting(self, scope: Scope, receive: Receive, send: Send, limit: int, timeout: float) -> None:
        """Bodies without a Content-Length (chunked) are counted as they arrive, and every body
        is timed until its last byte; the error handlers turn the HTTPException raised while the
        body is read into a 413 or 408 in OpenAI's shape."""
        seen, whole = 0, False
        deadline = time.monotonic() + timeout

        async def counting_receive() -> Message:
            nonlocal seen, whole
            if whole:  # after the body only a disconnect can come: no time limit on waiting for it
                return await receive()
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())) as timer:
                message = await receive()
            if timer.cancelled_caught:
                raise HTTPException(408, f"The request body did not arrive within {timeout:g} s.",
                                    headers={"Connection": "close"})  # fmt: skip
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, self._too_large(limit).message)
                whole = not message.get("more_body", False)
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    def _too_large(limit: int) -> APIError:
        return PayloadTooLarge(f"The request body is larger than {limit} bytes.")

    @staticmethod
    async def _reject(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
        await error.response()(scope, receive, send)
