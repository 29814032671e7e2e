"""The gateway/worker wire protocol: jobs and events survive JSON, and invalid ones are refused."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from protocol import (
    MODELS_SEEN_KEY,
    ChatMessage,
    DoneEvent,
    ErrorEvent,
    GenerateJob,
    SamplingParams,
    StartEvent,
    TokenEvent,
    Usage,
    cancel_key_for,
    channel_for,
    decode_event,
    encode_event,
    live_workers_key,
)

EVENTS = [
    StartEvent(seq=0, worker="worker-1@host", prompt_tokens=12),
    TokenEvent(seq=1, text="Hello"),
    TokenEvent(seq=2, text=' wörld 😀 東京\n"quoted" \\ back'),
    TokenEvent(seq=3, text=""),
    DoneEvent(seq=4, finish_reason="stop", usage=Usage(prompt_tokens=12, completion_tokens=3)),
    DoneEvent(seq=4, finish_reason="length", usage=Usage(prompt_tokens=1, completion_tokens=16)),
    ErrorEvent(seq=0, code="context_length_exceeded", message="too long", param="messages"),
    ErrorEvent(seq=7, code="internal_error", message="boom"),
]


def _job(**overrides: object) -> GenerateJob:
    fields: dict[str, object] = {
        "request_id": "chatcmpl-abc",
        "model": "tiny",
        "expires_at": time.time() + 60,
    }
    fields.update(overrides)
    return GenerateJob(**fields)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{e.type}-{e.seq}")
def test_event_round_trips_through_json(event: object) -> None:
    data = encode_event(event)
    assert isinstance(data, bytes)
    decoded = decode_event(data)
    assert type(decoded) is type(event)
    assert decoded == event


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{e.type}-{e.seq}")
def test_decode_event_accepts_str_as_well_as_bytes(event: object) -> None:
    assert decode_event(encode_event(event).decode()) == event


def test_encoded_event_names_its_type() -> None:
    assert json.loads(encode_event(TokenEvent(seq=5, text="x"))) == {"type": "token", "seq": 5, "text": "x"}


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"",
        b"{}",
        b'{"type": "token", "seq": 0}',  # no text
        b'{"type": "bogus", "seq": 0, "text": "x"}',
        b'{"type": "token", "seq": "zero", "text": "x"}',
        b'{"type": "token", "seq": 0, "text": "x", "extra": 1}',
        (
            b'{"type": "done", "seq": 1, "finish_reason": "tool_calls",'
            b' "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
        ),
        b'{"type": "error", "seq": 1, "code": "teapot", "message": "x"}',
        b"[1, 2]",
    ],
)
def test_malformed_event_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_event(data)


def test_usage_total_is_prompt_plus_completion() -> None:
    assert Usage(prompt_tokens=7, completion_tokens=5).total_tokens == 12


def test_chat_job_round_trips_through_json() -> None:
    job = _job(
        messages=(ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi 😀")),
        params=SamplingParams(temperature=0.5, top_p=0.9, max_tokens=7, stop=("\n", "END"), seed=42),
    )
    wire = json.dumps(job.model_dump(mode="json"))  # what Celery's JSON serializer carries
    again = GenerateJob.model_validate(json.loads(wire))
    assert again == job
    assert again.params.stop == ("\n", "END")
    assert again.messages[1].content == "Hi 😀"


def test_prompt_job_round_trips_through_json() -> None:
    job = _job(prompt="Once upon a time")
    assert GenerateJob.model_validate_json(job.model_dump_json()) == job


def test_job_with_both_messages_and_prompt_is_rejected() -> None:
    with pytest.raises(ValueError, match="either messages or a prompt"):
        _job(prompt="x", messages=(ChatMessage(role="user", content="y"),))


def test_job_with_neither_messages_nor_prompt_is_rejected() -> None:
    with pytest.raises(ValueError, match="either messages or a prompt"):
        _job()


def test_job_with_empty_prompt_is_accepted() -> None:
    assert _job(prompt="").prompt == ""


def test_job_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        _job(prompt="x", priority=3)


def test_job_rejects_unknown_role() -> None:
    with pytest.raises(ValidationError):
        _job(messages=({"role": "wizard", "content": "x"},))


def test_job_is_expired_only_after_its_deadline() -> None:
    assert not _job(prompt="x", expires_at=time.time() + 3600).expired
    assert _job(prompt="x", expires_at=time.time() - 1).expired


def test_default_sampling_params_leave_temperature_and_top_p_to_the_model() -> None:
    params = SamplingParams()
    assert (params.temperature, params.top_p, params.max_tokens, params.stop, params.seed) == (
        None,
        None,
        None,
        (),
        None,
    )
    assert not params.greedy


def test_temperature_zero_is_greedy() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert not SamplingParams(temperature=0.01).greedy


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0.0},
        {"temperature": 2.0},
        {"top_p": 1.0},
        {"top_p": 1e-6},
        {"max_tokens": 1},
        {"seed": -5},
    ],
    ids=str,
)
def test_sampling_params_accept_range_edges(fields: dict) -> None:
    SamplingParams(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": -0.1},
        {"temperature": 2.01},
        {"top_p": 0.0},
        {"top_p": 1.01},
        {"top_p": -1},
        {"max_tokens": -3},
        {"stop": "abc"},  # must be a sequence, not a bare string
        {"unknown": 1},
    ],
    ids=str,
)
def test_sampling_params_reject_out_of_range(fields: dict) -> None:
    with pytest.raises(ValidationError):
        SamplingParams(**fields)


def test_sampling_params_are_frozen() -> None:
    with pytest.raises(ValidationError):
        SamplingParams().temperature = 0.3  # type: ignore[misc]


def test_keys_are_distinct_per_request() -> None:
    ids = ["chatcmpl-1", "chatcmpl-2", "cmpl-1"]
    channels = {channel_for(i) for i in ids}
    cancels = {cancel_key_for(i) for i in ids}
    assert len(channels) == len(ids)
    assert len(cancels) == len(ids)
    assert not channels & cancels


@pytest.mark.parametrize("request_id", ["r1", "chatcmpl-4f2a9c", "cmpl-1:2"])
def test_keys_are_namespaced_and_match_the_patterns_scanned_for_them(request_id: str) -> None:
    """Gateway and worker (separate processes, maybe separate releases) must spell these the same,
    and the leftover checks, bench/soak and operators find them by glob (`queuechat:events:*`,
    `queuechat:cancel:*`): each is its namespace followed by exactly the request id."""
    assert channel_for(request_id) == f"queuechat:events:{request_id}"
    assert cancel_key_for(request_id) == f"queuechat:cancel:{request_id}"
    assert channel_for(request_id) != cancel_key_for(request_id)
    for key in (live_workers_key("tiny"), MODELS_SEEN_KEY):
        assert key.startswith("queuechat:")


def test_live_workers_key_is_distinct_per_model_and_from_request_keys() -> None:
    assert live_workers_key("a") != live_workers_key("b")
    assert live_workers_key("a") not in {channel_for("a"), cancel_key_for("a"), MODELS_SEEN_KEY}


def test_resolved_fills_only_unset_sampling_fields_request_first() -> None:
    unset = SamplingParams(max_tokens=3)
    assert (unset.resolved(temperature=0.2, top_p=0.9).temperature, unset.resolved(0.2, 0.9).top_p) == (0.2, 0.9)
    assert (unset.resolved().temperature, unset.resolved().top_p) == (1.0, 1.0)
    chosen = SamplingParams(temperature=0.0, top_p=0.5)
    assert chosen.resolved(temperature=0.7, top_p=0.9) == chosen
    assert unset.resolved(temperature=0.0).greedy and not unset.resolved().greedy
