"""BatchEngine over the real HfCausalAdapter and a tiny random Llama: text, stops, usage, seeds, limits."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from adapters import AdapterError, ContextLengthExceeded
from adapters.hf_causal import HfCausalAdapter
from protocol import ChatMessage, GenerateJob, SamplingParams
from protocol.models_file import ModelSpec
from tests.engines import generate
from workers.batch_engine import BatchEngine
from workers.contract import Cancelled, Finished

CONTEXT = 256  # tests/tiny_models.py
PROMPT = "The capital of France is"
GREEDY = SamplingParams(temperature=0.0)


def _load(folder: Path, cache: Path) -> HfCausalAdapter:
    adapter = HfCausalAdapter(ModelSpec(name="tiny", path=folder, device="cpu", dtype="float32"), cache)
    adapter.load()
    return adapter


@pytest.fixture(scope="module")
def engine(make_module_engine) -> BatchEngine:
    return make_module_engine()


def _job(**fields: object) -> GenerateJob:
    return GenerateJob(request_id="cmpl-test", model="tiny", expires_at=time.time() + 60, **fields)


def _run(engine: BatchEngine, prompt_ids: list[int], params: SamplingParams, **kw: object) -> tuple[str, Finished]:
    out = list(generate(engine, prompt_ids, params, **kw))
    *deltas, finished = out
    assert isinstance(finished, Finished)
    assert all(isinstance(d, str) and d for d in deltas)  # only non-empty text before Finished
    return "".join(deltas), finished


def _reference(adapter: HfCausalAdapter, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding: the generated ids (EOS included if it came)."""
    with torch.inference_mode():
        out = adapter.model.generate(
            torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new_tokens,
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        )  # fmt: skip
    return out[0, len(prompt_ids) :].tolist()


def _decode(adapter: HfCausalAdapter, ids: list[int]) -> str:
    return adapter.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("prompt", [PROMPT, "Hello! How are", "東京 😀"])
def test_greedy_output_equals_transformers_generate(
    engine: BatchEngine, adapter: HfCausalAdapter, prompt: str
) -> None:
    ids = engine.prompt_ids(_job(prompt=prompt))
    ref = _reference(adapter, ids, 40)
    text, finished = _run(engine, ids, SamplingParams(temperature=0.0, max_tokens=40))
    assert text == _decode(adapter, ref)
    assert finished.usage.completion_tokens == len(ref)


def test_length_finish_uses_exactly_max_tokens(engine: BatchEngine, adapter: HfCausalAdapter) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    ref = _reference(adapter, ids, 12)
    assert len(ref) == 12 and not set(ref) & adapter._eos_ids, "the reference hit EOS; pick another prompt"
    text, finished = _run(engine, ids, SamplingParams(temperature=0.0, max_tokens=12))
    assert finished.finish_reason == "length"
    assert finished.usage.completion_tokens == 12
    assert text == _decode(adapter, ref)


def test_stop_string_from_the_middle_cuts_right_before_it(engine: BatchEngine, adapter: HfCausalAdapter) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    reference = _decode(adapter, _reference(adapter, ids, 40))
    middle = len(reference) // 2
    stop = reference[middle : middle + 3]
    assert len(stop) == 3
    expected = reference[: reference.find(stop)]
    text, finished = _run(engine, ids, SamplingParams(temperature=0.0, max_tokens=40, stop=(stop,)))
    assert text == expected
    assert finished.finish_reason == "stop"
    assert finished.usage.completion_tokens < 40


def test_stop_string_that_never_appears_changes_nothing(engine: BatchEngine, adapter: HfCausalAdapter) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    plain, done_plain = _run(engine, ids, SamplingParams(temperature=0.0, max_tokens=20))
    stopped, done_stopped = _run(
        engine, ids, SamplingParams(temperature=0.0, max_tokens=20, stop=("NEVER-THERE",))
    )
    assert stopped == plain
    assert done_stopped == done_plain


def test_usage_prompt_tokens_is_the_prompt_length(engine: BatchEngine, adapter: HfCausalAdapter) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    assert ids == adapter.tokenizer.encode(PROMPT)
    _, finished = _run(engine, ids, SamplingParams(temperature=0.0, max_tokens=3))
    assert finished.usage.prompt_tokens == len(ids)
    assert finished.usage.total_tokens == len(ids) + 3


def test_same_seed_gives_same_text(engine: BatchEngine) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    params = SamplingParams(temperature=0.9, max_tokens=24, seed=1234)
    assert _run(engine, ids, params)[0] == _run(engine, ids, params)[0]


def test_different_seeds_give_different_text(engine: BatchEngine) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    texts = {_run(engine, ids, SamplingParams(temperature=0.9, max_tokens=24, seed=s))[0] for s in range(5)}
    assert len(texts) > 1


def test_seeded_sampling_differs_from_greedy(engine: BatchEngine) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    greedy = _run(engine, ids, SamplingParams(temperature=0.0, max_tokens=24))[0]
    sampled = {_run(engine, ids, SamplingParams(temperature=0.9, max_tokens=24, seed=s))[0] for s in range(3)}
    assert sampled != {greedy}


def test_tiny_top_p_keeps_only_the_best_token(engine: BatchEngine) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    greedy = _run(engine, ids, SamplingParams(temperature=0.0, max_tokens=24))[0]
    assert _run(engine, ids, SamplingParams(temperature=1.5, top_p=1e-6, max_tokens=24, seed=9))[0] == greedy


def test_cancelled_raises_and_stops_asking(engine: BatchEngine) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(Cancelled):
        list(generate(engine, ids, SamplingParams(temperature=0.0, max_tokens=50), cancelled=cancelled))
    assert len(calls) == 3


