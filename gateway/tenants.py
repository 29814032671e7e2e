"""API keys as tenants, and fair share between them.

The keys file holds one key per line, optionally followed by attributes:

    sk-alice  name=alice  weight=2  max_concurrent=8
    sk-nightly name=etl priority=batch

`name` labels the key in metrics and logs (default `key-<n>`); `priority` is its class,
`interactive` (default) or `batch` (its requests wait behind every interactive one, like batch
lines); `max_concurrent` bounds its requests in flight over every gateway (more get 429 with
Retry-After); `weight` is its share against other keys of its class.

Fair share is decided when a request is queued, with the Redis transport's priority lists (0 is
served first).  A key's share of a model is its weight's part of the model's batch slots (over
its live workers), among the keys of its class: while its requests in flight for that model stay
within its share it queues at priority 0, up to four shares at 3, beyond (a flood) at 6;
batch-class keys at 9.  A steady key's request thus starts before a flooding key's backlog,
whoever sent first.  The counts are sorted sets of
request ids with a deadline, so a gateway that dies leaves nothing counted for long.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from gateway.errors import RateLimited
from protocol import KEY_PREFIX, slots_key

PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's Redis transport: one list per step, popped in this order
BATCH_PRIORITY = 9
COUNT_SECONDS = 3600  # a request counts as in flight at most this long (a dead gateway's expire)


@dataclass(frozen=True)
class Tenant:
    key: str
    name: str
    priority: Literal["interactive", "batch"] = "interactive"
    max_concurrent: int | None = None
    weight: float = 1.0


current_tenant: ContextVar[Tenant | None] = ContextVar("queuechat_tenant", default=None)  # set by the key check


def parse_keys(lines: list[str]) -> list[Tenant]:
    """Tenants from `key attr=value ...` lines (blank lines and # comments skipped)."""
    tenants = []
    for number, line in enumerate(lines, 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        attrs = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
        unknown = set(attrs) - {"name", "priority", "max_concurrent", "weight"}
        bad = [p for p in parts[1:] if "=" not in p]
        if unknown or bad:
            raise ValueError(f"keys file line {number}: unknown attribute(s) {sorted(unknown) or bad}")
        priority = attrs.get("priority", "interactive")
        if priority not in ("interactive", "batch"):
            raise ValueError(f"keys file line {number}: priority is interactive or batch")
        tenants.append(Tenant(key=parts[0], name=attrs.get("name", f"key-{len(tenants) + 1}"), priority=priority,  # type: ignore[arg-type]
                              max_concurrent=int(attrs["max_concurrent"]) if "max_concurrent" in attrs else None,
                              weight=float(attrs.get("weight", 1.0))))  # fmt: skip
    return tenants


class FairShare:
    def __init__(self, redis: Redis, tenants: list[Tenant]) -> None:
        self.redis = redis
        self.tenants = {t.name: t for t in tenants}

    def _key(self, name: str, model: str | None = None) -> str:
        return f"{KEY_PREFIX}tenant:{name}" + (f":{model}" if model else "")

    async def admit(self, tenant: Tenant, model: str, request_id: str) -> int:
        """Count the request for its key (429 past max_concurrent); the priority to queue it at."""
        now = time.time()
        mine, per_model = self._key(tenant.name), self._key(tenant.name, model)
        pipe = self.redis.pipeline(transaction=False)
        for key in (mine, per_model):
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {request_id: now + COUNT_SECONDS})
            pipe.expire(key, COUNT_SECONDS)
        pipe.zcard(mine)
        pipe.zcard(per_model)
        pipe.hvals(slots_key(model))
        replies = await pipe.execute()
        total, for_model, slots = replies[6], replies[7], replies[8]
        if tenant.max_concurrent is not None and total > tenant.max_concurrent:
            await self.release(tenant, model, request_id)
            raise RateLimited(f"This API key ({tenant.name}) has {tenant.max_concurrent} requests in flight, its "
                              "limit; retry when one ends.", headers={"Retry-After": "1"},
                              code="too_many_concurrent_requests")  # fmt: skip
        if tenant.priority == "batch":
            return BATCH_PRIORITY
        return self._level(tenant, for_model, sum(int(v.split(b"/")[1]) for v in slots if b"/" in v))

    def share(self, tenant: Tenant, slots: int) -> float:
        """The key's weighted part of `slots` among the keys of its class (at least one request)."""
        weights = sum(t.weight for t in self.tenants.values() if t.priority == tenant.priority)
        return max(1.0, slots * tenant.weight / weights)

    def _level(self, tenant: Tenant, count: int, slots: int) -> int:
        share = self.share(tenant, max(1, slots))
        return 0 if count <= share else 3 if count <= 4 * share else 6

    async def position(self, model: str, priority: int) -> int:
        """Requests ahead of one just queued at `priority`: those in the lists served before it,
        and those queued before it in its own list."""
        pipe = self.redis.pipeline(transaction=False)
        for step in PRIORITY_STEPS:
            if step <= priority:
                pipe.llen(model if step == 0 else f"{model}\x06\x16{step}")
        return max(0, sum(await pipe.execute()) - 1)

    async def release(self, tenant: Tenant, model: str, request_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self._key(tenant.name), request_id)
        pipe.zrem(self._key(tenant.name, model), request_id)
        await pipe.execute()
