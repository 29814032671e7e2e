"""Evaluation-harness features, below the HTTP layer: token prompts, the prompt's logprobs from
the prefill (echo with logprobs, vLLM's prompt_logprobs), max_tokens 0, best_of's cumulative
logprob; the request models that ask for them and the rendering of their events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters import AdapterError, UnsupportedParameter
from adapters.echo import EchoAdapter
from gateway.completion_request import CreateCompletionRequest
from gateway.errors import InvalidRequest
from gateway.render import Envelope, collect
from protocol import (
    DoneEvent,
    GenerateJob,
    ModelSpec,
    PromptEvent,
    PromptToken,
    RankedLogprob,
    SamplingParams,
    TokenEvent,
    Usage,
)
from tests.unit.test_batching import RecordingSink
from workers.batch_engine import BatchEngine

PROMPT = "The quick brown fox jumps over the lazy dog because it wants to see the other side of the hill"


def _job(**fields: Any) -> GenerateJob:
    return GenerateJob(request_id="r", model="m", expires_at=time.time() + 60, **fields)


def _serve(engine: BatchEngine, job: GenerateJob) -> RecordingSink:
    sink = RecordingSink()
    request = engine.submit_job(job, engine.prompt_ids(job), sink)
    assert request.finished.wait(60) and sink.finished is not None, sink.error_code
    return sink


def _direct_logprobs(adapter, ids: list[int]) -> torch.Tensor:
    """log-softmax of the model's logits over the whole prompt, in one plain forward pass."""
    with torch.inference_mode():
        logits = adapter.model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def _check_against_model(adapter, ids: list[int], tokens: tuple[PromptToken, ...], top: int) -> None:
    logp = _direct_logprobs(adapter, ids)
    assert [t.id for t in tokens] == ids
    assert tokens[0].logprob is None and tokens[0].rank is None and tokens[0].top == ()
    for i, token in enumerate(tokens[1:], start=1):
        row = logp[i - 1]
        assert token.logprob == pytest.approx(float(row[ids[i]]), abs=1e-4)
        assert token.rank == int((row > row[ids[i]]).sum()) + 1
        values, best = torch.topk(row, top)
        assert [a.id for a in token.top] == best.tolist()
        assert [a.logprob for a in token.top] == pytest.approx(values.tolist(), abs=1e-4)
        assert [a.rank for a in token.top] == list(range(1, top + 1))


@pytest.mark.parametrize("prefill_chunk", [4096, 5], ids=["one pass", "chunked"])
def test_prompt_logprobs_are_the_models_log_softmax(adapter, make_engine, prefill_chunk: int) -> None:
    engine = make_engine(slots=4, prefill_chunk=prefill_chunk)
    job = _job(prompt=PROMPT, echo=True, params=SamplingParams(temperature=0.0, max_tokens=3, prompt_logprobs=2))
    sink = _serve(engine, job)
    ids = adapter.text_prompt(PROMPT)
    assert sink.prompt_text == PROMPT
    _check_against_model(adapter, ids, sink.prompt_tokens, top=2)
    plain = _serve(engine, _job(prompt=PROMPT, params=SamplingParams(temperature=0.0, max_tokens=3)))
    assert sink.text == plain.text  # scoring the prompt changes nothing downstream


def test_a_scored_prompt_takes_nothing_from_the_prefix_cache(adapter, make_engine) -> None:
    engine = make_engine(slots=4)
    ids = adapter.text_prompt(PROMPT * 3)  # several blocks of the prefix cache
    warm = _serve(engine, _job(prompt=PROMPT * 3, params=SamplingParams(temperature=0.0, max_tokens=1)))
    assert warm.finished is not None and adapter.cache_stats()["prefix_cache_bytes"] > 0
    sink = _serve(engine, _job(prompt=PROMPT * 3, params=SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)))
    _check_against_model(adapter, ids, sink.prompt_tokens, top=1)


