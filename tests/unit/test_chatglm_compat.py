"""The compatibility layer for THUDM's ChatGLM remote code (adapters/chatglm_compat/), on tiny
checkpoints whose own remote code uses the same old transformers APIs (tests/tiny_thudm_chatglm.py,
`make_thudm_chatglm`): each one really breaks on plain transformers, each fix is the one that
mends its break, and with all of them `stream_chat` / `chat` answer and the adapter serves them.

Every test builds its checkpoint in a folder of its own name: transformers caches remote modules
by folder name and source hash, and the fixes patch those classes, so a shared folder name would
let one test see another's patched classes."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters import adapter_for
from adapters import chatglm_compat as compat
from adapters.chatglm import ChatGLMAdapter
from protocol import ChatMessage, GenerateJob, SamplingParams
from protocol.models_file import ModelSpec
from tests.tiny_thudm_chatglm import make_thudm_chatglm
from tests.unit.test_batching import RecordingSink
from workers.serial_engine import SerialEngine

QUESTION = "What is the capital of France?"


def _checkpoint(tmp_path: Path, generation: int) -> Path:
    return make_thudm_chatglm(tmp_path / f"thudm{generation}-{uuid.uuid4().hex[:10]}", generation)


def _history(generation: int) -> list[Any]:
    if generation == 3:
        return [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    return [("Hi", "Hello")]


def _plain_load(folder: Path, what: str) -> Any:
    from transformers import AutoModel, AutoTokenizer

    loader = AutoTokenizer if what == "tokenizer" else AutoModel
    return loader.from_pretrained(folder, trust_remote_code=True)


# -- the fixtures break on transformers 5 as THUDM's code does -------------------------------


def test_chatglm6b_style_breaks_on_plain_transformers(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, 1)
    with pytest.raises(TypeError, match="'property' object cannot be interpreted as an integer"):
        _plain_load(folder, "tokenizer")  # get_vocab() before sp_tokenizer exists
    with pytest.raises(AttributeError, match="all_tied_weights_keys"):
        _plain_load(folder, "model")  # no post_init()


@pytest.mark.parametrize("generation", [2, 3])
def test_chatglm2_and_3_style_break_on_plain_transformers(tmp_path: Path, generation: int) -> None:
    folder = _checkpoint(tmp_path, generation)
    tokenizer = _plain_load(folder, "tokenizer")
    with pytest.raises(TypeError, match="unexpected keyword argument 'padding_side'"):
        tokenizer(["hello"], return_tensors="pt")
    if generation == 3:
        with pytest.raises(AttributeError, match="batch_encode_plus"):
            tokenizer.build_chat_input("hello")
    with pytest.raises(AttributeError, match="no attribute 'max_length'"):
        _plain_load(folder, "model")  # config.max_length: popped from the config on load


# -- each fix mends its break: with every fix but one, that break (and only it) shows -------------


def _patch_all_but(folder: Path, skip: str) -> dict[str, type]:
    config = json.loads((folder / "config.json").read_text())
    classes = compat.remote_classes(folder, config)
    for fix in compat.MODEL_FIXES:
        if fix.__name__ != skip:
            fix(classes["model"])
    if skip != "call_post_init":
        compat.call_post_init(classes["model"])
    for fix in compat.TOKENIZER_FIXES:
        if fix.__name__ != skip:
            fix(classes["tokenizer"])
    if skip != "keep_generation_fields_on_config":
        compat.keep_generation_fields_on_config(classes["config"])
        compat.keep_generation_fields_on_config(classes["model"].config_class)
    return classes


def _run(folder: Path, generation: int, classes: dict[str, type], direct: bool = False) -> None:
    """Load, then stream_chat, then chat; the first failure propagates."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = classes["model"].from_pretrained(folder) if direct else _plain_load(folder, "model")
    history = _history(generation)
    assert list(model.stream_chat(tokenizer, QUESTION, history=history, max_length=100, do_sample=False))
    model.chat(tokenizer, QUESTION, history=history, max_length=100, do_sample=False)


