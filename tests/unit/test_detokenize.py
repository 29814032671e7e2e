"""IncrementalDetokenizer: deltas pushed token by token add up to decoding all the ids at once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from adapters.detokenize import IncrementalDetokenizer

TEXTS = [
    "Hello! How are you today?",
    " leading space, then  two spaces and a tab\t.",
    "The capital of France is Paris.\nThe capital of Italy is Rome.\n",
    "Élan, naïve café: über straße — 東京 😀",  # in the tiny tokenizer's corpus
    "🚀🧪 emoji the tokenizer never saw 👩‍👩‍👧 ok",  # split into single bytes
    "日本語のテキストと한국어 텍스트, 中文文本。",
    "mixed: a😀b東c\u00e9d\u0301e",  # combining accent after d
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 4-byte letters",
]

PROMPTS = ["", "Hello", "東京 😀", "The capital of"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _stream(tokenizer, prompt_ids: list[int], ids: list[int]) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    deltas = [detok.push(i) for i in ids]
    return deltas, detok.flush()


def _reference(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("prompt", PROMPTS, ids=repr)
@pytest.mark.parametrize("text", TEXTS, ids=lambda t: repr(t[:12]))
def test_deltas_plus_flush_equal_decoding_all_ids(tokenizer, text: str, prompt: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas, tail = _stream(tokenizer, tokenizer.encode(prompt, add_special_tokens=False), ids)
    assert "".join(deltas) + tail == _reference(tokenizer, ids) == text


@pytest.mark.parametrize("text", TEXTS, ids=lambda t: repr(t[:12]))
def test_no_delta_ends_in_replacement_character_for_valid_text(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas, tail = _stream(tokenizer, tokenizer.encode("Hello", add_special_tokens=False), ids)
    for delta in [*deltas, tail]:
        assert "\ufffd" not in delta, deltas


def test_multibyte_characters_really_span_several_tokens(tokenizer) -> None:
    """Guards the tests above: they only mean something if a character is split over tokens."""
    ids = tokenizer.encode("🚀", add_special_tokens=False)
    assert len(ids) > 1
    assert tokenizer.decode(ids[:1]).endswith("\ufffd")


def test_incomplete_character_is_held_then_emitted_whole(tokenizer) -> None:
    ids = tokenizer.encode("a🚀", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [])
    deltas = [detok.push(i) for i in ids]
    assert deltas[-1].endswith("🚀")
    assert all(d == "" for d in deltas[1:-1])
    assert "".join(deltas) == "a🚀"
    assert detok.flush() == ""


def test_flush_emits_an_incomplete_character_as_replacement(tokenizer) -> None:
    ids = tokenizer.encode("ok🚀", add_special_tokens=False)
    ok_ids = tokenizer.encode("ok", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [])
    partial = ids[: len(ok_ids) + 1]  # "ok" plus the first byte of the rocket
    emitted = "".join(detok.push(i) for i in partial)
    assert emitted == "ok"
    assert detok.flush() == _reference(tokenizer, partial)[len("ok") :] != ""


def test_special_tokens_produce_no_text(tokenizer) -> None:
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = (
        tokenizer.encode("Hi", add_special_tokens=False)
        + [eos]
        + tokenizer.encode(" there", add_special_tokens=False)
    )
    deltas, tail = _stream(tokenizer, [], ids)
    assert "".join(deltas) + tail == "Hi there"


def test_prompt_text_is_never_emitted(tokenizer) -> None:
    prompt_ids = tokenizer.encode("The capital of France is", add_special_tokens=False)
    ids = tokenizer.encode(" Paris.", add_special_tokens=False)
    deltas, tail = _stream(tokenizer, prompt_ids, ids)
    assert "".join(deltas) + tail == " Paris."


def test_random_token_sequences_concatenate_to_their_decoding(tokenizer) -> None:
    """Arbitrary generated ids, as a random model emits them (invalid byte runs included), after a
    prompt that is real text.  (A prompt whose ids end inside a character cannot come from text.)"""
    rng = random.Random(7)
    vocab = len(tokenizer)
    for _ in range(300):
        prompt = tokenizer.encode(rng.choice(TEXTS + PROMPTS), add_special_tokens=False)
        ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 20))]
        deltas, tail = _stream(tokenizer, prompt, ids)
        assert "".join(deltas) + tail == _reference(tokenizer, ids), (prompt, ids)
