"""Adapters for the model families, on tiny local models: remote-code ChatGLM through the serial
engine, native GLM-4 through the batched engine, sentence embeddings."""

from __future__ import annotations

import base64
import struct
import time
from pathlib import Path

import pytest
import torch

from adapters import ModelLoadError, UnsupportedParameter, adapter_for
from adapters.chatglm import ChatGLMAdapter, ConversationError
from protocol import ChatMessage, EmbedJob, GenerateJob, SamplingParams
from protocol.models_file import ModelSpec
from tests.tiny_families import make_tiny_chatglm, make_tiny_encoder, make_tiny_glm4
from tests.unit.test_batching import RecordingSink
from workers.embed_engine import DimensionsNotSupported, EmbeddingEngine
from workers.serial_engine import SerialEngine


def _job(**fields) -> GenerateJob:
    return GenerateJob(request_id="r", model="m", expires_at=time.time() + 60, **fields)


def _chat(*pairs: tuple[str, str]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(role=r, content=c) for r, c in pairs)


@pytest.fixture(scope="module")
def chatglm_dir(tmp_path_factory) -> Path:
    return make_tiny_chatglm(tmp_path_factory.mktemp("chatglm"))


@pytest.fixture(scope="module")
def chatglm(chatglm_dir: Path, tmp_path_factory) -> ChatGLMAdapter:
    spec = ModelSpec(name="glm-legacy", path=chatglm_dir, trust_remote_code=True, device="cpu")
    adapter = adapter_for(spec)(spec, tmp_path_factory.mktemp("cache"))
    adapter.load()
    return adapter


def _serve(engine, job: GenerateJob) -> RecordingSink:
    sink = RecordingSink()
    request = engine.submit_job(job, engine.prompt_ids(job), sink)
    assert request.finished.wait(60) and sink.finished is not None, sink.error_code
    return sink


def test_remote_code_chatglm_needs_trust_remote_code(chatglm_dir: Path, tmp_path: Path) -> None:
    spec = ModelSpec(name="glm-legacy", path=chatglm_dir, device="cpu")
    adapter = adapter_for(spec)(spec, tmp_path)
    assert isinstance(adapter, ChatGLMAdapter)
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        adapter.load()


def test_messages_map_onto_query_and_pairs_history(chatglm: ChatGLMAdapter) -> None:
    messages = _chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "And you?"))
    assert chatglm.history_style == "pairs"
    assert chatglm.conversation(_job(messages=messages)) == ("And you?", [("Be brief.\n\nHi", "Hello!")])
    assert chatglm.conversation(_job(messages=_chat(("system", "S"), ("user", "Q")))) == ("S\n\nQ", [])
    assert chatglm.conversation(_job(prompt="Once upon")) == ("Once upon", [])
    with pytest.raises(ConversationError):
        chatglm.conversation(_job(messages=_chat(("user", "Hi"), ("assistant", "prefill"))))


def test_serial_engine_streams_exactly_what_stream_chat_answers(chatglm: ChatGLMAdapter, make_engine) -> None:
    engine = make_engine(chatglm, cls=SerialEngine)
    messages = _chat(("user", "Hi"), ("assistant", "Hello!"), ("user", "What is the capital of France?"))
    job = _job(messages=messages, params=SamplingParams(temperature=0.0, max_tokens=30))
    sink = _serve(engine, job)
    prompt = chatglm.model.build_prompt("What is the capital of France?", [("Hi", "Hello!")])
    prompt_tokens = len(chatglm.tokenizer.encode(prompt, add_special_tokens=False))
    expected, _ = chatglm.model.chat(chatglm.tokenizer, "What is the capital of France?", history=[("Hi", "Hello!")],
                                     do_sample=False, max_length=prompt_tokens + 60)  # fmt: skip
    assert len(sink.texts) > 1  # streamed in pieces
    assert expected.startswith(sink.text) and len(sink.text) > 10  # the model's own answer, cut at max_tokens
    assert sink.finished.finish_reason == "length"
    assert sink.finished.usage.prompt_tokens == prompt_tokens  # the rendered chatglm template = the model's prompt
    # stream_chat yields text, so tokens are counted by re-tokenizing it: it stops at the first
    # delta that reaches max_tokens (a delta can hold more than one token).
    assert sink.finished.usage.completion_tokens == chatglm.count_tokens(sink.text) >= 30
    assert chatglm.count_tokens("".join(sink.texts[:-1])) < 30


def test_serial_engine_applies_max_tokens_stop_and_seed(chatglm: ChatGLMAdapter, make_engine) -> None:
    engine = make_engine(chatglm, cls=SerialEngine)
    question = _chat(("user", "Tell me about queues."))
    short = _serve(engine, _job(messages=question, params=SamplingParams(temperature=0.0, max_tokens=3)))
    assert short.finished.finish_reason == "length" and 3 <= short.finished.usage.completion_tokens <= 5
    full = _serve(engine, _job(messages=question, params=SamplingParams(temperature=0.0, max_tokens=40))).text
    stop = full[4:7]
    stopped = _serve(engine, _job(messages=question, params=SamplingParams(temperature=0.0, max_tokens=40, stop=(stop,))))
    assert stopped.text == full[: full.index(stop)] and stopped.finished.finish_reason == "stop"
    sampled = [_serve(engine, _job(messages=question, params=SamplingParams(temperature=1.0, seed=5, max_tokens=12))).text
               for _ in range(2)]  # fmt: skip
    assert sampled[0] == sampled[1]


