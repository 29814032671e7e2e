"""What evaluation harnesses ask of /v1/completions, through the whole stack: token-id prompts,
the prompt's logprobs (echo with logprobs, vLLM's prompt_logprobs), max_tokens 0, best_of, and
vLLM's /tokenize and /detokenize."""

from __future__ import annotations

import copy
import json

import httpx
import openai
import pytest

from tests.integration import reference
from tests.integration.sse import chunks, post_stream
from tests.spec import assert_valid

PROMPT = "The capital of France is"
TOLERANCE = 1e-4


def _post(gateway, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}{path}", json=body, timeout=60)


def _assert_valid_completion(body: dict) -> None:
    """Against the spec, which types every token_logprobs entry a number and every top_logprobs
    entry an object: OpenAI itself sent null for an echoed prompt's first token (nothing predicts
    it), as we do; check those nulls here and everything else against the schema."""
    body = copy.deepcopy(body)
    for choice in body["choices"]:
        choice.pop("prompt_logprobs", None)  # vLLM's extension, not in OpenAI's schema
        logprobs = choice["logprobs"]
        if logprobs and logprobs["token_logprobs"] and logprobs["token_logprobs"][0] is None:
            assert logprobs["top_logprobs"][0] is None
            logprobs["token_logprobs"][0], logprobs["top_logprobs"][0] = 0.0, {}
    assert_valid(body, "CreateCompletionResponse")


def _check_prompt_logprobs(tiny_model_dir, ids: list[int], token_logprobs: list, top_logprobs: list) -> None:
    expected = reference.prompt_logprobs(tiny_model_dir, ids)
    assert token_logprobs[0] is None and top_logprobs[0] is None
    for i in range(1, len(ids)):
        assert token_logprobs[i] == pytest.approx(expected[i - 1][ids[i]], abs=TOLERANCE)
        assert max(top_logprobs[i].values()) == pytest.approx(max(expected[i - 1]), abs=TOLERANCE)


def test_echo_with_logprobs_and_max_tokens_0_scores_the_prompt(client: openai.OpenAI, tiny_model_dir) -> None:
    reply = client.completions.create(model="tiny-a", prompt=PROMPT, echo=True, logprobs=1, max_tokens=0)
    ids = reference.token_ids(tiny_model_dir, PROMPT)
    choice = reply.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), 0)
    assert len(choice.logprobs.tokens) == len(ids)
    _check_prompt_logprobs(tiny_model_dir, ids, choice.logprobs.token_logprobs, choice.logprobs.top_logprobs)
    offsets = choice.logprobs.text_offset
    assert offsets[0] == 0 and all(b - a == len(t) for a, b, t in zip(offsets, offsets[1:], choice.logprobs.tokens))


def test_echo_with_generation_puts_the_prompt_first(client: openai.OpenAI, tiny_model_dir) -> None:
    ref = reference.greedy(tiny_model_dir, prompt=PROMPT, max_tokens=4)
    reply = client.completions.create(model="tiny-a", prompt=PROMPT, echo=True, logprobs=2, max_tokens=4, temperature=0)
    ids = reference.token_ids(tiny_model_dir, PROMPT)
    choice = reply.choices[0]
    assert choice.text == PROMPT + ref.text
    assert len(choice.logprobs.tokens) == len(ids) + ref.completion_tokens
    _check_prompt_logprobs(tiny_model_dir, ids, choice.logprobs.token_logprobs[: len(ids)],
                           choice.logprobs.top_logprobs[: len(ids)])  # fmt: skip
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs[1:])
    assert all(isinstance(lp, float) for lp in choice.logprobs.token_logprobs[len(ids) :])


