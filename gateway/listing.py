"""OpenAI's list objects, and the sorted-set indexes (ids by creation time) they page through."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis


async def ids_after(redis: Redis, index: str, after: str | None, desc: bool) -> list[str]:
    """The ids of `index` in creation order (newest first with `desc`) that come after `after`
    (all of them when `after` is None, none when it is not in the index)."""
    ids = [raw.decode() for raw in await redis.zrange(index, 0, -1, desc=desc)]
    if after is None:
        return ids
    return ids[ids.index(after) + 1 :] if after in ids else []


def list_page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's list object for the `limit` items after the one whose id is `after`."""
    ids = [item["id"] for item in items]
    start = ids.index(after) + 1 if after in ids else 0
    page = items[start : start + limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(items)}  # fmt: skip
