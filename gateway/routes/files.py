"""The Files API: upload (multipart), list, retrieve, download and delete files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from gateway.deps import FilesDep
from gateway.errors import InvalidRequest, NotFound
from gateway.files import FileRecord, Files
from gateway.storage import CHUNK

router = APIRouter()

UPLOAD_PURPOSES = ("batch", "user_data")
MAX_EXPIRY = 30 * 86400  # OpenAI accepts expires_after up to 30 days


async def _file(files: Files, file_id: str) -> FileRecord:
    record = await files.get(file_id)
    if record is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return record


def _expiry(form: Any) -> int | None:
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at" or not isinstance(seconds, str) or not seconds.isdigit():
        raise InvalidRequest("'expires_after' is {anchor: created_at, seconds: N}.", param="expires_after")
    if not 3600 <= int(seconds) <= MAX_EXPIRY:
        raise InvalidRequest(f"'expires_after.seconds' is between 3600 and {MAX_EXPIRY}.", param="expires_after.seconds")
    return int(seconds)


@router.post("/v1/files", response_model=None)
async def upload_file(request: Request, files: FilesDep) -> Response:
    """The file part is spooled to a temporary file by the multipart parser (past 1 MB it is on
    disk), then streamed into the storage chunk by chunk."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Upload files as multipart/form-data with the fields 'file' and 'purpose'.", param="file")
    async with request.form(max_files=1, max_fields=8) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("The 'file' field (a file) is missing.", param="file")
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(f"'purpose' must be one of {', '.join(UPLOAD_PURPOSES)} on this server.",
                                 param="purpose")  # fmt: skip
        expires_in = _expiry(form)

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await upload.read(CHUNK):
                yield chunk

        record = await files.create(chunks(), upload.filename or "upload", purpose, expires_in)  # type: ignore[arg-type]
    return JSONResponse(record.body())


@router.get("/v1/files", response_model=None)
async def list_files(files: FilesDep, purpose: str | None = None, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
                     order: Literal["asc", "desc"] = "desc") -> Response:  # fmt: skip
    found = await files.page(purpose, after, limit, order)
    data = [r.body() for r in found[:limit]]
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": len(found) > limit})  # fmt: skip


@router.get("/v1/files/{file_id}", response_model=None)
async def get_file(file_id: str, files: FilesDep) -> Response:
    return JSONResponse((await _file(files, file_id)).body())


@router.get("/v1/files/{file_id}/content", response_model=None)
async def file_content(file_id: str, files: FilesDep) -> Response:
    record = await _file(files, file_id)
    content = files.content(record)
    try:
        first = await anext(content, b"")
    except FileNotFoundError:
        raise NotFound(f"The content of {file_id} is gone from the file storage.", param="file_id") from None

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for chunk in content:
            yield chunk

    return StreamingResponse(rest(), media_type="application/octet-stream",
                             headers={"Content-Length": str(record.bytes),
                                      "Content-Disposition": f'attachment; filename="{record.filename}"'})  # fmt: skip


@router.delete("/v1/files/{file_id}", response_model=None)
async def delete_file(file_id: str, files: FilesDep) -> Response:
    await _file(files, file_id)
    await files.delete(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