def test_batched_scored_rows_beside_unscored_ones(adapter, make_engine) -> None:
    engine = make_engine(slots=8, prefill_chunk=7)
    prompts = [PROMPT[: 20 + 9 * k] for k in range(6)]
    sinks, requests = [], []
    for k, prompt in enumerate(prompts):
        params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=1 if k % 2 else None)
        job, sink = _job(prompt=prompt, params=params), RecordingSink()
        requests.append(engine.submit_job(job, engine.prompt_ids(job), sink))
        sinks.append(sink)
    assert all(r.finished.wait(60) for r in requests)
    for k, (prompt, sink) in enumerate(zip(prompts, sinks)):
        if k % 2:
            _check_against_model(adapter, adapter.text_prompt(prompt), sink.prompt_tokens, top=1)
        else:
            assert not hasattr(sink, "prompt_tokens")


def test_max_tokens_0_scores_the_prompt_without_generating(adapter, make_engine) -> None:
    engine = make_engine()
    sink = _serve(engine, _job(prompt=PROMPT, echo=True, params=SamplingParams(max_tokens=0, prompt_logprobs=0)))
    assert sink.text == "" and sink.finished.finish_reason == "length"
    assert sink.finished.usage == Usage(prompt_tokens=len(adapter.text_prompt(PROMPT)), completion_tokens=0)
    assert len(sink.prompt_tokens) == len(adapter.text_prompt(PROMPT))


def test_a_token_prompt_is_used_as_given(adapter, make_engine) -> None:
    engine = make_engine()
    ids = adapter.text_prompt(PROMPT)
    params = SamplingParams(temperature=0.0, max_tokens=8)
    by_text = _serve(engine, _job(prompt=PROMPT, params=params))
    by_ids = _serve(engine, _job(prompt=tuple(ids), echo=True, params=params))
    assert by_ids.text == by_text.text and by_ids.finished == by_text.finished
    assert by_ids.prompt_text == adapter.decode(ids)
    with pytest.raises(AdapterError) as info:
        engine.prompt_ids(_job(prompt=(1, adapter.vocab_size)))
    assert info.value.param == "prompt" and str(adapter.vocab_size) in str(info.value)


def test_cumulative_logprob_sums_the_generated_tokens_logprobs(adapter, make_engine) -> None:
    engine = make_engine()
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=6, cumulative_logprob=True)
    quiet = _serve(engine, _job(prompt=PROMPT, params=params))
    loud = _serve(engine, _job(prompt=PROMPT, params=params.model_copy(update={"logprobs": 0})))
    assert quiet.text == loud.text
    assert quiet.cumulative_logprob == pytest.approx(sum(e.logprob for e in loud.logprobs), abs=1e-5)
    assert _serve(engine, _job(prompt=PROMPT, params=SamplingParams(max_tokens=2))).cumulative_logprob is None


def test_the_echo_model_refuses_prompt_logprobs_by_name(tmp_path: Path, make_engine) -> None:
    echo = EchoAdapter(ModelSpec(name="echo", adapter="echo"), tmp_path)
    echo.load()
    engine = make_engine(echo)
    with pytest.raises(UnsupportedParameter) as info:
        engine.prompt_ids(_job(prompt="hi", params=SamplingParams(prompt_logprobs=1)))
    assert info.value.param == "prompt_logprobs"
    with pytest.raises(UnsupportedParameter) as info:
        engine.prompt_ids(_job(prompt="hi", echo=True, params=SamplingParams(logprobs=1, prompt_logprobs=1)))
    assert info.value.param == "echo"
    sink = _serve(engine, _job(prompt=(104, 105), echo=True, params=SamplingParams(max_tokens=2)))
    assert sink.prompt_text == "hi" and sink.text == "hi"


# ---- the request --------------------------------------------------------------------------


def completion(**fields: Any) -> CreateCompletionRequest:
    return CreateCompletionRequest.model_validate({"model": "tiny", "prompt": "Once", **fields})


def test_prompts_may_be_token_ids() -> None:
    assert completion(prompt=[1, 2]).prompts == [(1, 2)]
    assert completion(prompt=[[1, 2], [3]]).prompts == [(1, 2), (3,)]
    jobs = completion(prompt=[[1, 2], [3]], echo=True).to_jobs(10)
    assert [j.prompt for j in jobs] == [(1, 2), (3,)] and all(j.echo for j in jobs)
    assert GenerateJob.model_validate(jobs[0].model_dump(mode="json")).prompt == (1, 2)  # over the wire


