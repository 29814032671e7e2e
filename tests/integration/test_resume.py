"""Kept streams outlive their connection: a client drops a stream on one gateway and resumes it
on another (Last-Event-ID or ?starting_after), getting exactly the events it missed; stored chat
completions are retrievable, listed and deleted; an unkept stream is still cancelled on disconnect."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from protocol import DoneEvent, ErrorEvent, decode_event, event_log_key, job_record_key
from tests.integration.processes import eventually
from tests.integration.sse import sse_messages
from tests.spec import assert_valid

GRACE = {"X-QueueChat-Detach-Grace": "30"}


def _position(event_id: str, response_id: str) -> str:
    owner, _, position = event_id.rpartition(":")
    assert owner == response_id
    return position


def _text(messages: list[dict[str, str]], field: str) -> str:
    out = []
    for message in messages:
        if message["data"] == "[DONE]":
            continue
        body = json.loads(message["data"])
        for choice in body.get("choices", []):
            value = choice["delta"].get("content") if field == "chat" else choice.get("text")
            out.append(value or "")
    return "".join(out)


def _whole(base_url: str, path: str, body: dict) -> list[dict[str, str]]:
    with httpx.stream("POST", f"{base_url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200
        return sse_messages(response.iter_lines())


def _dropped(base_url: str, path: str, body: dict, keep: int, headers: dict) -> list[dict[str, str]]:
    """The first `keep` messages of a stream, then the connection is closed."""
    with httpx.stream("POST", f"{base_url}{path}", json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        return sse_messages(response.iter_lines(), limit=keep)


@pytest.mark.parametrize("path,field,body", [
    ("/v1/chat/completions", "chat", {"messages": [{"role": "user", "content": "Resume me, byte for byte."}]}),
    ("/v1/completions", "text", {"prompt": "Resume me too, byte for byte."}),
])  # fmt: skip
def test_a_dropped_stream_resumes_on_another_gateway_without_gap_or_duplicate(
    gateway, other_gateway, path, field, body
) -> None:
    request = {"model": "echo-slow", "max_tokens": 40, "temperature": 0, "stream": True, **body}
    whole = _whole(gateway.base_url, path, request)
    first = _dropped(gateway.base_url, path, request, keep=6, headers=GRACE)
    response_id = first[0]["id"].rpartition(":")[0]
    dropped_at = time.monotonic()
    with httpx.stream("GET", f"{other_gateway.base_url}{path}/{response_id}/events",
                      headers={"Last-Event-ID": first[-1]["id"]}, timeout=60) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()
        rest = sse_messages(lines, limit=1)
        resumed_after = time.monotonic() - dropped_at
        rest += sse_messages(lines)
    assert rest[-1]["data"] == "[DONE]"
    whole_id = whole[0]["id"].rpartition(":")[0]
    positions = [_position(m["id"], response_id) for m in first + rest]
    assert positions == [_position(m["id"], whole_id) for m in whole]  # none missing, none twice
    assert len(set(positions)) == len(positions)
    assert _text(first + rest, field) == _text(whole, field) != ""
    assert resumed_after < 5, resumed_after
    asked = time.monotonic()  # again, from the first event: what comes first is replayed from the log
    with httpx.stream("GET", f"{gateway.base_url}{path}/{response_id}/events",
                      headers={"Last-Event-ID": first[0]["id"]}, timeout=60) as response:  # fmt: skip
        lines = response.iter_lines()
        again = sse_messages(lines, limit=1)
        replayed_after = time.monotonic() - asked
        again += sse_messages(lines)
    assert [m["id"] for m in again] == [m["id"] for m in first[1:] + rest]
    print(f"after the drop: next new chunk in {resumed_after * 1000:.0f} ms (a 50 ms decode step);"
          f" a chunk already logged in {replayed_after * 1000:.0f} ms")


def test_starting_after_resumes_after_every_chunk_of_that_event(gateway, other_gateway) -> None:
    request = {"model": "echo-slow", "max_tokens": 12, "temperature": 0, "stream": True,
               "messages": [{"role": "user", "content": "abcdefghijklmnop"}]}  # fmt: skip
    first = _dropped(gateway.base_url, "/v1/chat/completions", request, keep=3, headers=GRACE)
    response_id, _, position = first[-1]["id"].rpartition(":")
    seq = int(position.split(".")[0])
    with httpx.stream("GET", f"{other_gateway.base_url}/v1/chat/completions/{response_id}/events",
                      params={"starting_after": seq}, timeout=60) as response:  # fmt: skip
        rest = sse_messages(response.iter_lines())
    assert all(int(_position(m["id"], response_id).split(".")[0]) > seq for m in rest)
    assert rest[-1]["data"] == "[DONE]"


def test_without_keeping_a_dropped_stream_is_cancelled_and_cannot_be_resumed(gateway, redis_server, slow_worker) -> None:
    request = {"model": "echo-slow", "max_tokens": 200, "temperature": 0, "stream": True,
               "messages": [{"role": "user", "content": "cancel me"}]}  # fmt: skip
    first = _dropped(gateway.base_url, "/v1/chat/completions", request, keep=3, headers={})
    response_id = first[0]["id"].rpartition(":")[0]
    reply = httpx.get(f"{gateway.base_url}/v1/chat/completions/{response_id}/events", timeout=10)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"
    assert not redis_server.client.exists(event_log_key(response_id))  # an unkept job writes no log


def test_a_detached_job_nobody_comes_back_for_is_cancelled_after_its_grace(gateway, redis_server, slow_worker) -> None:
    request = {"model": "echo-slow", "max_tokens": 400, "temperature": 0, "stream": True,
               "messages": [{"role": "user", "content": "come back for me"}]}  # fmt: skip
    first = _dropped(gateway.base_url, "/v1/chat/completions", request, keep=3,
                     headers={"X-QueueChat-Detach-Grace": "1"})  # fmt: skip
    response_id = first[0]["id"].rpartition(":")[0]
    log = event_log_key(response_id)

    def last_event():
        entries = redis_server.client.xrevrange(log, count=1)
        return decode_event(entries[0][1][b"event"]) if entries else None

    assert eventually(lambda: isinstance(last_event(), ErrorEvent), timeout=10)  # 400 tokens take 20 s
    assert last_event().code == "cancelled"


def test_a_bad_last_event_id_or_grace_is_a_400(gateway, other_gateway) -> None:
    reply = httpx.post(f"{gateway.base_url}/v1/chat/completions", headers={"X-QueueChat-Detach-Grace": "soon"},
                       json={"model": "echo-slow", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "X-QueueChat-Detach-Grace"
    first = _dropped(gateway.base_url, "/v1/chat/completions",
                     {"model": "echo-slow", "max_tokens": 4, "stream": True,
                      "messages": [{"role": "user", "content": "x"}]}, keep=1, headers=GRACE)  # fmt: skip
    response_id = first[0]["id"].rpartition(":")[0]
    reply = httpx.get(f"{other_gateway.base_url}/v1/chat/completions/{response_id}/events",
                      headers={"Last-Event-ID": "chatcmpl-other:3"})  # fmt: skip
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "Last-Event-ID"


def test_stored_chat_completions_are_retrieved_listed_updated_and_deleted(gateway, other_gateway, redis_server) -> None:
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    other = openai.OpenAI(base_url=f"{other_gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    tag = f"t{time.time_ns()}"
    made = client.chat.completions.create(model="echo-slow", max_tokens=6, temperature=0, store=True,
                                          metadata={"tag": tag}, messages=[{"role": "user", "content": "keep this"}])  # fmt: skip
    plain = client.chat.completions.create(model="echo-slow", max_tokens=6, temperature=0,
                                           messages=[{"role": "user", "content": "not kept"}])  # fmt: skip
    got = other.chat.completions.retrieve(made.id)
    assert got.choices[0].message.content == made.choices[0].message.content
    assert got.usage.completion_tokens == made.usage.completion_tokens
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.retrieve(plain.id)
    listed = other.chat.completions.list(metadata={"tag": tag})
    assert [c.id for c in listed.data] == [made.id]
    messages = other.chat.completions.messages.list(made.id)
    assert [m.content for m in messages.data] == ["keep this"]
    updated = other.chat.completions.update(made.id, metadata={"tag": tag, "seen": "yes"})
    assert updated.id == made.id
    assert [c.id for c in other.chat.completions.list(metadata={"seen": "yes", "tag": tag}).data] == [made.id]
    listed_raw = httpx.get(f"{other_gateway.base_url}/v1/chat/completions", params={"metadata[tag]": tag}).json()
    assert_valid(listed_raw, "ChatCompletionList")
    assert_valid(httpx.get(f"{other_gateway.base_url}/v1/chat/completions/{made.id}").json(),
                 "CreateChatCompletionResponse")  # fmt: skip
    deleted = httpx.delete(f"{other_gateway.base_url}/v1/chat/completions/{made.id}").json()
    assert_valid(deleted, "ChatCompletionDeleted")
    assert deleted["deleted"] and deleted["id"] == made.id
    assert not redis_server.client.exists(job_record_key(made.id), event_log_key(made.id))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(made.id)


def test_a_stored_completion_runs_on_when_its_client_leaves(gateway, redis_server, slow_worker) -> None:
    request = {"model": "echo-slow", "max_tokens": 30, "temperature": 0, "stream": True, "store": True,
               "messages": [{"role": "user", "content": "finish without me"}]}  # fmt: skip
    first = _dropped(gateway.base_url, "/v1/chat/completions", request, keep=2, headers={})
    response_id = first[0]["id"].rpartition(":")[0]

    def finished() -> bool:
        entries = redis_server.client.xrevrange(event_log_key(response_id), count=1)
        return bool(entries) and isinstance(decode_event(entries[0][1][b"event"]), DoneEvent)

    assert eventually(finished, timeout=15)
    body = httpx.get(f"{gateway.base_url}/v1/chat/completions/{response_id}").json()
    assert body["usage"]["completion_tokens"] == 30
