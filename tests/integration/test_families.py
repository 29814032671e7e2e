"""The other model families through the whole stack, with the openai SDK: a remote-code ChatGLM
(stream_chat), a native GLM-4 and embeddings, all served by one worker that consumes three
queues; the real all-MiniLM-L6-v2 for sensible embeddings."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import EMBEDDING_MODEL_DIR
from tests.integration import reference
from tests.integration.processes import Worker, live_worker
from tests.integration.sse import chunks, post_stream
from tests.spec import assert_valid

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def family_worker(env, workdir, redis_server, gateway) -> Iterator[Worker]:
    with live_worker(["tiny-chatglm", "tiny-glm4", "tiny-embed"], env, workdir, redis_server.client) as worker:
        yield worker


def _chatglm_reference(folder, query: str, history: list, max_new: int) -> str:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    prompt_tokens = len(tokenizer.encode(model.build_prompt(query, history), add_special_tokens=False))
    return model.chat(tokenizer, query, history=history, do_sample=False, max_length=prompt_tokens + max_new)[0]


def test_remote_code_chatglm_answers_what_its_stream_chat_says(client, family_worker, family_dirs) -> None:
    reply = client.chat.completions.create(model="tiny-chatglm", messages=QUESTION, temperature=0, max_tokens=20)
    expected = _chatglm_reference(family_dirs["chatglm"], "Be brief.\n\nWhat is the capital of France?", [], 40)
    assert expected.startswith(reply.choices[0].message.content) and reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens >= 20


def test_remote_code_chatglm_streams_valid_chunks(gateway, family_worker, client) -> None:
    body = {"model": "tiny-chatglm", "messages": QUESTION, "temperature": 0, "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    status, payloads, _ = post_stream(gateway.base_url, "/v1/chat/completions", body)
    parsed = chunks(payloads)
    for chunk in parsed:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    whole = client.chat.completions.create(model="tiny-chatglm", messages=QUESTION, temperature=0, max_tokens=12)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed if c["choices"]) == \
        whole.choices[0].message.content  # fmt: skip
    assert parsed[-1]["usage"] == whole.usage.model_dump(exclude_none=True)


def test_remote_code_chatglm_refuses_logprobs_with_a_400_naming_it(client, family_worker) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-chatglm", messages=QUESTION, logprobs=True)
    assert err.value.body["param"] == "logprobs"
    assert err.value.body["code"] == "unsupported_parameter"  # the gateway's, from the card: nothing was queued
    listed = client.models.retrieve("tiny-chatglm").model_extra
    assert listed["engine"] == "transformers" and "logprobs" in listed["unsupported"]


def test_native_glm4_matches_plain_transformers(client, family_worker, family_dirs) -> None:
    messages = [{"role": "user", "content": "Tell me about queues."}]
    ref = reference.greedy(family_dirs["glm4"], messages=messages, max_tokens=12)
    reply = client.chat.completions.create(model="tiny-glm4", messages=messages, temperature=0, max_tokens=12)
    assert reply.choices[0].message.content == ref.text
    assert reply.usage.prompt_tokens == ref.prompt_tokens


def _floats(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_embeddings_float_and_base64_agree_and_match_the_spec(client, gateway, family_worker) -> None:
    texts = ["the cat sat on the mat", "queue worker"]
    raw = httpx.post(f"{gateway.base_url}/v1/embeddings", json={"model": "tiny-embed", "input": texts}, timeout=30)
    assert raw.status_code == 200
    assert_valid(raw.json(), "CreateEmbeddingResponse")
    floats = client.embeddings.create(model="tiny-embed", input=texts)
    b64 = httpx.post(f"{gateway.base_url}/v1/embeddings", timeout=30,
                     json={"model": "tiny-embed", "input": texts, "encoding_format": "base64"}).json()  # fmt: skip
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 16
    for item, encoded in zip(floats.data, b64["data"]):
        assert _floats(encoded["embedding"]) == pytest.approx(item.embedding, abs=1e-7)
        assert math.isclose(sum(x * x for x in item.embedding), 1.0, rel_tol=1e-4)  # normalized
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0


def test_embedding_input_forms(client, family_worker) -> None:
    one = client.embeddings.create(model="tiny-embed", input="the dog").data[0].embedding
    tokens = client.embeddings.create(model="tiny-embed", input=[5, 7]).data
    many = client.embeddings.create(model="tiny-embed", input=[[5, 7], [6]]).data
    assert len(one) == 16 and len(tokens) == 1 and len(many) == 2
    assert many[0].embedding == pytest.approx(tokens[0].embedding, abs=1e-6)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"input": "x", "dimensions": 8}, "dimensions"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": "cat " * 100}, "input"),  # beyond the encoder's 32 tokens
        ({"input": [10_000]}, "input"),  # no such token
    ],
)
def test_bad_embedding_requests_are_400_naming_the_param(gateway, family_worker, body, param) -> None:
    response = httpx.post(f"{gateway.base_url}/v1/embeddings", json={"model": "tiny-embed", **body}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_generating_with_an_embedding_model_is_a_clear_error(client, family_worker) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="tiny-embed", messages=QUESTION)
    assert err.value.status_code == 400 and "does not support chat completions" in err.value.message
    assert err.value.body["param"] == "model"


@pytest.mark.default_model
def test_minilm_puts_similar_sentences_closer(client, env, workdir, redis_server, gateway) -> None:
    if not EMBEDDING_MODEL_DIR.exists():
        pytest.fail(f"{EMBEDDING_MODEL_DIR} is missing: `make model` fetches it")
    with live_worker(["all-minilm-l6-v2"], env, workdir, redis_server.client):
        texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "The stock market fell sharply today."]
        vectors = [d.embedding for d in client.embeddings.create(model="all-minilm-l6-v2", input=texts).data]
        cosine = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731  (normalized vectors)
        assert len(vectors[0]) == 384
        assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


# -- THUDM-style remote code (old transformers APIs) served as downloaded -----------------------------
# Stand-ins for ChatGLM-6B (generation 1) and ChatGLM3-6B (3) whose code breaks on transformers 5
# without adapters/chatglm_compat/ (see tests/unit/test_chatglm_compat.py).  They get a gateway
# and worker of their own: the shared stack's models file does not list them.


@pytest.fixture(scope="module")
def thudm_stack(workdir, redis_server, tmp_path_factory) -> Iterator[tuple[openai.OpenAI, dict[str, Path]]]:
    from tests.integration.processes import Gateway, stack_env
    from tests.tiny_models import write_models_file
    from tests.tiny_thudm_chatglm import make_thudm_chatglm

    root = tmp_path_factory.mktemp("thudm")
    folders = {f"thudm-chatglm{g}": make_thudm_chatglm(root / f"thudm{g}-served", g) for g in (1, 3)}
    models = write_models_file(workdir / "models-thudm.yaml",
                               {name: {"path": folder, "trust_remote_code": True} for name, folder in folders.items()})  # fmt: skip
    env = stack_env(redis_server.url, models)
    server = Gateway(env, workdir)
    try:
        with live_worker(list(folders), env, workdir, redis_server.client):
            yield openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60), folders
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["thudm-chatglm1", "thudm-chatglm3"])
def test_thudm_style_chatglm_is_served_as_downloaded(thudm_stack, name: str) -> None:
    from adapters.chatglm_compat import load_chatglm

    client, folders = thudm_stack
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=8)
    tokenizer, model, _ = load_chatglm(folders[name])
    expected, _ = model.chat(tokenizer, question[0]["content"], history=[], do_sample=False, max_length=200)
    assert reply.choices[0].message.content and expected.startswith(reply.choices[0].message.content)
    streamed = client.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply.choices[0].message.content
