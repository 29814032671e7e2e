"""Chat completions through the whole stack with the official openai SDK."""

from __future__ import annotations

import openai
import pytest

from tests.integration import reference
from tests.integration.sse import chunks, post_stream
from tests.spec import assert_valid

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about queues and workers."},
]


def test_non_stream_answer_matches_plain_transformers(client: openai.OpenAI, tiny_model_dir) -> None:
    ref = reference.greedy(tiny_model_dir, messages=MESSAGES, max_tokens=24)
    reply = client.chat.completions.create(model="tiny-a", messages=MESSAGES, temperature=0, max_tokens=24)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "tiny-a"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == ref.text
    assert reply.choices[0].finish_reason == ref.finish_reason
    assert reply.usage.prompt_tokens == ref.prompt_tokens
    assert reply.usage.completion_tokens == ref.completion_tokens
    assert reply.usage.total_tokens == ref.prompt_tokens + ref.completion_tokens


def test_stream_concatenates_to_the_non_stream_text(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="tiny-a", messages=MESSAGES, temperature=0, max_tokens=30)
    stream = client.chat.completions.create(
        model="tiny-a", messages=MESSAGES, temperature=0, max_tokens=30, stream=True
    )
    pieces, finish, roles = [], [], []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.id.startswith("chatcmpl-")
        choice = chunk.choices[0]
        roles.append(choice.delta.role)
        pieces.append(choice.delta.content or "")
        finish.append(choice.finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert roles[0] == "assistant" and not any(roles[1:])
    assert finish[-1] == whole.choices[0].finish_reason and not any(finish[:-1])
    assert len(pieces) > 3, "tokens arrive one by one, not in one piece"


def test_stream_chunks_validate_against_the_openai_spec(gateway) -> None:
    body = {"model": "tiny-a", "messages": MESSAGES, "stream": True, "max_tokens": 12,
            "stream_options": {"include_usage": True}}  # fmt: skip
    status, payloads, headers = post_stream(gateway.base_url, "/v1/chat/completions", body)
    assert status == 200
    assert headers["x-request-id"].startswith("chatcmpl-")
    parsed = chunks(payloads)
    for chunk in parsed:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    assert len({c["id"] for c in parsed}) == 1
    *content, usage_chunk = parsed
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_non_stream_body_validates_against_the_openai_spec(gateway) -> None:
    import httpx

    body = {"model": "tiny-a", "messages": MESSAGES, "max_tokens": 8}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert_valid(response.json(), "CreateChatCompletionResponse")


def test_max_tokens_gives_length(client: openai.OpenAI, tiny_model_dir) -> None:
    ref = reference.greedy(tiny_model_dir, messages=MESSAGES, max_tokens=5)
    assert ref.finish_reason == "length", "the oracle must not stop by itself within 5 tokens"
    for field in ("max_tokens", "max_completion_tokens"):
        reply = client.chat.completions.create(model="tiny-a", messages=MESSAGES, temperature=0, **{field: 5})
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 5
        assert reply.choices[0].message.content == ref.text


def test_stop_sequence_cuts_the_text_and_gives_stop(client: openai.OpenAI, tiny_model_dir) -> None:
    ref = reference.greedy(tiny_model_dir, messages=MESSAGES, max_tokens=30)
    visible = ref.text.strip("\ufffd")
    assert len(visible) > 8, ref.text
    stop = visible[len(visible) // 2 : len(visible) // 2 + 3]
    expected = ref.text[: ref.text.find(stop)]
    for stream in (False, True):
        reply = client.chat.completions.create(
            model="tiny-a", messages=MESSAGES, temperature=0, max_tokens=30, stop=[stop, "\x00never"], stream=stream
        )
        if stream:
            parts = list(reply)
            text = "".join(c.choices[0].delta.content or "" for c in parts)
            finish = parts[-1].choices[0].finish_reason
        else:
            text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert text == expected
        assert stop not in text
        assert finish == "stop"


def test_same_seed_gives_the_same_sample(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        reply = client.chat.completions.create(
            model="tiny-a", messages=MESSAGES, temperature=1.0, seed=seed, max_tokens=16
        )
        return reply.choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(8, 12)}) > 1


def test_content_as_text_parts(client: openai.OpenAI) -> None:
    parts = [{"type": "text", "text": "Tell me about queues "}, {"type": "text", "text": "and workers."}]
    as_parts = client.chat.completions.create(
        model="tiny-a", messages=[MESSAGES[0], {"role": "user", "content": parts}], temperature=0, max_tokens=10
    )
    as_text = client.chat.completions.create(model="tiny-a", messages=MESSAGES, temperature=0, max_tokens=10)
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content
    assert as_parts.usage == as_text.usage


@pytest.mark.asyncio
async def test_async_client_stream_and_non_stream(async_client: openai.AsyncOpenAI) -> None:
    whole = await async_client.chat.completions.create(model="tiny-b", messages=MESSAGES, temperature=0, max_tokens=20)
    stream = await async_client.chat.completions.create(
        model="tiny-b", messages=MESSAGES, temperature=0, max_tokens=20, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == whole.choices[0].message.content
    assert whole.usage.completion_tokens > 0
