"""OpenAI request bodies -> GenerateJob, and the 400s for what the server does not support."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.completion_request import CreateCompletionRequest
from gateway.errors import InvalidRequest
from gateway.openai_types import CreateChatCompletionRequest
from protocol import ChatMessage

USER = [{"role": "user", "content": "Hi"}]


def chat(**fields: Any) -> CreateChatCompletionRequest:
    return CreateChatCompletionRequest.model_validate({"model": "tiny", "messages": USER, **fields})


def completion(**fields: Any) -> CreateCompletionRequest:
    return CreateCompletionRequest.model_validate({"model": "tiny", "prompt": "Once", **fields})


def test_chat_to_job_maps_every_field() -> None:
    before = time.time()
    job = chat(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        temperature=0.3, top_p=0.8, max_tokens=9, stop=["\n", "END"], seed=7,
    ).to_jobs(queue_timeout=30.0)[0]  # fmt: skip
    assert job.model == "tiny"
    assert job.prompt is None
    assert job.messages == (
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hi"),
    )
    p = job.params
    assert (p.temperature, p.top_p, p.max_tokens, p.stop, p.seed) == (0.3, 0.8, 9, ("\n", "END"), 7)
    assert job.request_id.startswith("chatcmpl-")
    assert before + 30.0 <= job.expires_at <= time.time() + 30.0


def test_completion_to_job_maps_every_field() -> None:
    job = completion(prompt="Once upon", temperature=1.2, max_tokens=5, stop="\n\n", seed=3).to_jobs(10.0)[0]
    assert job.prompt == "Once upon"
    assert job.messages is None
    assert (job.params.temperature, job.params.max_tokens, job.params.stop, job.params.seed) == (
        1.2,
        5,
        ("\n\n",),
        3,
    )
    assert job.request_id.startswith("cmpl-") and not job.request_id.startswith("chatcmpl-")


def test_each_job_gets_a_new_request_id() -> None:
    request = chat()
    assert request.to_jobs(1.0)[0].request_id != request.to_jobs(1.0)[0].request_id


def test_unset_temperature_and_top_p_are_left_for_the_models_defaults() -> None:
    params = chat().to_jobs(1.0)[0].params
    assert (params.temperature, params.top_p, params.max_tokens, params.stop, params.seed) == (
        None,
        None,
        None,
        (),
        None,
    )
    assert (params.resolved().temperature, params.resolved().top_p) == (1.0, 1.0)  # OpenAI's, at the end
    assert not chat().stream


def test_completions_default_to_16_tokens() -> None:
    assert completion().to_jobs(1.0)[0].params.max_tokens == 16


def test_completions_max_tokens_null_means_no_limit() -> None:
    assert completion(max_tokens=None).to_jobs(1.0)[0].params.max_tokens is None


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=50, max_completion_tokens=5).to_jobs(1.0)[0].params.max_tokens == 5
    assert chat(max_tokens=50).to_jobs(1.0)[0].params.max_tokens == 50
    assert chat(max_completion_tokens=6).to_jobs(1.0)[0].params.max_tokens == 6


def test_stop_string_becomes_a_one_element_tuple() -> None:
    assert chat(stop="###").to_jobs(1.0)[0].params.stop == ("###",)
    assert chat(stop=None).to_jobs(1.0)[0].params.stop == ()
    assert chat(stop=[]).to_jobs(1.0)[0].params.stop == ()


def test_more_than_four_stop_sequences_are_refused() -> None:
    with pytest.raises(ValidationError):
        chat(stop=["a", "b", "c", "d", "e"])


def test_top_p_zero_means_greedy() -> None:
    params = chat(top_p=0, temperature=1.5).to_jobs(1.0)[0].params
    assert params.greedy
    assert params.top_p is None


def test_temperature_zero_means_greedy() -> None:
    assert chat(temperature=0).to_jobs(1.0)[0].params.greedy


@pytest.mark.parametrize(
    "field,value", [("temperature", 2.5), ("temperature", -1), ("top_p", 1.5), ("max_tokens", 0)]
)
def test_out_of_range_sampling_values_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as info:
        chat(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_content_parts_are_joined() -> None:
    content = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    job = chat(messages=[{"role": "user", "content": content}]).to_jobs(1.0)[0]
    assert job.messages[0].content == "Hello, world"


def test_null_content_becomes_empty_text() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]
    assert chat(messages=messages).to_jobs(1.0)[0].messages[1].content == ""


def test_non_text_content_part_is_refused() -> None:
    part = {"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}
    with pytest.raises(ValidationError):
        chat(messages=[{"role": "user", "content": [part]}])


def test_completion_prompt_may_be_a_one_string_list() -> None:
    assert completion(prompt=["Once upon"]).to_jobs(1.0)[0].prompt == "Once upon"


def test_a_list_of_prompts_and_n_give_one_job_per_choice_prompt_major() -> None:
    jobs = completion(prompt=["a", "b"], n=3, seed=10).to_jobs(1.0)
    assert [j.prompt for j in jobs] == ["a", "a", "a", "b", "b", "b"]
    assert [j.params.seed for j in jobs] == [10, 11, 12, 10, 11, 12]  # choice j of every prompt: seed + j
    assert len({j.request_id for j in jobs}) == 6
    assert len({j.request_id.rsplit("-", 1)[0] for j in jobs}) == 1  # one response id


def test_more_choices_than_the_limit_are_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        completion(prompt=["a"] * 8, n=9).to_jobs(1.0)
    assert info.value.param == "n"


def test_sampling_extensions_reach_the_job() -> None:
    params = chat(top_k=5, presence_penalty=0.5, frequency_penalty=-1, logprobs=True, top_logprobs=3).to_jobs(1.0)[0].params
    assert (params.top_k, params.presence_penalty, params.frequency_penalty, params.logprobs) == (5, 0.5, -1.0, 3)
    assert chat(logprobs=True).to_jobs(1.0)[0].params.logprobs == 0
    assert chat(top_k=-1).to_jobs(1.0)[0].params.top_k is None
    assert completion(logprobs=2).to_jobs(1.0)[0].params.logprobs == 2
    assert completion().to_jobs(1.0)[0].params.logprobs is None


def test_top_logprobs_without_logprobs_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        chat(top_logprobs=2)
    assert info.value.param == "top_logprobs"


@pytest.mark.parametrize("prompt", [[], 5, ["x"] * 65, [[]], [-1], [[1], [-2]], ["a", 1], [[1]] * 65])
def test_completion_prompt_batches_are_refused(prompt: Any) -> None:
    with pytest.raises(ValidationError):
        completion(prompt=prompt)


def test_empty_messages_are_refused() -> None:
    with pytest.raises(ValidationError):
        chat(messages=[])


def test_empty_model_is_refused() -> None:
    with pytest.raises(ValidationError):
        chat(model="")


@pytest.mark.parametrize(
    "field,value",
    [
        ("top_logprobs", 3),
        ("tool_choice", "required"),
        ("functions", [{"name": "f"}]),
    ],
)
def test_unsupported_chat_features_are_invalid_requests_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat(**{field: value})
    assert info.value.param == field
    assert info.value.status == 400
    assert field in info.value.message


@pytest.mark.parametrize(
    "field,value", [("suffix", "end")]
)
def test_unsupported_completion_features_are_invalid_requests(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        completion(**{field: value})
    assert info.value.param == field


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 1},
        {"logprobs": False},
        {"tools": []},
        {"presence_penalty": 0},
        {"frequency_penalty": 0.0},
        {"logit_bias": {}},
        {"tool_choice": None},
    ],
    ids=str,
)
def test_neutral_values_of_unsupported_features_are_accepted(fields: dict) -> None:
    chat(**fields).to_jobs(1.0)[0]


def test_stream_options_without_stream_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest) as info:
        chat(stream_options={"include_usage": True})
    assert info.value.param == "stream_options"
    with pytest.raises(InvalidRequest):
        chat(stream=False, stream_options={"include_usage": True})


def test_stream_options_with_stream_sets_include_usage() -> None:
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=True, stream_options={"include_usage": False}).include_usage
    assert not chat(stream=True).include_usage


def test_unknown_fields_are_ignored() -> None:
    request = chat(metadata={"a": "b"}, store=False, reasoning_effort="low", some_future_field=[1, 2])
    job = request.to_jobs(1.0)[0]
    assert job.messages == (ChatMessage(role="user", content="Hi"),)
    assert not hasattr(request, "some_future_field")


def test_unknown_message_fields_are_ignored() -> None:
    messages = [{"role": "user", "content": "Hi", "name": "ann", "weird": True}]
    assert chat(messages=messages).to_jobs(1.0)[0].messages == (ChatMessage(role="user", content="Hi"),)


def test_logit_bias_reaches_the_job_and_bad_keys_are_refused() -> None:
    assert chat(logit_bias={"5": 100, "9": -1.5}).to_jobs(1.0)[0].params.logit_bias == ((5, 100.0), (9, -1.5))
    with pytest.raises(InvalidRequest) as info:
        chat(logit_bias={"five": 1}).to_jobs(1.0)
    assert info.value.param == "logit_bias"
    with pytest.raises(ValidationError):
        chat(logit_bias={"5": 101})


@pytest.mark.parametrize(
    "field,value", [("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["text", "audio"]),
                    ("prediction", {"type": "content", "content": "x"})]
)  # fmt: skip
def test_output_features_we_cannot_give_are_refused_not_ignored(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat(**{field: value})
    assert info.value.param == field


def test_neutral_values_of_those_fields_pass() -> None:
    assert chat(modalities=["text"], store=False, metadata={"a": "b"}, service_tier="auto").to_jobs(1.0)


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"messages": [{"role": "user", "content": "a\ud800"}]}, "messages[0].content"),
     ({"stop": ["ok", "\udfff"]}, "stop[1]"),
     ({"user": "\ud83d"}, "user"),
     ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"\udc00": {}}}}]},
      "tools[0].function.parameters")],
)  # fmt: skip
def test_text_that_is_not_valid_unicode_is_a_400_naming_where(fields: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat(**fields)
    assert info.value.param == param


def test_the_unicode_check_walks_deep_bodies_without_recursion() -> None:
    from gateway.openai_types import unencodable_text

    deep: Any = "\ud800"
    for _ in range(20_000):
        deep = [deep]
    assert unencodable_text({"prompt": deep}) == "prompt" + "[0]" * 20_000
    assert unencodable_text({"prompt": ["fine", {"k": "still fine"}]}) is None


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 2**70])
def test_a_seed_outside_int64_is_refused(seed: int) -> None:
    with pytest.raises(ValidationError):
        completion(seed=seed)
    assert completion(seed=2**63 - 1).to_jobs(30.0)[0].params.seed == 2**63 - 1
