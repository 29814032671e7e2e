"""n, several completion prompts, echo, logprobs, penalties, top_k and include_usage through the
whole stack with the openai SDK; bodies and chunks validated against the spec."""

from __future__ import annotations

import math
from collections import defaultdict

import openai
import pytest

from tests.integration.sse import chunks, post_stream
from tests.spec import assert_valid

MESSAGES = [{"role": "user", "content": "Tell me about queues and workers."}]


def test_n_gives_n_indexed_choices_and_a_seed_makes_them_repeatable(client: openai.OpenAI) -> None:
    ask = dict(model="tiny-a", messages=MESSAGES, n=3, temperature=1.5, seed=7, max_tokens=12)
    first, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1, "each choice samples with its own seed"
    assert first.usage.completion_tokens == sum(
        client.chat.completions.create(**{**ask, "n": 1, "seed": 7 + j}).usage.completion_tokens for j in range(3)
    )  # choice j is what n=1 with seed 7+j gives


def test_n_streams_interleaved_and_include_usage_totals_equal_the_non_stream_usage(gateway, client) -> None:
    body = {"model": "tiny-a", "messages": MESSAGES, "n": 2, "temperature": 0, "max_tokens": 16, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    status, payloads, _ = post_stream(gateway.base_url, "/v1/chat/completions", body)
    assert status == 200
    parsed = chunks(payloads)
    texts, finishes = defaultdict(str), {}
    for chunk in parsed:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert parsed[-1]["choices"] == [] and set(finishes) == {0, 1}
    whole = client.chat.completions.create(model="tiny-a", messages=MESSAGES, n=2, temperature=0, max_tokens=16)
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]
    assert parsed[-1]["usage"] == whole.usage.model_dump(exclude_none=True)
    assert whole.usage.prompt_tokens == client.chat.completions.create(
        model="tiny-a", messages=MESSAGES, temperature=0, max_tokens=1).usage.prompt_tokens  # counted once  # fmt: skip


def test_a_list_of_prompts_gives_one_choice_each_in_order(client: openai.OpenAI) -> None:
    prompts = ["The capital of France", "Queues hold work"]
    batch = client.completions.create(model="tiny-a", prompt=prompts, temperature=0, max_tokens=8)
    singles = [client.completions.create(model="tiny-a", prompt=p, temperature=0, max_tokens=8) for p in prompts]
    assert [c.index for c in batch.choices] == [0, 1]
    assert [c.text for c in batch.choices] == [s.choices[0].text for s in singles]
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    raw = client.completions.with_raw_response.create(model="tiny-a", prompt=prompts, temperature=0, max_tokens=8)
    assert_valid(raw.http_response.json(), "CreateCompletionResponse")


def test_echo_puts_the_prompt_before_the_completion(client: openai.OpenAI, gateway) -> None:
    plain = client.completions.create(model="tiny-a", prompt="Hello!", temperature=0, max_tokens=6)
    echoed = client.completions.create(model="tiny-a", prompt="Hello!", temperature=0, max_tokens=6, echo=True)
    assert echoed.choices[0].text == "Hello!" + plain.choices[0].text
    body = {"model": "tiny-a", "prompt": "Hello!", "temperature": 0, "max_tokens": 6, "echo": True, "stream": True}
    parsed = chunks(post_stream(gateway.base_url, "/v1/completions", body)[1])
    assert parsed[0]["choices"][0]["text"] == "Hello!"
    assert "".join(c["choices"][0]["text"] for c in parsed) == echoed.choices[0].text


def test_chat_logprobs_cover_every_token_with_top_alternatives(client: openai.OpenAI, gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(model="tiny-a", messages=MESSAGES, temperature=0,
                                                           max_tokens=10, logprobs=True, top_logprobs=3)  # fmt: skip
    assert_valid(raw.http_response.json(), "CreateChatCompletionResponse")
    reply = raw.parse()
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-6)  # greedy: the likeliest
    assert "".join(e.token for e in content).startswith(reply.choices[0].message.content[:5])
    body = {"model": "tiny-a", "messages": MESSAGES, "temperature": 0, "max_tokens": 10, "logprobs": True,
            "stream": True}  # fmt: skip
    parsed = chunks(post_stream(gateway.base_url, "/v1/chat/completions", body)[1])
    streamed = [e for c in parsed for e in ((c["choices"][0]["logprobs"] or {}).get("content") or [])]
    assert [e["token"] for e in streamed] == [e.token for e in content]
    assert all(e["top_logprobs"] == [] for e in streamed)


def test_completion_logprobs_in_the_legacy_shape(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model="tiny-a", prompt="The capital", temperature=0,
                                                      max_tokens=5, logprobs=2)  # fmt: skip
    assert_valid(raw.http_response.json(), "CreateCompletionResponse")
    reply = raw.parse()
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)


def test_penalties_and_top_k_are_applied(client: openai.OpenAI) -> None:
    ask = dict(model="tiny-a", messages=MESSAGES, temperature=0, max_tokens=20)
    plain = client.chat.completions.create(**ask).choices[0].message.content
    penalized = client.chat.completions.create(**ask, frequency_penalty=2.0).choices[0].message.content
    assert penalized != plain
    top1 = client.chat.completions.create(**{**ask, "temperature": 1.9}, seed=1, extra_body={"top_k": 1})
    assert top1.choices[0].message.content == plain


def test_logit_bias_forces_a_token(client: openai.OpenAI, tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    token = tokenizer.encode(" Paris", add_special_tokens=False)[0]
    reply = client.chat.completions.create(model="tiny-a", messages=MESSAGES, temperature=0, max_tokens=3,
                                           logit_bias={str(token): 100})  # fmt: skip
    assert reply.choices[0].message.content == tokenizer.decode([token] * 3)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-a", messages=MESSAGES, logit_bias={"999999": 5})
    assert err.value.body["param"] == "logit_bias"