def test_echo_with_logprobs_asks_for_the_prompts_logprobs() -> None:
    request = completion(echo=True, logprobs=2, max_tokens=0, prompt_logprobs=1)
    (job,) = request.to_jobs(10)
    assert job.params.prompt_logprobs == 2 and job.params.max_tokens == 0 and job.echo
    reply = request.reply()
    assert reply.echo_top == 2 and reply.prompt_logprobs == 1 and reply.logprobs
    assert completion(logprobs=2).to_jobs(10)[0].params.prompt_logprobs is None


def test_best_of_queues_every_candidate_and_asks_for_their_scores() -> None:
    request = completion(prompt=["a", "b"], n=2, best_of=3, seed=7)
    jobs = request.to_jobs(10)
    assert [j.prompt for j in jobs] == ["a"] * 3 + ["b"] * 3
    assert [j.params.seed for j in jobs] == [7, 8, 9] * 2 and all(j.params.cumulative_logprob for j in jobs)
    assert request.reply().best_of == 3 and request.reply().per_prompt == 3
    assert not completion(n=2, best_of=2).to_jobs(10)[0].params.cumulative_logprob  # best_of = n: just n


@pytest.mark.parametrize("fields,param", [
    ({"n": 3, "best_of": 2}, "best_of"),
    ({"best_of": 2, "stream": True}, "best_of"),
    ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ({"best_of": 40, "prompt": ["a", "b"]}, "best_of"),
])  # fmt: skip
def test_what_cannot_be_served_is_a_400_naming_it(fields: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        completion(**fields).to_jobs(10)
    assert info.value.param == param


# ---- rendering ----------------------------------------------------------------------------


def _prompt_event(seq: int = 1) -> PromptEvent:
    alt = RankedLogprob(id=7, token=" b", logprob=-0.5, rank=1)
    return PromptEvent(seq=seq, text="a b", tokens=(PromptToken(id=5, token="a"),
                       PromptToken(id=7, token=" b", logprob=-0.5, rank=1, top=(alt,))))  # fmt: skip


async def _events(*pairs: tuple[int, Any]) -> AsyncIterator[tuple[int, Any]]:
    for pair in pairs:
        yield pair


def _done(seq: int, completion_tokens: int = 0, cumulative: float | None = None) -> DoneEvent:
    return DoneEvent(seq=seq, finish_reason="length", usage=Usage(prompt_tokens=2, completion_tokens=completion_tokens),
                     cumulative_logprob=cumulative)  # fmt: skip


def test_echo_with_logprobs_renders_the_prompt_first_with_nulls() -> None:
    reply = completion(echo=True, logprobs=1, max_tokens=0, prompt_logprobs=0).reply()
    env = Envelope(id="cmpl-1", model="tiny", fmt=reply.fmt)
    body = asyncio.run(collect(_events((0, _prompt_event()), (0, _done(2))), env, reply, 1)).to_dict()
    choice = body["choices"][0]
    assert choice["text"] == "a b"
    assert choice["logprobs"] == {"tokens": ["a", " b"], "token_logprobs": [None, -0.5],
                                  "top_logprobs": [None, {" b": -0.5}], "text_offset": [0, 1]}  # fmt: skip
    assert choice["prompt_logprobs"] == [None, {"7": {"logprob": -0.5, "rank": 1, "decoded_token": " b"}}]


def test_best_of_returns_the_likeliest_candidates_and_counts_them_all() -> None:
    reply = completion(prompt=["a", "b"], n=1, best_of=2).reply()
    env = Envelope(id="cmpl-1", model="tiny", fmt=reply.fmt)
    events = [(0, _done(1, 3, -4.0)), (1, _done(1, 3, -1.0)), (2, _done(1, 2, -0.5)), (3, _done(1, 2, -0.7))]
    texts = {0: "w", 1: "x", 2: "y", 3: "z"}
    stream = [(i, TokenEvent(seq=0, text=texts[i])) for i in range(4)] + events
    body = asyncio.run(collect(_events(*stream), env, reply, 4)).to_dict()
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "x"), (1, "y")]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 10, "total_tokens": 14}
