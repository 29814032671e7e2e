"""Files (`/v1/files`): their records in Redis, their content in the file storage
(`gateway.storage`).  A file lives until it is deleted, or until its `expires_at` when it was
uploaded with `expires_after` (or produced with an expiry, as batch results are)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Literal

from pydantic import BaseModel
from redis.asyncio import Redis

from gateway.listing import ids_after
from gateway.storage import Storage
from protocol import FILES_INDEX_KEY, file_record_key

Purpose = Literal["batch", "batch_output", "user_data"]


class FileRecord(BaseModel):
    """OpenAI's File object (`body()`: as the API shows it, without an unset expiry)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Purpose
    expires_at: int | None = None
    status: Literal["processed"] = "processed"

    def body(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


class Files:
    def __init__(self, redis: Redis, storage: Storage, max_bytes: int) -> None:
        self.redis = redis
        self.storage = storage
        self.max_bytes = max_bytes

    async def create(self, content: AsyncIterable[bytes], filename: str, purpose: Purpose,
                     expires_in: int | None = None) -> FileRecord:  # fmt: skip
        """Store `content` as a new file; its record appears once the content is whole."""
        file_id = f"file-{uuid.uuid4().hex}"
        size = await self.storage.write(file_id, content, self.max_bytes)
        now = int(time.time())
        record = FileRecord(id=file_id, bytes=size, created_at=now, filename=filename, purpose=purpose,
                            expires_at=now + expires_in if expires_in else None)  # fmt: skip
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(file_record_key(file_id), record.model_dump_json(), ex=expires_in)
        pipe.zadd(FILES_INDEX_KEY, {file_id: now})
        await pipe.execute()
        return record

    async def get(self, file_id: str) -> FileRecord | None:
        raw = await self.redis.get(file_record_key(file_id))
        return FileRecord.model_validate_json(raw) if raw is not None else None

    def content(self, record: FileRecord) -> AsyncIterator[bytes]:
        return self.storage.read(record.id)

    async def delete(self, file_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(file_record_key(file_id))
        pipe.zrem(FILES_INDEX_KEY, file_id)
        await pipe.execute()
        await self.storage.delete(file_id)

    async def page(self, purpose: str | None, after: str | None, limit: int, order: str) -> list[FileRecord]:
        """Files in creation order (`asc`/`desc`) after the id `after`: up to limit + 1 (one more
        says there are more)."""
        found: list[FileRecord] = []
        for file_id in await ids_after(self.redis, FILES_INDEX_KEY, after, desc=order == "desc"):
            record = await self.get(file_id)
            if record is not None and (purpose is None or record.purpose == purpose):
                found.append(record)
                if len(found) > limit:
                    break
        return found

    async def sweep(self) -> int:
        """Delete the content of files whose record expired; how many."""
        gone = 0
        for raw in await self.redis.zrange(FILES_INDEX_KEY, 0, -1):
            file_id = raw.decode()
            if not await self.redis.exists(file_record_key(file_id)):
                await self.delete(file_id)
                gone += 1
        return gone
