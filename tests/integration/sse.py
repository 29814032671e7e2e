"""Read a streamed response at the wire level: every `data:` payload, in order."""

from __future__ import annotations

import json

import httpx


def post_stream(base_url: str, path: str, body: dict) -> tuple[int, list[str], httpx.Headers]:
    """POST with stream=true; returns status, the raw `data:` payloads and headers."""
    payloads: list[str] = []
    with httpx.stream("POST", f"{base_url}{path}", json=body, timeout=60) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, [response.text], response.headers
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                payloads.append(line[len("data: "):])
            else:
                assert line == "" or line.startswith((":", "id: ", "event: ")), f"unexpected SSE line {line!r}"
    return 200, payloads, response.headers


def chunks(payloads: list[str]) -> list[dict]:
    """The JSON chunks, checking that the stream ends with exactly one [DONE]."""
    assert payloads and payloads[-1] == "[DONE]", payloads[-3:]
    assert payloads.count("[DONE]") == 1
    return [json.loads(p) for p in payloads[:-1]]


def sse_messages(lines, limit: int | None = None) -> list[dict[str, str]]:
    """The SSE messages in `lines` (an iterator of text lines), each a dict of its fields (`id`,
    `event`, `data`), up to `limit` messages; the iterator is left where reading stopped."""
    messages: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in lines:
        if line == "":
            if current:
                messages.append(current)
                current = {}
                if limit is not None and len(messages) >= limit:
                    break
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        current[name] = value
    if current:
        messages.append(current)
    return messages