def test_what_needs_logits_is_refused_by_name(chatglm: ChatGLMAdapter, make_engine) -> None:
    engine = make_engine(chatglm, cls=SerialEngine)
    for params, name in ((SamplingParams(logprobs=2), "logprobs"), (SamplingParams(presence_penalty=1.0), "presence_penalty")):
        with pytest.raises(UnsupportedParameter) as info:
            engine.prompt_ids(_job(messages=_chat(("user", "x")), params=params))
        assert info.value.param == name
    # and what needs the model's logits or token ids, asked of a completion (never ignored)
    for fields, name in (({"prompt": (1, 2, 3)}, "prompt"),
                         ({"prompt": "x", "params": SamplingParams(prompt_logprobs=1)}, "prompt_logprobs"),
                         ({"prompt": "x", "echo": True, "params": SamplingParams(logprobs=1, prompt_logprobs=1)}, "echo"),
                         ({"prompt": "x", "params": SamplingParams(cumulative_logprob=True)}, "best_of")):  # fmt: skip
        with pytest.raises(UnsupportedParameter) as info:
            engine.prompt_ids(_job(**fields))
        assert info.value.param == name


def test_serial_engine_echoes_a_text_prompt_and_takes_max_tokens_0(chatglm: ChatGLMAdapter, make_engine) -> None:
    engine = make_engine(chatglm, cls=SerialEngine)
    sink = RecordingSink()
    job = _job(prompt="Once upon", echo=True, params=SamplingParams(max_tokens=0))
    request = engine.submit_job(job, engine.prompt_ids(job), sink)
    assert request.finished.wait(60) and sink.prompt_text == "Once upon"
    assert sink.finished.finish_reason == "length" and sink.finished.usage.completion_tokens == 0 and sink.text == ""


def test_serial_engine_cancel_stops_the_request(chatglm: ChatGLMAdapter, make_engine) -> None:
    engine = make_engine(chatglm, cls=SerialEngine)
    job = _job(messages=_chat(("user", "Go on")), params=SamplingParams(temperature=0.0, max_tokens=200))
    sink = RecordingSink()
    request = engine.submit_job(job, engine.prompt_ids(job), sink)
    engine.cancel(request)
    assert request.finished.wait(30) and sink.error_code == "cancelled"


def test_native_glm4_is_batched_and_matches_generate(tmp_path: Path, make_engine) -> None:
    folder = make_tiny_glm4(tmp_path / "glm4")
    spec = ModelSpec(name="glm4", path=folder, adapter="chatglm", device="cpu")
    adapter = adapter_for(spec)(spec, tmp_path / "cache")
    adapter.load()
    assert adapter.kind == "batch" and adapter.template is None  # its own chat template
    messages = _chat(("user", "What is the capital of France?"))
    ids = adapter.chat_prompt(messages)
    assert adapter.tokenizer.decode(ids).startswith("[gMASK]<sop><|user|>")
    engine = make_engine(adapter, slots=4)
    sink = _serve(engine, _job(messages=messages, params=SamplingParams(temperature=0.0, max_tokens=10)))
    out = adapter.model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)
    assert sink.text == adapter.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def test_a_glm4_tokenizer_without_template_falls_back_to_the_glm4_template(tmp_path: Path) -> None:
    folder = make_tiny_glm4(tmp_path / "glm4", template=False)
    spec = ModelSpec(name="glm4", path=folder, device="cpu")
    adapter = adapter_for(spec)(spec, tmp_path / "cache")
    adapter.load()
    assert adapter.template.name == "glm4" and "<|user|>" in adapter.chat_stops


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, make_module_engine) -> EmbeddingEngine:
    folder = make_tiny_encoder(tmp_path_factory.mktemp("encoder"))
    spec = ModelSpec(name="enc", path=folder, device="cpu")
    adapter = adapter_for(spec)(spec, folder)
    adapter.load()
    return make_module_engine(adapter, cls=EmbeddingEngine, slots=2)


def _vectors(encoded: tuple[str, ...]) -> list[list[float]]:
    return [list(struct.unpack(f"<{len(raw) // 4}f", raw)) for raw in map(base64.b64decode, encoded)]


def test_embeddings_are_the_mean_pooled_normalized_hidden_states(encoder: EmbeddingEngine) -> None:
    adapter = encoder.adapter
    texts = ("the cat sat on the mat", "queue worker")
    encoded, tokens = encoder.run(EmbedJob(request_id="e", model="enc", inputs=texts, expires_at=time.time() + 9))
    for text, vector in zip(texts, _vectors(encoded)):
        batch = adapter.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = adapter.model(**batch).last_hidden_state[0]
        expected = torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)
        assert torch.allclose(torch.tensor(vector), expected, atol=1e-5)  # batching with padding changes nothing
    assert tokens == sum(len(adapter.tokenizer.encode(t)) for t in texts)
    assert adapter.tokenizer.unk_token_id not in adapter.tokenizer.encode(texts[0])  # real words, not [UNK]


def test_token_id_inputs_embed_like_their_text(encoder: EmbeddingEngine) -> None:
    ids = tuple(encoder.adapter.tokenizer.encode("the dog", add_special_tokens=False))
    job = EmbedJob(request_id="e", model="enc", inputs=("the dog", ids), expires_at=time.time() + 9)
    text_vector, id_vector = _vectors(encoder.run(job)[0])
    assert text_vector == pytest.approx(id_vector, abs=1e-6)


def test_other_dimensions_are_refused(encoder: EmbeddingEngine) -> None:
    with pytest.raises(DimensionsNotSupported):
        encoder.run(EmbedJob(request_id="e", model="enc", inputs=("x",), dimensions=8, expires_at=time.time() + 9))
    assert encoder.run(EmbedJob(request_id="e", model="enc", inputs=("x",), dimensions=16, expires_at=time.time() + 9))