def test_cancelled_from_the_start_yields_no_finished(engine: BatchEngine) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    seen: list[object] = []
    steps = generate(engine, ids, SamplingParams(temperature=0.0, max_tokens=50), cancelled=lambda: True)
    with pytest.raises(Cancelled):
        seen.extend(steps)
    assert not any(isinstance(item, Finished) for item in seen)


def test_context_length_is_the_models(adapter: HfCausalAdapter) -> None:
    assert adapter.context_length == CONTEXT


def test_prompt_longer_than_context_is_refused(engine: BatchEngine) -> None:
    with pytest.raises(ContextLengthExceeded) as info:
        engine.prompt_ids(_job(prompt="Hello! How are you today? " * 100))
    assert info.value.limit == CONTEXT
    assert info.value.prompt_tokens > CONTEXT
    assert str(CONTEXT) in str(info.value)


def test_chat_longer_than_context_is_refused(engine: BatchEngine) -> None:
    messages = tuple(
        ChatMessage(role="user", content="Queues hold work until a worker is free.") for _ in range(40)
    )
    with pytest.raises(ContextLengthExceeded):
        engine.prompt_ids(_job(messages=messages))


def test_prompt_filling_the_whole_context_is_refused(engine: BatchEngine, adapter: HfCausalAdapter) -> None:
    text = "Hello! How are you today? " * 100
    ids = adapter.tokenizer.encode(text)[:CONTEXT]
    exact = adapter.tokenizer.decode(ids)
    assert len(adapter.tokenizer.encode(exact)) == CONTEXT
    with pytest.raises(ContextLengthExceeded):
        engine.prompt_ids(_job(prompt=exact))


def test_generation_never_runs_past_the_context(engine: BatchEngine) -> None:
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    prompt = (ids * CONTEXT)[: CONTEXT - 3]
    _, finished = _run(engine, prompt, SamplingParams(temperature=0.0, max_tokens=50))
    assert finished.finish_reason == "length"
    assert finished.usage.completion_tokens == 3
    _, unbounded = _run(engine, prompt, SamplingParams(temperature=0.0))
    assert unbounded.usage.completion_tokens == 3


def test_empty_prompt_is_answered_or_refused_as_a_client_error(engine: BatchEngine) -> None:
    try:
        ids = engine.prompt_ids(_job(prompt=""))
    except AdapterError:
        return  # refusing it as the client's fault (a 400) is acceptable too
    _, finished = _run(engine, ids, SamplingParams(temperature=0.0, max_tokens=3))
    assert finished.usage.completion_tokens >= 1


def test_chat_prompt_uses_the_chat_template(engine: BatchEngine, adapter: HfCausalAdapter) -> None:
    job = _job(
        messages=(
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Hi there"),
        )
    )
    text = adapter.tokenizer.decode(engine.prompt_ids(job))
    assert "<|im_start|>assistant" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text
    assert "<|im_start|>user\nHi there<|im_end|>" in text
    assert text.count("<|endoftext|>") == 0  # no BOS added on top of the template


def test_eos_ends_generation_with_stop(adapter: HfCausalAdapter, tmp_path: Path, make_engine) -> None:
    """Make a token the greedy model emits mid-way an EOS token; generation must end there."""
    ids = adapter.tokenizer.encode(PROMPT)
    ref = _reference(adapter, ids, 30)
    cut = next(i for i, t in enumerate(ref) if i >= 3 and t not in ref[:i])
    folder = shutil.copytree(adapter.spec.path, tmp_path / "eos-model")
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [adapter.tokenizer.eos_token_id, ref[cut]]
    config_path.write_text(json.dumps(config))
    eos_engine = make_engine(_load(folder, tmp_path / "cache"))
    text, finished = _run(eos_engine, ids, SamplingParams(temperature=0.0, max_tokens=30))
    assert finished.finish_reason == "stop"
    assert text == _decode(adapter, ref[:cut])
    assert finished.usage.completion_tokens == cut + 1  # the EOS token counts, as in transformers' output


def test_models_file_defaults_apply_only_where_the_request_is_silent(
    tiny_model_dir: Path, tmp_path: Path, engine: BatchEngine, make_engine
) -> None:
    spec = ModelSpec(name="tiny", path=tiny_model_dir, device="cpu", defaults={"temperature": 0.0})
    greedy_by_default = HfCausalAdapter(spec, tmp_path)
    greedy_by_default.load()
    defaulted = make_engine(greedy_by_default)
    ids = defaulted.prompt_ids(_job(prompt=PROMPT))
    expected, _ = _run(engine, ids, SamplingParams(temperature=0.0, max_tokens=12))
    unseeded = [_run(defaulted, ids, SamplingParams(max_tokens=12))[0] for _ in range(3)]
    assert unseeded == [expected] * 3, "no temperature in the request: the models file's 0 applies"
    sampled = {_run(defaulted, ids, SamplingParams(temperature=1.5, max_tokens=12, seed=s))[0] for s in range(6)}
    assert len(sampled) > 1, "the request's own temperature wins over the default"


def test_models_file_max_tokens_caps_requests_that_set_none(
    tiny_model_dir: Path, tmp_path: Path, make_engine
) -> None:
    spec = ModelSpec(name="tiny", path=tiny_model_dir, device="cpu", defaults={"max_tokens": 5})
    capped = HfCausalAdapter(spec, tmp_path)
    capped.load()
    engine = make_engine(capped)
    ids = engine.prompt_ids(_job(prompt=PROMPT))
    assert _run(engine, ids, SamplingParams(temperature=0.0))[1].usage.completion_tokens <= 5
    assert _run(engine, ids, SamplingParams(temperature=0.0, max_tokens=9))[1].usage.completion_tokens > 5
