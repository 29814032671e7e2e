"""Penalties, top_k and logprobs in the engine, checked against a plain forward pass of the model."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from adapters.hf_causal import HfCausalAdapter
from protocol import SamplingParams
from protocol.models_file import ModelSpec
from tests.unit.test_batching import RecordingSink
from workers.batch_engine import BatchEngine

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> HfCausalAdapter:
    """Overrides tests/unit/conftest.py's: without a prefix cache."""
    adapter = HfCausalAdapter(ModelSpec(name="tiny", path=tiny_model_dir, device="cpu", prefix_cache=False),
                              tmp_path_factory.mktemp("c"))  # fmt: skip
    adapter.load()
    return adapter


@pytest.fixture(scope="module")
def engine(make_module_engine) -> BatchEngine:
    return make_module_engine(slots=4)  # over this module's adapter


def _run(engine: BatchEngine, ids: list[int], **params) -> RecordingSink:
    sink = RecordingSink()
    seq = engine.submit(ids, SamplingParams(**params), sink)
    assert seq.finished.wait(60) and sink.finished is not None, sink.error_code
    return sink


@torch.no_grad()
def _next_logits(adapter: HfCausalAdapter, ids: list[int]) -> torch.Tensor:
    return adapter.model(torch.tensor([ids])).logits[0, -1].float().clone()


def _generated_ids(adapter: HfCausalAdapter, sink: RecordingSink) -> list[int]:
    return adapter.tokenizer.encode(sink.text, add_special_tokens=False)


def test_logprobs_equal_the_models_log_softmax_at_each_step(adapter, engine) -> None:
    ids = adapter.text_prompt(PROMPT)
    sink = _run(engine, ids, temperature=0.0, max_tokens=6, logprobs=3)
    assert len(sink.logprobs) == sink.finished.usage.completion_tokens == 6
    context = list(ids)
    for entry in sink.logprobs:
        logp = torch.log_softmax(_next_logits(adapter, context), dim=-1)
        token = int(logp.argmax())  # greedy: the chosen token is the likeliest
        assert entry.token == adapter.tokenizer.decode([token])
        assert math.isclose(entry.logprob, float(logp[token]), abs_tol=1e-4)
        top_ids = torch.topk(logp, 3).indices.tolist()
        assert [t.token for t in entry.top] == [adapter.tokenizer.decode([i]) for i in top_ids]
        assert all(math.isclose(t.logprob, float(logp[i]), abs_tol=1e-4) for t, i in zip(entry.top, top_ids))
        assert entry.bytes == tuple(entry.token.encode())
        context.append(token)


def test_no_logprobs_unless_asked(adapter, engine) -> None:
    assert _run(engine, adapter.text_prompt(PROMPT), temperature=0.0, max_tokens=4).logprobs == []


@pytest.mark.parametrize("presence,frequency", [(0.0, 1.5), (1.2, 0.0), (-0.5, 0.7)])
def test_penalties_follow_openais_formula(adapter, engine, presence: float, frequency: float) -> None:
    """Greedy with penalties = argmax of logits - count*frequency - (count>0)*presence, step by step."""
    ids = adapter.text_prompt(PROMPT)
    sink = _run(engine, ids, temperature=0.0, max_tokens=12, presence_penalty=presence, frequency_penalty=frequency,
                logprobs=0)  # fmt: skip
    context, counts, expected = list(ids), Counter(), []
    for _ in range(12):
        logits = _next_logits(adapter, context)
        for token, times in counts.items():
            logits[token] -= times * frequency + presence
        token = int(logits.argmax())
        expected.append(token)
        if token in adapter.eos_ids:
            break
        counts[token] += 1
        context.append(token)
    assert [adapter.tokenizer.decode([t]) for t in expected] == [e.token for e in sink.logprobs]


def test_a_strong_frequency_penalty_changes_greedy_output(adapter, engine) -> None:
    ids = adapter.text_prompt(PROMPT)
    plain = _run(engine, ids, temperature=0.0, max_tokens=16).text
    assert _run(engine, ids, temperature=0.0, max_tokens=16, frequency_penalty=2.0).text != plain


def test_top_k_1_samples_the_greedy_text_at_any_temperature(adapter, engine) -> None:
    ids = adapter.text_prompt(PROMPT)
    greedy = _run(engine, ids, temperature=0.0, max_tokens=10).text
    assert _run(engine, ids, temperature=1.8, top_k=1, max_tokens=10, seed=3).text == greedy


def test_top_k_samples_only_among_the_k_likeliest(adapter, engine) -> None:
    ids = adapter.text_prompt(PROMPT)
    for seed in range(4):
        sink = _run(engine, ids, temperature=2.0, top_k=3, max_tokens=8, seed=seed, logprobs=3)
        for entry in sink.logprobs:
            assert entry.token in {t.token for t in entry.top}


def test_logit_bias_forces_or_bans_tokens(adapter, engine) -> None:
    ids = adapter.text_prompt(PROMPT)
    forced = adapter.tokenizer.encode(" Paris", add_special_tokens=False)[0]
    sink = _run(engine, ids, temperature=0.0, max_tokens=4, logit_bias=((forced, 100.0),))
    assert _generated_ids(adapter, sink) == [forced] * 4
    logits = _next_logits(adapter, ids)
    banned, runner_up = torch.topk(logits, 2).indices.tolist()
    again = _run(engine, ids, temperature=0.0, max_tokens=1, logprobs=0, logit_bias=((banned, -100.0),))
    assert math.isclose(again.logprobs[0].logprob, float(torch.log_softmax(logits, -1)[runner_up]), abs_tol=1e-4)


def test_logit_bias_outside_the_vocabulary_is_refused_by_name(adapter, engine) -> None:
    import time

    from adapters import UnsupportedParameter
    from protocol import GenerateJob

    job = GenerateJob(request_id="r", model="m", prompt="x", expires_at=time.time() + 9,
                      params=SamplingParams(logit_bias=((10**6, 1.0),)))  # fmt: skip
    with pytest.raises(UnsupportedParameter) as info:
        engine.prompt_ids(job)
    assert info.value.param == "logit_bias"
