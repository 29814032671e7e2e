"""Every Redis client of every QueueChat process is made here, from the settings: the gateway's,
the workers' (events, heartbeats, cancel checks), the CLI's and the launcher's readiness checks.
Celery's broker follows the same settings through `QueueSettings.celery_conf()`.

    sync_client(settings)    redis.Redis           workers, `queuechat models`, the launcher
    async_client(settings)   redis.asyncio.Redis   the gateway (with `max_connections`: a bounded
                                                   pool in which a caller waits for a free connection)

With `QUEUECHAT_REDIS_SENTINELS` set, a client is redis-py's Sentinel-managed master client: each
new connection first asks the Sentinels where the master named `QUEUECHAT_REDIS_MASTER` is.  After
a failover, a connection to the old master fails (refused, reset, or READONLY once it is back as a
replica), is dropped, and the next command connects to the promoted replica: no process restarts.

Importing this module opens no connection (clients connect on first use).  Not re-exported by
`protocol`, whose import stays free of redis-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.sentinel import Sentinel, SentinelConnectionPool

from protocol.settings import QueueSettings

__all__ = ["AsyncSentinelMaster", "BlockingSentinelPool", "SentinelMaster", "SyncBlockingSentinelPool", "async_client",
           "describe", "sync_client"]


class SentinelMaster(redis.Redis):
    """The master's client (sync); closing it also closes its connections to the Sentinels."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.connection_pool.sentinel_manager.close()


class AsyncSentinelMaster(redis.asyncio.Redis):
    """The master's client (asyncio); closing it also closes its connections to the Sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            await self.connection_pool.sentinel_manager.aclose()


class BlockingSentinelPool(AsyncSentinelConnectionPool, redis.asyncio.BlockingConnectionPool):
    """The Sentinel-managed master pool, bounded like the gateway's plain one: at most
    `max_connections` connections, and a caller waits up to `timeout` seconds for one to come
    free (then ConnectionError) instead of failing at once.  The Sentinel pool decides where a
    connection goes, the blocking pool how many there are; their methods do not overlap."""


class SyncBlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """`BlockingSentinelPool` for the sync client (a worker's task threads share it)."""


@dataclass(frozen=True)
class _Family:
    """The redis-py classes of one flavour (sync or asyncio): everything else is the same."""

    client: type
    blocking_pool: type
    sentinel: type
    master: type
    blocking_sentinel_pool: type


def _client(family: _Family, settings: QueueSettings, max_connections: int | None, timeout: float | None,
            options: dict[str, Any]) -> Any:  # fmt: skip
    if not settings.redis_sentinels:
        url = settings.direct_redis_url()
        if max_connections is None:
            return family.client.from_url(url, **options)
        pool = family.blocking_pool.from_url(url, max_connections=max_connections, timeout=timeout, **options)
        return family.client.from_pool(pool)
    sentinel = family.sentinel(settings.sentinels(), **_sentinel_options(settings, options))
    bounded = {} if max_connections is None else {"connection_pool_class": family.blocking_sentinel_pool,
                                                  "max_connections": max_connections, "timeout": timeout}  # fmt: skip
    return sentinel.master_for(settings.redis_master, redis_class=family.master, **bounded)


_SYNC = _Family(redis.Redis, redis.BlockingConnectionPool, Sentinel, SentinelMaster, SyncBlockingSentinelPool)
_ASYNC = _Family(redis.asyncio.Redis, redis.asyncio.BlockingConnectionPool, AsyncSentinel, AsyncSentinelMaster,
                 BlockingSentinelPool)  # fmt: skip


def sync_client(settings: QueueSettings, *, max_connections: int | None = None, timeout: float | None = 30,
                **options: Any) -> redis.Redis:  # fmt: skip
    """A client of the Redis the settings name; `options` are redis-py connection options
    (socket_timeout=...).  With `max_connections`, a thread waits up to `timeout` seconds for a
    free connection once that many are in use."""
    return _client(_SYNC, settings, max_connections, timeout, options)


def async_client(settings: QueueSettings, *, max_connections: int | None = None, timeout: float | None = 10,
                 **options: Any) -> redis.asyncio.Redis:  # fmt: skip
    """An asyncio client of the Redis the settings name.  With `max_connections`, its pool holds
    at most that many and a caller waits up to `timeout` seconds for one; `aclose()` closes it all."""
    return _client(_ASYNC, settings, max_connections, timeout, options)


def describe(settings: QueueSettings) -> str:
    """Where Redis is, for messages: no password."""
    if settings.redis_sentinels:
        return f"the master '{settings.redis_master}' of the Sentinels at {settings.redis_sentinels}"
    url = settings.redis_url
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


def _sentinel_options(settings: QueueSettings, options: dict[str, Any]) -> dict[str, Any]:
    """redis-py's Sentinel(...) keywords: how to reach the Sentinels, then the master's
    connection options (database, credentials, the caller's socket options)."""
    username, password = settings.redis_credentials()
    master = {"db": settings.redis_db(), "username": username, "password": password, **options}
    return {"sentinel_kwargs": settings.sentinel_kwargs(), **master}
