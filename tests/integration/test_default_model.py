"""The real default model (SmolLM2-135M-Instruct, GGUF) answers sensibly through the stack."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import DEFAULT_MODEL_FILE
from tests.integration.processes import Worker, live_worker

pytestmark = pytest.mark.default_model

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm_worker(env, workdir, redis_server, gateway) -> Iterator[Worker]:
    if not DEFAULT_MODEL_FILE.exists():
        pytest.fail(f"{DEFAULT_MODEL_FILE} is missing: `make model` fetches it")
    # the first start converts the GGUF (~20 s)
    with live_worker(["smollm2-135m"], env, workdir, redis_server.client, timeout=240) as worker:
        yield worker


def test_default_model_knows_the_capital_of_france(client: openai.OpenAI, smollm_worker) -> None:
    reply = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, temperature=0, max_tokens=40)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model="smollm2-135m", messages=QUESTION, temperature=0, max_tokens=40, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream]
    assert "".join(pieces) == reply.choices[0].message.content
    assert sum(1 for p in pieces if p) >= 5, "streamed token by token"


def test_default_model_completes_a_raw_prompt(client: openai.OpenAI, smollm_worker) -> None:
    reply = client.completions.create(
        model="smollm2-135m", prompt="The capital of France is", temperature=0, max_tokens=5
    )
    assert "Paris" in reply.choices[0].text
    assert reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"
    assert "smollm2-135m" in {m.id for m in client.models.list()}


def test_the_readme_example_with_no_sampling_parameters_mentions_paris(client: openai.OpenAI, smollm_worker) -> None:
    """What a new user types first: the models file's defaults (greedy, 512 tokens) apply."""
    stream = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, stream=True)
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in stream)