ABLATIONS = [
    ("keep_generation_fields_on_config", 2, AttributeError, "no attribute 'max_length'"),
    ("defer_special_tokens_until_vocab_exists", 1, TypeError, "'property' object cannot be interpreted"),
    ("accept_padding_side_in_pad", 2, TypeError, "unexpected keyword argument 'padding_side'"),
    ("restore_batch_encode_plus", 3, AttributeError, "batch_encode_plus"),
    ("call_post_init", 1, AttributeError, "all_tied_weights_keys"),
    ("inherit_generation_mixin", 2, AttributeError, "_get_logits_processor|generation_config|_get_stopping"),
    ("restore_get_logits_warper", 2, AttributeError, "_get_logits_warper"),
    ("restore_extract_past_from_model_output", 1, AttributeError, "_extract_past_from_model_output"),
    ("restore_extract_past_from_model_output", 3, AttributeError, "_extract_past_from_model_output"),
    ("prepare_special_tokens_on_demand", 2, AttributeError, "_eos_token_tensor"),
    ("keep_legacy_kv_cache_in_generate", 2, AttributeError, "num_hidden_layers"),
    ("tolerate_unset_mask_and_positions", 2, AttributeError, "new_ones"),
    ("let_the_model_make_its_position_ids", 1, IndexError, "too many indices"),
]


@pytest.mark.parametrize("skip,generation,error,message", ABLATIONS, ids=[f"{a[0]}-{a[1]}" for a in ABLATIONS])
def test_each_fix_mends_its_break(tmp_path: Path, skip: str, generation: int, error: type, message: str) -> None:
    folder = _checkpoint(tmp_path, generation)
    classes = _patch_all_but(folder, skip)
    # AutoModel adds GenerationMixin to a copy of a remote class by itself; the class's own
    # from_pretrained shows the break the fix is for
    with pytest.raises(error, match=message):
        _run(folder, generation, classes, direct=skip == "inherit_generation_mixin")


# -- with the layer -------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", [1, 2, 3])
def test_with_the_layer_stream_chat_and_chat_answer_alike(tmp_path: Path, generation: int) -> None:
    folder = _checkpoint(tmp_path, generation)
    tokenizer, model, fixes = compat.load_chatglm(folder)
    expected = {"model", "tokenizer", "config"}
    assert set(fixes) == expected and "inherit_generation_mixin" in fixes["model"]
    assert ("defer_special_tokens_until_vocab_exists" in fixes["tokenizer"]) == (generation == 1)
    assert "restore_batch_encode_plus" in fixes["tokenizer"] and model.config.use_cache is True
    assert ("keep_generation_fields_on_config" in fixes["config"]) and model.config.max_length == 20
    history = _history(generation)
    streamed = [r for r, _ in model.stream_chat(tokenizer, QUESTION, history=history, max_length=90, do_sample=False)]
    assert len(streamed) > 1 and all(b.startswith(a) for a, b in zip(streamed, streamed[1:]))
    answer, new_history = model.chat(tokenizer, QUESTION, history=history, max_length=90, do_sample=False)
    assert answer == streamed[-1] and answer  # generate() and the model's own loop agree
    assert len(new_history) == len(history) + (2 if generation == 3 else 1)
    # sampling goes through the same processors (temperature/top-p applied once, in _get_logits_processor)
    torch.manual_seed(3)
    sampled = list(model.stream_chat(tokenizer, QUESTION, history=history, max_length=70, temperature=0.7, top_p=0.9))
    torch.manual_seed(3)
    assert [r for r, _ in model.stream_chat(tokenizer, QUESTION, history=history, max_length=70, temperature=0.7,
                                            top_p=0.9)] == [r for r, _ in sampled]  # fmt: skip


