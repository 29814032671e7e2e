"""Random request bodies (hypothesis) against the real gateway and workers: never a 5xx, and every
error is in OpenAI's shape."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.spec import assert_valid

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "robot"]) | JSON},
    optional={"content": st.text(max_size=40) | st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                                                "text": st.text(max_size=20)}),
                                                         max_size=2) | JSON},
)  # fmt: skip
BODY = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tiny-a", "tiny-b", "no-such-model", ""]) | JSON,
        "messages": st.lists(MESSAGE, max_size=3) | JSON,
        "prompt": st.text(max_size=40) | st.lists(st.text(max_size=10), max_size=2) | JSON,
        "max_tokens": st.integers(-3, 12) | JSON,
        "max_completion_tokens": st.integers(-3, 12) | JSON,
        "temperature": st.floats(-1, 3, allow_nan=False) | JSON,
        "top_p": st.floats(-0.5, 1.5, allow_nan=False) | JSON,
        "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=5) | JSON,
        "seed": st.integers(-(2**70), 2**70) | JSON,
        "stream": st.booleans() | JSON,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | JSON,
        "n": st.integers(0, 3) | JSON,
        "logprobs": st.booleans() | JSON,
        "user": st.text(max_size=10) | JSON,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]), body=BODY)
def test_random_bodies_never_cause_a_server_error(gateway, path: str, body: dict) -> None:
    if isinstance(body.get("max_tokens"), int) or "max_tokens" not in body:
        body.setdefault("max_tokens", 8)  # keep generation short; other values are fuzzed
    response = httpx.post(f"{gateway.base_url}{path}", json=body, timeout=60)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code != 200:
        assert_valid(response.json(), "ErrorResponse")
    elif body.get("stream") is True:
        assert response.text.rstrip().endswith("data: [DONE]")


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_random_bytes_are_a_400_not_a_crash(gateway, raw: bytes) -> None:
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", content=raw,
                          headers={"content-type": "application/json"}, timeout=30)  # fmt: skip
    try:
        json.loads(raw)
    except ValueError:
        assert response.status_code == 400, response.text
    assert response.status_code < 500, response.text
    assert_valid(response.json(), "ErrorResponse") if response.status_code != 200 else None


@settings(max_examples=60, deadline=None)
@given(model=st.text(min_size=1, max_size=40).filter(lambda m: m.strip() == m and m not in (".", "..")))
def test_random_model_ids_are_a_clean_404(gateway, model: str) -> None:
    response = httpx.get(f"{gateway.base_url}/v1/models/{quote(model, safe='')}", timeout=30)
    if model in ("tiny-a", "tiny-b"):
        assert response.status_code == 200
    else:
        assert response.status_code in (404, 503), response.text
        assert_valid(response.json(), "ErrorResponse")


ITEM = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "input_text"]) | JSON,
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | JSON,
        "content": st.text(max_size=20) | st.lists(st.fixed_dictionaries(
            {"type": st.sampled_from(["input_text", "output_text", "input_image"]) | JSON, "text": st.text(max_size=10) | JSON}),
            max_size=2) | JSON,
        "call_id": st.text(max_size=6) | JSON, "name": st.text(max_size=6) | JSON,
        "arguments": st.text(max_size=10) | JSON, "output": st.text(max_size=10) | JSON,
    },
)  # fmt: skip
RESPONSE_BODY = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tiny-a", "no-such-model", ""]) | JSON,
        "input": st.text(max_size=30) | st.lists(ITEM, max_size=3) | JSON,
        "instructions": st.text(max_size=20) | JSON,
        "max_output_tokens": st.integers(-3, 8) | JSON,
        "temperature": st.floats(-1, 3, allow_nan=False) | JSON,
        "tools": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search"]) | JSON,
                                                 "name": st.text(max_size=6) | JSON,
                                                 "parameters": JSON}), max_size=2) | JSON,
        "tool_choice": st.sampled_from(["auto", "none", "required", "other"]) | JSON,
        "text": st.fixed_dictionaries({"format": st.fixed_dictionaries({
            "type": st.sampled_from(["text", "json_object", "json_schema", "grammar"]) | JSON,
            "name": st.text(max_size=8) | JSON, "schema": JSON})}) | JSON,
        "previous_response_id": st.text(max_size=10) | JSON,
        "store": st.booleans() | JSON, "background": st.booleans() | JSON, "stream": st.booleans() | JSON,
        "metadata": st.dictionaries(st.text(max_size=70), st.text(max_size=5), max_size=3) | JSON,
        "include": st.lists(st.sampled_from(["message.output_text.logprobs", "reasoning.encrypted_content"]),
                            max_size=2) | JSON,
        "reasoning": JSON,
    },
)  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=RESPONSE_BODY)
def test_random_responses_bodies_never_cause_a_server_error(gateway, body: dict) -> None:
    if isinstance(body.get("max_output_tokens"), int) or "max_output_tokens" not in body:
        body.setdefault("max_output_tokens", 6)
    response = httpx.post(f"{gateway.base_url}/v1/responses", json=body, timeout=60)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code != 200:
        assert_valid(response.json(), "ErrorResponse")
    elif body.get("stream") is True:
        assert '"sequence_number"' in response.text
    else:
        assert_valid(response.json(), "Response")