def test_bodies_and_stream_with_echo_validate_against_the_spec(gateway) -> None:
    body = {"model": "tiny-a", "prompt": [PROMPT, "Hello"], "echo": True, "logprobs": 1, "max_tokens": 3, "temperature": 0}
    response = _post(gateway, "/v1/completions", body)
    assert response.status_code == 200, response.text
    _assert_valid_completion(response.json())
    status, payloads, _ = post_stream(gateway.base_url, "/v1/completions", {**body, "stream": True})
    assert status == 200
    parsed = chunks(payloads)
    for index, prompt in enumerate(body["prompt"]):
        mine = [c["choices"][0] for c in parsed if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["text"] == prompt and mine[0]["logprobs"]["token_logprobs"][0] is None  # the echo leads
        assert "".join(c["text"] for c in mine) == response.json()["choices"][index]["text"]
    for chunk in parsed:
        if chunk["choices"][0]["finish_reason"] is None:  # mid-stream: null, as OpenAI streams it
            chunk = {**chunk, "choices": [{**chunk["choices"][0], "finish_reason": "length"}]}
        _assert_valid_completion(chunk)


def test_vllm_prompt_logprobs_on_completions_and_chat(gateway, tiny_model_dir) -> None:
    response = _post(gateway, "/v1/completions", {"model": "tiny-a", "prompt": PROMPT, "max_tokens": 2,
                                                  "prompt_logprobs": 2, "temperature": 0})  # fmt: skip
    assert response.status_code == 200, response.text
    ids = reference.token_ids(tiny_model_dir, PROMPT)
    expected = reference.prompt_logprobs(tiny_model_dir, ids)
    choice = response.json()["choices"][0]
    scores = choice["prompt_logprobs"]
    assert len(scores) == len(ids) and scores[0] is None and choice["logprobs"] is None
    for i in range(1, len(ids)):
        mine = scores[i][str(ids[i])]
        assert mine["logprob"] == pytest.approx(expected[i - 1][ids[i]], abs=TOLERANCE)
        assert mine["rank"] == 1 + sum(lp > expected[i - 1][ids[i]] for lp in expected[i - 1])
        assert {entry["rank"] for token, entry in scores[i].items() if token != str(ids[i])} <= {1, 2}
    assert choice["text"] == reference.greedy(tiny_model_dir, prompt=PROMPT, max_tokens=2).text
    chat = _post(gateway, "/v1/chat/completions", {"model": "tiny-a", "messages": [{"role": "user", "content": "Hi"}],
                                                   "max_tokens": 2, "prompt_logprobs": 0})  # fmt: skip
    assert chat.status_code == 200, chat.text
    assert chat.json()["prompt_logprobs"][0] is None and all(len(p) == 1 for p in chat.json()["prompt_logprobs"][1:])
    streamed = _post(gateway, "/v1/completions", {"model": "tiny-a", "prompt": PROMPT, "prompt_logprobs": 1, "stream": True})
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "prompt_logprobs"


def test_token_prompts_give_what_the_text_gives(client: openai.OpenAI, tiny_model_dir) -> None:
    ids = reference.token_ids(tiny_model_dir, PROMPT)
    by_text = client.completions.create(model="tiny-a", prompt=PROMPT, temperature=0, max_tokens=8)
    single = client.completions.create(model="tiny-a", prompt=ids, temperature=0, max_tokens=8)
    several = client.completions.create(model="tiny-a", prompt=[ids, ids[:-1]], temperature=0, max_tokens=8)
    assert single.choices[0].text == by_text.choices[0].text == several.choices[0].text
    assert single.usage.prompt_tokens == by_text.usage.prompt_tokens == len(ids)
    shorter = reference.greedy(tiny_model_dir, prompt=PROMPT[: PROMPT.rindex(" ")], max_tokens=8)
    assert len(ids[:-1]) == len(reference.token_ids(tiny_model_dir, PROMPT[: PROMPT.rindex(" ")]))
    assert several.choices[1].text == shorter.text
    echoed = client.completions.create(model="tiny-a", prompt=ids, echo=True, temperature=0, max_tokens=8)
    tokenizer, _ = reference._load(tiny_model_dir)
    assert echoed.choices[0].text == tokenizer.decode(ids) + by_text.choices[0].text


@pytest.mark.parametrize("prompt", [[1, 10**7], [[5], [-1]], [[]]], ids=str)
def test_bad_token_ids_are_a_400_naming_the_prompt(gateway, prompt: list) -> None:
    response = _post(gateway, "/v1/completions", {"model": "tiny-a", "prompt": prompt, "max_tokens": 2})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("prompt")


def test_best_of_returns_the_likeliest_candidate(client: openai.OpenAI) -> None:
    fields = {"model": "tiny-a", "prompt": PROMPT, "temperature": 1.0, "seed": 11, "max_tokens": 6, "logprobs": 0}
    candidates = client.completions.create(n=4, **fields)  # the same seeds best_of=4 samples with
    scores = [sum(c.logprobs.token_logprobs) for c in candidates.choices]
    best = client.completions.create(best_of=4, **fields)
    assert len(best.choices) == 1 and best.choices[0].index == 0
    assert best.choices[0].text == candidates.choices[scores.index(max(scores))].text
    assert sum(best.choices[0].logprobs.token_logprobs) == pytest.approx(max(scores), abs=1e-4)
    assert best.usage.completion_tokens == candidates.usage.completion_tokens  # every candidate counts
    two = client.completions.create(best_of=4, n=2, **{**fields, "logprobs": None})
    ranked = sorted(range(4), key=lambda k: -scores[k])
    assert [c.text for c in two.choices] == [candidates.choices[k].text for k in ranked[:2]]


@pytest.mark.parametrize("fields", [{"best_of": 1, "n": 2}, {"best_of": 3, "stream": True}], ids=str)
def test_best_of_that_cannot_be_served_is_a_400(gateway, fields: dict) -> None:
    response = _post(gateway, "/v1/completions", {"model": "tiny-a", "prompt": PROMPT, **fields})
    assert response.status_code == 400 and response.json()["error"]["param"] == "best_of"


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_tokenize_and_detokenize_round_trip(gateway, tiny_model_dir, prefix: str) -> None:
    tokenizer, _ = reference._load(tiny_model_dir)
    response = _post(gateway, f"{prefix}/tokenize", {"model": "tiny-a", "prompt": PROMPT, "return_token_strs": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tokens"] == tokenizer.encode(PROMPT) and body["count"] == len(body["tokens"])
    assert body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"]) and body["max_model_len"] > 0
    plain = _post(gateway, f"{prefix}/tokenize", {"model": "tiny-a", "prompt": PROMPT, "add_special_tokens": False}).json()
    assert plain["tokens"] == tokenizer.encode(PROMPT, add_special_tokens=False) and "token_strs" not in plain
    back = _post(gateway, f"{prefix}/detokenize", {"model": "tiny-a", "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": tokenizer.decode(body["tokens"])}
    messages = [{"role": "user", "content": "Hi there"}]
    chat = _post(gateway, f"{prefix}/tokenize", {"model": "tiny-a", "messages": messages}).json()
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert chat["tokens"] == tokenizer.encode(text, add_special_tokens=False)


def test_tokenize_errors_name_the_parameter(gateway) -> None:
    bad = _post(gateway, "/detokenize", {"model": "tiny-a", "tokens": [10**7]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    neither = _post(gateway, "/tokenize", {"model": "tiny-a"})
    assert neither.status_code == 400 and neither.json()["error"]["param"] == "prompt"
    unknown = _post(gateway, "/tokenize", {"model": "no-such-model", "prompt": "x"})
    assert unknown.status_code == 404, unknown.text
    assert json.loads(unknown.text)["error"]
