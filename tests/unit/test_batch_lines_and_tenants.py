"""Batch input lines checked as their endpoint would check them, the keys file's attributes, and
the fair-share levels a key's requests are queued at."""

from __future__ import annotations

import json

import pytest

from gateway.batches import LineError, parse_line
from gateway.settings import GatewaySettings
from gateway.tenants import FairShare, Tenant, parse_keys

SETTINGS = GatewaySettings(max_tokens_limit=100)


def line(**fields) -> bytes:
    base = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
    return json.dumps({**base, **fields}).encode()


def test_a_valid_line_becomes_a_kept_job_with_the_batch_derived_id() -> None:
    parsed = parse_line(line(), 7, "/v1/chat/completions", "batch_x", SETTINGS, set(), log_ttl=60)
    assert parsed.kind == "generate" and parsed.custom_id == "a"
    job = parsed.job_model()
    assert job.request_id == "batch_x-7" and job.log_ttl == 60 and job.messages[0].content == "hi"


@pytest.mark.parametrize("raw,code,param", [
    (b"{nope", "invalid_json", None),
    (line(custom_id=""), "missing_custom_id", "custom_id"),
    (line(method="GET"), "invalid_method", "method"),
    (line(url="/v1/embeddings"), "mismatched_url", "url"),
    (line(body={"model": "m", "messages": []}), "invalid_request", "body.messages"),
    (line(body={"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 500}),
     "invalid_request", "body.max_tokens"),
    (line(body={"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}), "invalid_request", "body.n"),
    (line(body={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}),
     "invalid_request", "body.stream"),
])  # fmt: skip
def test_bad_lines_say_why(raw: bytes, code: str, param: str | None) -> None:
    with pytest.raises(LineError) as error:
        parse_line(raw, 0, "/v1/chat/completions", "batch_x", SETTINGS, set(), log_ttl=60)
    assert error.value.code == code and error.value.param == param


def test_a_custom_id_may_appear_once() -> None:
    seen: set[str] = set()
    parse_line(line(), 0, "/v1/chat/completions", "b", SETTINGS, seen, log_ttl=60)
    with pytest.raises(LineError) as error:
        parse_line(line(), 1, "/v1/chat/completions", "b", SETTINGS, seen, log_ttl=60)
    assert error.value.code == "duplicate_custom_id"


def test_keys_file_attributes() -> None:
    tenants = parse_keys(["# comment", "", "sk-a name=alice weight=2 max_concurrent=3", "sk-b", "sk-c priority=batch"])
    assert tenants == [Tenant("sk-a", "alice", "interactive", 3, 2.0), Tenant("sk-b", "key-2"),
                       Tenant("sk-c", "key-3", "batch")]  # fmt: skip
    for bad in ("sk-x colour=red", "sk-x priority=urgent", "sk-x stray"):
        with pytest.raises(ValueError):
            parse_keys([bad])


def test_a_keys_share_follows_its_weight_and_its_excess_queues_lower() -> None:
    heavy, light = Tenant("k1", "heavy", weight=3), Tenant("k2", "light")
    fair = FairShare(redis=None, tenants=[heavy, light, Tenant("k3", "etl", "batch")])  # type: ignore[arg-type]
    assert fair.share(heavy, 8) == 6 and fair.share(light, 8) == 2  # the batch class does not count
    assert [fair._level(light, n, 8) for n in (1, 2, 3, 8, 9)] == [0, 0, 3, 3, 6]
    assert fair.share(light, 1) == 1  # at least one request at the top
