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
