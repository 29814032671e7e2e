"""The Files API through the official SDK, on both storage backends: a local directory (the
stack's) and a real S3-compatible server (moto's standalone server) with multipart uploads.
Uploads are streamed: the gateway's memory does not grow with the file."""

from __future__ import annotations

import os
from collections.abc import Iterator

import boto3
import httpx
import openai
import psutil
import pytest

from tests.integration.processes import BIN, Gateway, Process, free_port, wait_for
from tests.spec import assert_valid

LINES = b"".join(b'{"custom_id": "r%d", "method": "POST", "url": "/v1/chat/completions"}\n' % i for i in range(50))


def _sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _round_trip(gateway: Gateway, content: bytes, name: str = "lines.jsonl") -> str:
    client = _sdk(gateway)
    made = client.files.create(file=(name, content), purpose="batch")
    raw = httpx.get(f"{gateway.base_url}/v1/files/{made.id}").json()
    assert_valid(raw, "OpenAIFile")
    assert raw["bytes"] == len(content) and raw["filename"] == name and raw["purpose"] == "batch"
    assert client.files.content(made.id).content == content
    listed = httpx.get(f"{gateway.base_url}/v1/files", params={"purpose": "batch"}).json()
    assert_valid(listed, "ListFilesResponse")
    assert made.id in [f["id"] for f in listed["data"]]
    assert made.id not in [f.id for f in client.files.list(purpose="user_data")]
    return made.id


def _delete(gateway: Gateway, file_id: str) -> None:
    deleted = httpx.delete(f"{gateway.base_url}/v1/files/{file_id}").json()
    assert_valid(deleted, "DeleteFileResponse")
    assert deleted == {"id": file_id, "object": "file", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        _sdk(gateway).files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        _sdk(gateway).files.content(file_id)


def test_files_on_the_local_backend(gateway, workdir) -> None:
    file_id = _round_trip(gateway, LINES)
    assert (workdir / "files" / file_id).read_bytes() == LINES
    _delete(gateway, file_id)
    assert not (workdir / "files" / file_id).exists()


def test_an_upload_past_the_body_limit_streams_to_disk_and_one_past_the_upload_limit_is_413(env, workdir) -> None:
    small = Gateway({**env, "QUEUECHAT_MAX_UPLOAD_BYTES": str(40 << 20)}, workdir)
    try:
        process = psutil.Process(small.pid)
        before = process.memory_info().rss
        big = os.urandom(32 << 20)  # 32 MB: 32 times the JSON body limit
        file_id = _round_trip(small, big, "big.bin")
        grown = process.memory_info().rss - before
        assert grown < 24 << 20, f"the gateway grew by {grown >> 20} MB for a 32 MB upload"
        _delete(small, file_id)
        with pytest.raises(openai.APIStatusError) as error:
            _sdk(small).files.create(file=("huge.bin", os.urandom(41 << 20)), purpose="batch")
        assert error.value.status_code == 413
    finally:
        small.stop()


@pytest.mark.parametrize("data,files,param", [
    ({"purpose": "fine-tune"}, {"file": ("a.jsonl", b"{}")}, "purpose"),
    ({"purpose": "batch"}, None, "file"),
    ({"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "5"},
     {"file": ("a.jsonl", b"{}")}, "expires_after.seconds"),
])  # fmt: skip
def test_bad_uploads_are_a_400_naming_the_field(gateway, data, files, param) -> None:
    reply = httpx.post(f"{gateway.base_url}/v1/files", data=data, files=files or {"x": ("x", b"")})
    assert reply.status_code == 400, reply.text
    assert_valid(reply.json(), "ErrorResponse")
    assert reply.json()["error"]["param"] == param


@pytest.fixture(scope="module")
def s3_server(workdir) -> Iterator[str]:
    """moto's standalone S3-compatible server, a real HTTP server in its own process."""
    port = free_port()
    server = Process([BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)], workdir / f"moto-{port}.log")
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, "moto_server", 30, server)
        yield url
    finally:
        server.stop()


def test_files_on_an_s3_compatible_server(env, workdir, s3_server) -> None:
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")  # fmt: skip
    s3.create_bucket(Bucket="queuechat-files")
    gateway = Gateway({**env, **credentials, "QUEUECHAT_FILES_S3_BUCKET": "queuechat-files",
                       "QUEUECHAT_FILES_S3_ENDPOINT": s3_server}, workdir)  # fmt: skip
    try:
        small = _round_trip(gateway, LINES)
        big_content = os.urandom(20 << 20)  # three 8 MB parts: a multipart upload
        big = _round_trip(gateway, big_content, "big.bin")
        keys = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="queuechat-files")["Contents"]}
        assert keys == {f"queuechat/files/{small}": len(LINES), f"queuechat/files/{big}": len(big_content)}
        assert s3.list_multipart_uploads(Bucket="queuechat-files").get("Uploads", []) == []  # none left open
        for file_id in (small, big):
            _delete(gateway, file_id)
        assert s3.list_objects_v2(Bucket="queuechat-files").get("Contents", []) == []
    finally:
        gateway.stop()