def test_the_tokenizer_matches_what_its_vocabulary_says(tmp_path: Path) -> None:
    """Deferring the special tokens does not shift ids: they keep their vocabulary ids."""
    tokenizer, _, _ = compat.load_chatglm(_checkpoint(tmp_path, 1))
    vocab = tokenizer.sp_tokenizer
    assert tokenizer.eos_token_id == vocab["</s>"] == 2 and tokenizer.unk_token_id == 0
    assert len(tokenizer) == vocab.num_tokens
    ids = tokenizer.encode("Hi 问", add_special_tokens=False)
    assert ids == [vocab[c] for c in "Hi 问"] and tokenizer.decode(ids) == "Hi 问"


def test_restored_tokenizer_calls_behave_as_they_did(tmp_path: Path) -> None:
    tokenizer, _, _ = compat.load_chatglm(_checkpoint(tmp_path, 2))
    ids = tokenizer.encode("Hi", add_special_tokens=False)
    # ChatGLM2's build_stream_inputs: batch_encode_plus([(input_ids, None)], ...)
    encoded = tokenizer.batch_encode_plus([(ids, None)], return_tensors="pt", add_special_tokens=False,
                                          is_split_into_words=True)  # fmt: skip
    assert encoded["input_ids"].tolist() == [ids] and encoded["position_ids"].tolist() == [[0, 1]]
    batch = tokenizer(["Hi", "Hello"], padding=True, return_tensors="pt")  # the remote _pad pads on the left
    assert batch["attention_mask"][0].tolist() == [0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(AssertionError):  # a side asked for per call reaches the remote _pad (which asserts left)
        tokenizer(["Hi", "Hello"], padding=True, padding_side="right")
    assert tokenizer.padding_side == "left"


def test_fixes_apply_once_and_leave_code_that_copes_alone(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, 2)
    config = json.loads((folder / "config.json").read_text())
    first = compat.prepare_remote_classes(folder, config)
    model_class = compat.remote_classes(folder, config)["model"]
    before = dict(vars(model_class))
    assert compat.prepare_remote_classes(folder, config) == first  # recorded, not re-applied
    assert dict(vars(model_class)) == before
    # a class that already has what a fix restores is not touched
    from transformers import GenerationMixin, PreTrainedModel

    class Modern(PreTrainedModel, GenerationMixin):
        def _pad(self, encoded_inputs: Any, padding_side: str | None = None) -> Any:
            return encoded_inputs

    for fix in (compat.inherit_generation_mixin, compat.accept_padding_side_in_pad, compat.restore_get_logits_warper,
                compat.restore_extract_past_from_model_output, compat.keep_legacy_kv_cache_in_generate,
                compat.tolerate_unset_mask_and_positions):  # fmt: skip
        assert not fix(Modern), fix.__name__
    assert compat.MARK not in vars(Modern)


def test_only_chatglm_remote_code_is_patched() -> None:
    auto_map = {"AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"}
    assert compat.is_chatglm_remote_code({"model_type": "chatglm", "auto_map": auto_map})
    assert not compat.is_chatglm_remote_code({"model_type": "glm4", "architectures": ["Glm4ForCausalLM"]})
    assert not compat.is_chatglm_remote_code({"model_type": "llama", "auto_map": auto_map})
    assert not compat.is_chatglm_remote_code({"model_type": "chatglm"})


# -- through the adapter and the serial engine -------------------------------------------------------


def _job(**fields: Any) -> GenerateJob:
    return GenerateJob(request_id="r", model="m", expires_at=time.time() + 60, **fields)


def _serve(engine: SerialEngine, job: GenerateJob) -> RecordingSink:
    sink = RecordingSink()
    request = engine.submit_job(job, engine.prompt_ids(job), sink)
    assert request.finished.wait(60) and sink.finished is not None, sink.error_code
    return sink


@pytest.mark.parametrize("generation", [1, 2, 3])
def test_the_adapter_serves_thudm_style_checkpoints(tmp_path: Path, generation: int, make_engine) -> None:
    folder = _checkpoint(tmp_path, generation)
    spec = ModelSpec(name="glm", path=folder, trust_remote_code=True, device="cpu")
    adapter = adapter_for(spec)(spec, tmp_path / "cache")
    assert isinstance(adapter, ChatGLMAdapter)
    adapter.load()
    assert "call_post_init" in adapter.compat_fixes["model"]
    assert adapter.history_style == ("messages" if generation == 3 else "pairs")
    engine = make_engine(adapter, cls=SerialEngine)
    messages = (ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello"),
                ChatMessage(role="user", content=QUESTION))  # fmt: skip
    sink = _serve(engine, _job(messages=messages, params=SamplingParams(temperature=0.0, max_tokens=12)))
    query, history = adapter.conversation(_job(messages=messages))
    expected, _ = adapter.model.chat(adapter.tokenizer, query, history=history, do_sample=False, max_length=200)
    assert sink.text and expected.startswith(sink.text)  # what the model's own chat() answers
    assert sink.finished.finish_reason in ("length", "stop")
    if generation == 3:  # the prompt counted is the one its code builds, special tokens as tokens
        own = adapter.tokenizer.build_chat_input(query, history=history, role="user")["input_ids"][0].tolist()
        assert adapter.prompt_ids(_job(messages=messages)) == own


# -- GLM-4-9B-chat's first published code (generation 4 of the imitation) ---------------------------
# Its remote code needs no fix of its own: the same APIs break as in ChatGLM3 (its tiktoken
# tokenizer's own apply_chat_template calls batch_encode_plus; _pad; config.max_length; no
# post_init; the one-value _extract_past_from_model_output), and the layer mends them.  What it
# needs from the adapter: message history (its stream_chat takes a `role`; its tokenizer has no
# build_chat_input) and the glm4 prompt format.

GLM4_HISTORY = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def _glm4_checkpoint(tmp_path: Path) -> Path:
    # seed 2: the byte-level imitation answers in whole characters and does not stop at once
    return make_thudm_chatglm(tmp_path / f"thudm4-{uuid.uuid4().hex[:10]}", 4, seed=2)


def test_glm4_9b_style_breaks_on_plain_transformers(tmp_path: Path) -> None:
    folder = _glm4_checkpoint(tmp_path)
    tokenizer = _plain_load(folder, "tokenizer")
    with pytest.raises(AttributeError, match="batch_encode_plus"):
        tokenizer.apply_chat_template(GLM4_HISTORY, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'padding_side'"):
        tokenizer(["hello"], return_tensors="pt")
    with pytest.raises(AttributeError, match="no attribute 'max_length'"):
        _plain_load(folder, "model")


def _run_glm4(folder: Path, classes: dict[str, type], direct: bool = False) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = classes["model"].from_pretrained(folder) if direct else _plain_load(folder, "model")
    assert list(model.stream_chat(tokenizer, QUESTION, history=list(GLM4_HISTORY), max_length=100, do_sample=False))
    model.chat(tokenizer, QUESTION, history=list(GLM4_HISTORY), max_length=100, do_sample=False)


GLM4_ABLATIONS = [
    ("keep_generation_fields_on_config", AttributeError, "no attribute 'max_length'"),
    ("accept_padding_side_in_pad", TypeError, "unexpected keyword argument 'padding_side'"),
    ("restore_batch_encode_plus", AttributeError, "batch_encode_plus"),
    ("call_post_init", AttributeError, "all_tied_weights_keys"),
    ("restore_extract_past_from_model_output", AttributeError, "_extract_past_from_model_output"),
    ("keep_legacy_kv_cache_in_generate", AttributeError, "num_hidden_layers"),
]


@pytest.mark.parametrize("skip,error,message", GLM4_ABLATIONS, ids=[a[0] for a in GLM4_ABLATIONS])
def test_each_fix_mends_its_glm4_9b_break(tmp_path: Path, skip: str, error: type, message: str) -> None:
    folder = _glm4_checkpoint(tmp_path)
    classes = _patch_all_but(folder, skip)
    with pytest.raises(error, match=message):
        _run_glm4(folder, classes)


def test_with_the_layer_glm4_9b_style_stream_chat_and_chat_answer(tmp_path: Path) -> None:
    tokenizer, model, fixes = compat.load_chatglm(_glm4_checkpoint(tmp_path))
    assert "defer_special_tokens_until_vocab_exists" not in fixes["tokenizer"]  # its vocabulary comes first
    assert {"restore_batch_encode_plus", "accept_padding_side_in_pad"} <= set(fixes["tokenizer"])
    assert {"call_post_init", "restore_extract_past_from_model_output"} <= set(fixes["model"])
    ids = tokenizer.apply_chat_template(GLM4_HISTORY, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    user, assistant, sop = tokenizer.convert_tokens_to_ids(["<|user|>", "<|assistant|>", "<sop>"])
    assert ids["input_ids"][0, :3].tolist() == [tokenizer.convert_tokens_to_ids("[gMASK]"), sop, user]
    assert ids["input_ids"][0, -1].item() == assistant and ids["position_ids"].shape == ids["input_ids"].shape
    history = list(GLM4_HISTORY)
    streamed = [r for r, _ in model.stream_chat(tokenizer, QUESTION, history=history, max_length=90, do_sample=False)]
    assert len(streamed) > 1 and all(b.startswith(a) for a, b in zip(streamed, streamed[1:]))
    answer, new_history = model.chat(tokenizer, QUESTION, history=history, max_length=90, do_sample=False)
    assert answer == streamed[-1] and answer  # generate() and the model's own loop agree
    assert new_history[-1]["role"] == "assistant" and len(new_history) == len(history) + 2


def test_the_adapter_serves_glm4_9b_style_checkpoints(tmp_path: Path, make_engine) -> None:
    folder = _glm4_checkpoint(tmp_path)
    spec = ModelSpec(name="glm4", path=folder, trust_remote_code=True, device="cpu")
    adapter = adapter_for(spec)(spec, tmp_path / "cache")
    assert isinstance(adapter, ChatGLMAdapter)
    adapter.load()
    assert adapter.history_style == "messages" and adapter.template.name == "glm4"
    messages = (ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi"),
                ChatMessage(role="assistant", content="Hello"), ChatMessage(role="user", content=QUESTION))  # fmt: skip
    query, history = adapter.conversation(_job(messages=messages))
    assert history[0] == {"role": "system", "content": "Be brief."} and query == QUESTION
    # the prompt counted is the one the model's code builds
    own = adapter.tokenizer.apply_chat_template([*history, {"role": "user", "content": query}],
                                                add_generation_prompt=True)[0]  # fmt: skip
    assert adapter.prompt_ids(_job(messages=messages)) == list(own)
    engine = make_engine(adapter, cls=SerialEngine)
    sink = _serve(engine, _job(messages=messages, params=SamplingParams(temperature=0.0, max_tokens=12)))
    expected, _ = adapter.model.chat(adapter.tokenizer, query, history=history, do_sample=False, max_length=200)
    assert sink.text and expected.startswith(sink.text)  # what the model's own chat() answers
    assert sink.finished.finish_reason in ("length", "stop")


def test_the_adapter_refuses_glm4_code_without_stream_chat(tmp_path: Path) -> None:
    """GLM-4-9B-chat's later code has no chat()/stream_chat() (generate() and the chat template):
    refused with a pointer to the converter (not this imitation's case: its weights are not
    THUDM's) or a native checkpoint, rather than served wrongly."""
    from adapters.base import ModelLoadError

    folder = _glm4_checkpoint(tmp_path)
    modeling = folder / "modeling_chatglm.py"
    modeling.write_text(modeling.read_text().replace("def stream_chat(", "def _gone_stream_chat("))
    spec = ModelSpec(name="glm4", path=folder, trust_remote_code=True, device="cpu")
    adapter = adapter_for(spec)(spec, tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="no stream_chat\\(\\).*hf-causal"):
        adapter.load()
