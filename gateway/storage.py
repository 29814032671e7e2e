"""Where uploaded and produced files live: one small interface, two backends.

`LocalStorage` keeps them in a directory (default `~/.cache/queuechat/files`; a volume in
compose); `S3Storage` in a bucket of any S3-compatible object store (AWS S3, MinIO, Ceph…)
through boto3, for clusters where gateways run on several hosts.  Both take the content as an
async stream of chunks and give it back the same way: nothing holds a whole file in memory.
"""

from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from gateway.errors import PayloadTooLarge

CHUNK = 1 << 20  # bytes read at a time
PART = 8 << 20  # S3 multipart part size (S3 wants at least 5 MB for every part but the last)


class Storage(ABC):
    @abstractmethod
    async def write(self, name: str, chunks: AsyncIterable[bytes], limit: int) -> int:
        """Store `chunks` under `name`; the size.  Over `limit` bytes: PayloadTooLarge, nothing kept."""

    @abstractmethod
    def read(self, name: str) -> AsyncIterator[bytes]:
        """The content of `name`, chunk by chunk (FileNotFoundError when it is not there)."""

    @abstractmethod
    async def delete(self, name: str) -> None:
        """Remove `name` (no error when it is already gone)."""

    @staticmethod
    def too_large(limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"The file is larger than {limit} bytes (QUEUECHAT_MAX_UPLOAD_BYTES).")


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"not a storage name: {name!r}")
        return self.root / name

    async def write(self, name: str, chunks: AsyncIterable[bytes], limit: int) -> int:
        await anyio.to_thread.run_sync(lambda: self.root.mkdir(parents=True, exist_ok=True))
        partial = self.root / f".partial-{uuid.uuid4().hex}"  # appears under its name only when whole
        size = 0
        handle = await anyio.to_thread.run_sync(partial.open, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise self.too_large(limit)
                await anyio.to_thread.run_sync(handle.write, chunk)
            await anyio.to_thread.run_sync(handle.close)
            await anyio.to_thread.run_sync(os.replace, partial, self._path(name))
        except BaseException:
            handle.close()
            partial.unlink(missing_ok=True)
            raise
        return size

    async def read(self, name: str) -> AsyncIterator[bytes]:
        handle = await anyio.to_thread.run_sync(self._path(name).open, "rb")
        try:
            while chunk := await anyio.to_thread.run_sync(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    async def delete(self, name: str) -> None:
        await anyio.to_thread.run_sync(lambda: self._path(name).unlink(missing_ok=True))


class S3Storage(Storage):
    """Objects `<prefix><name>` in `bucket`; credentials and region as boto3 finds them (the
    AWS_* environment variables, a profile, an instance role)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client: Any = None) -> None:
        import boto3  # only where S3 is configured

        self.bucket = bucket
        self.prefix = prefix
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def _call(self, method: str, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: getattr(self.client, method)(**kwargs))

    async def write(self, name: str, chunks: AsyncIterable[bytes], limit: int) -> int:
        """One PUT for a small file; a multipart upload (8 MB parts) for a large one, aborted
        when anything fails, so a half-written object never appears."""
        key, buffer, size = self._key(name), bytearray(), 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise self.too_large(limit)
                buffer += chunk
                if len(buffer) >= PART:
                    if upload_id is None:
                        upload_id = (await self._call("create_multipart_upload", Bucket=self.bucket, Key=key))["UploadId"]
                    reply = await self._call("upload_part", Bucket=self.bucket, Key=key, UploadId=upload_id,
                                             PartNumber=len(parts) + 1, Body=bytes(buffer))  # fmt: skip
                    parts.append({"PartNumber": len(parts) + 1, "ETag": reply["ETag"]})
                    buffer.clear()
            if upload_id is None:
                await self._call("put_object", Bucket=self.bucket, Key=key, Body=bytes(buffer))
                return size
            if buffer:
                reply = await self._call("upload_part", Bucket=self.bucket, Key=key, UploadId=upload_id,
                                         PartNumber=len(parts) + 1, Body=bytes(buffer))  # fmt: skip
                parts.append({"PartNumber": len(parts) + 1, "ETag": reply["ETag"]})
            await self._call("complete_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id,
                             MultipartUpload={"Parts": parts})  # fmt: skip
            return size
        except BaseException:
            if upload_id is not None:
                with anyio.CancelScope(shield=True):
                    await self._call("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    async def read(self, name: str) -> AsyncIterator[bytes]:
        try:
            reply = await self._call("get_object", Bucket=self.bucket, Key=self._key(name))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(name) from None
        body = reply["Body"]
        try:
            while chunk := await anyio.to_thread.run_sync(body.read, CHUNK):
                yield chunk
        finally:
            body.close()

    async def delete(self, name: str) -> None:
        await self._call("delete_object", Bucket=self.bucket, Key=self._key(name))
