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
                assert line == "" or line.startswith(":"), f"unexpected SSE line {line!r}"
    return 200, payloads, response.headers


def chunks(payloads: list[str]) -> list[dict]:
    """The JSON chunks, checking that the stream ends with exactly one [DONE]."""
    assert payloads and payloads[-1] == "[DONE]", payloads[-3:]
    assert payloads.count("[DONE]") == 1
    return [json.loads(p) for p in payloads[:-1]]
