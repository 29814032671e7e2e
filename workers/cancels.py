"""Whether the clients of a worker's running requests left: one Redis round trip per poll for
all of them, instead of one per request (a worker with hundreds of slots once spent most of its
time, and Redis most of its, on those checks)."""

from __future__ import annotations

import threading
import time

import redis

from protocol import cancel_key_for

CANCEL_POLL_SECONDS = 0.1  # how often a request's thread checks whether its client left


class CancelWatch:
    """Each request's thread asks `cancelled(request_id)` every `every` seconds; the first to ask
    once a reading is `every` old reads the cancel keys of every watched request (pipelined), the
    others use that reading.  A reading that fails raises in every thread that asks until one
    succeeds: none of them can be told about a client that left."""

    def __init__(self, client: redis.Redis, every: float) -> None:
        self._client = client
        self._every = every
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._cancelled: set[str] = set()
        self._read_at = float("-inf")
        self._error: redis.RedisError | None = None

    def watch(self, request_id: str) -> None:
        with self._lock:
            self._watched.add(request_id)

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._watched.discard(request_id)
            self._cancelled.discard(request_id)

    def cancelled(self, request_id: str) -> bool:
        with self._lock:
            if time.monotonic() - self._read_at >= self._every:
                self._read()
            if self._error is not None:
                raise self._error
            return request_id in self._cancelled

    def _read(self) -> None:
        ids = sorted(self._watched)
        self._read_at = time.monotonic()
        try:
            pipe = self._client.pipeline(transaction=False)
            for request_id in ids:
                pipe.exists(cancel_key_for(request_id))
            found = pipe.execute() if ids else []
        except redis.RedisError as exc:
            self._error = exc
            return
        self._error = None
        self._cancelled = {request_id for request_id, exists in zip(ids, found) if exists}
