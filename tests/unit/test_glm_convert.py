"""`queuechat convert-chatglm` (adapters/glm_convert.py, adapters/glm_tokenizer.py): tiny
THUDM-format checkpoints (tests/tiny_thudm.py) convert to transformers' GlmForCausalLM with the
same logits as a reference forward pass, tokenizers that encode like the originals, and a folder
that the hf-causal adapter serves batched."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from adapters import adapter_class
from adapters.glm_convert import NotConvertible, convert_checkpoint, detect_family
from adapters.glm_tokenizer import SPECIALS, parse_spm
from adapters.glm_weights import split_qkv
from adapters.hf_causal import HfCausalAdapter
from adapters.select import choose_adapter, read_config
from protocol import ChatMessage, SamplingParams
from protocol.models_file import ModelSpec
from tests.engines import generate
from tests.tiny_thudm import load_weights, make_tiny_thudm, reference_logits
from workers.contract import Finished

REPO = Path(__file__).resolve().parents[2]
SEQUENCES = [[5, 9, 30, 2, 7], list(range(3, 60)), [100, 100, 100, 1]]
# (family, weight format, rope_ratio): ChatGLM2 as .bin shards, ChatGLM3-32k's rope_ratio, GLM-4's.
CASES = [("chatglm2", "bin", None), ("chatglm3", "safetensors", 50.0), ("glm4", "safetensors", 500.0)]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def converted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, str]:
    family, fmt, rope_ratio = request.param
    root = tmp_path_factory.mktemp(family)
    src = make_tiny_thudm(root / "src", family, fmt=fmt, rope_ratio=rope_ratio)
    report = convert_checkpoint(src, root / "dst")
    assert report.family == family and report.tokenizer == "fast", report.summary()
    return src, root / "dst", family


def test_family_is_read_from_the_files(converted: tuple[Path, Path, str]) -> None:
    src, dst, family = converted
    assert detect_family(src) == family
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "glm" and config["architectures"] == ["GlmForCausalLM"]
    assert not any(dst.glob("*.py")), "the converted folder needs no remote code"


def test_logits_match_the_reference_forward(converted: tuple[Path, Path, str]) -> None:
    from transformers import GlmForCausalLM

    src, dst, _ = converted
    model = GlmForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    config, weights = json.loads((src / "config.json").read_text()), load_weights(src)
    for ids in SEQUENCES:
        expected = reference_logits(weights, config, ids)
        with torch.no_grad():
            got = model(torch.tensor([ids])).logits[0]
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_logits_match_when_batched_with_padding(converted: tuple[Path, Path, str]) -> None:
    from transformers import GlmForCausalLM

    src, dst, _ = converted
    model = GlmForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    config, weights = json.loads((src / "config.json").read_text()), load_weights(src)
    short, long = SEQUENCES[0], SEQUENCES[1][:20]
    pad = len(long) - len(short)
    ids = torch.tensor([[0] * pad + short, long])
    mask = torch.tensor([[0] * pad + [1] * len(short), [1] * len(long)])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=positions).logits
    assert torch.allclose(logits[0, pad:], reference_logits(weights, config, short), atol=1e-4)
    assert torch.allclose(logits[1], reference_logits(weights, config, long), atol=1e-4)


def test_tokenizer_encodes_like_the_original(converted: tuple[Path, Path, str]) -> None:
    from transformers import AutoTokenizer

    src, dst, family = converted
    tok = AutoTokenizer.from_pretrained(dst)
    texts = ["The capital of France is Paris.", "Hello!  How are you?\n\nfine\t", "你好，世界 😀 naïve", "x"]
    if family == "glm4":
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(src / "tokenizer.model"))
        from adapters.glm_tokenizer import GLM4_PATTERN

        enc = tiktoken.Encoding("t", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens={})
        original, original_text = enc.encode, enc.decode
        first, prefix = len(ranks), ["[gMASK]", "<sop>"]
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
        original, original_text = sp.encode, sp.decode
        first, prefix = sp.get_piece_size(), ["[gMASK]", "sop"]
    for text in texts:
        assert tok.encode(text, add_special_tokens=False) == original(text), text
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == original_text(ids)  # (SentencePiece's NFKC folds whitespace: lossy in both)
    for i, special in enumerate(SPECIALS[family]):
        assert tok.convert_tokens_to_ids(special) == first + i
    # like THUDM's tokenizers: [gMASK] sop leads every encoded text
    assert tok.encode("Paris")[:2] == tok.convert_tokens_to_ids(prefix)


def test_chat_template_renders_the_family_format(converted: tuple[Path, Path, str]) -> None:
    from transformers import AutoTokenizer

    _, dst, family = converted
    tok = AutoTokenizer.from_pretrained(dst)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == {"chatglm2": "[gMASK]sop[Round 1]\n\n问：hi\n\n答：",
                    "chatglm3": "[gMASK]sop<|user|>\n hi<|assistant|>",
                    "glm4": "[gMASK]<sop><|user|>\nhi<|assistant|>\n"}[family]  # fmt: skip
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[:2] == tok.encode("", add_special_tokens=True)[:2]  # the prefix is special tokens, not text


def test_chatglm3_stops_at_the_next_role_token(converted: tuple[Path, Path, str]) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    _, dst, family = converted
    eos = GenerationConfig.from_pretrained(dst).eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    tok = AutoTokenizer.from_pretrained(dst)
    roles = set(tok.convert_tokens_to_ids(["<|user|>", "<|observation|>"])) if family != "chatglm2" else set()
    assert roles <= eos


def test_sampling_defaults_follow_thudm_chat(converted: tuple[Path, Path, str]) -> None:
    config = json.loads((converted[1] / "generation_config.json").read_text())
    assert (config["do_sample"], config["temperature"], config["top_p"]) == (True, 0.8, 0.8)


def _greedy_reference(src: Path, ids: list[int], steps: int, eos: frozenset[int]) -> list[int]:
    config, weights = json.loads((src / "config.json").read_text()), load_weights(src)
    out: list[int] = []
    for _ in range(steps):
        token = int(reference_logits(weights, config, ids + out)[-1].argmax())
        out.append(token)
        if token in eos:
            break
    return out


def test_auto_serves_the_converted_folder_batched(converted: tuple[Path, Path, str], make_engine,
                                                  tmp_path: Path) -> None:  # fmt: skip
    src, dst, _ = converted
    spec = ModelSpec(name="glm-tiny", path=dst, device="cpu", dtype="float32")
    assert choose_adapter(spec) == "chatglm"
    assert adapter_class("chatglm", read_config(dst)) is HfCausalAdapter
    adapter = HfCausalAdapter(spec, tmp_path)
    adapter.load()
    assert adapter.template is None  # the converted tokenizer carries the family's chat template
    questions = ["What is the capital of France?", "Hello", "数字 0123"]
    engine = make_engine(adapter, slots=len(questions))
    prompts = [adapter.chat_prompt([ChatMessage(role="user", content=q)]) for q in questions]
    expected = [_greedy_reference(src, p, 12, adapter.eos_ids) for p in prompts]
    for prompt, ids in zip(prompts, expected, strict=True):  # transformers' own decoding over the KV cache
        with torch.inference_mode():
            out = adapter.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12,
                                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long))  # fmt: skip
        assert out[0, len(prompt) :].tolist()[: len(ids)] == ids
    params = SamplingParams(temperature=0.0, max_tokens=12)
    results: dict[int, tuple[str, Finished]] = {}

    def run(i: int) -> None:
        *deltas, finished = generate(engine, prompts[i], params)
        results[i] = ("".join(deltas), finished)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]  # together: one batch
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i, ids in enumerate(expected):
        text, finished = results[i]
        assert finished.usage.completion_tokens == len(ids)
        alone = list(generate(engine, prompts[i], params))
        assert "".join(alone[:-1]) == text  # batched rows decode as they do alone
        reference = adapter.tokenizer.decode(ids, skip_special_tokens=True)
        if "\ufffd" not in reference:  # random byte-fallback pieces stream differently from a one-shot decode
            assert text == reference


def test_select_tells_how_to_convert(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = make_tiny_thudm(tmp_path / "chatglm3-6b", "chatglm3")
    with caplog.at_level(logging.WARNING, logger="adapters.select"):
        assert choose_adapter(ModelSpec(name="glm", path=src)) == "chatglm"
    assert "queuechat convert-chatglm" in caplog.text and "chatglm3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="adapters.select"):
        choose_adapter(ModelSpec(name="glm", path=src))
    assert "convert-chatglm" not in caplog.text  # once per folder


def _thudm_config(**changes: object) -> dict:
    config = {"model_type": "chatglm", "padded_vocab_size": 65024, "ffn_hidden_size": 13696}
    return {**config, **changes}


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"model_type": "chatglm", "vocab_size": 130528, "position_encoding_2d": True}, "ChatGLM-6B"),
        (_thudm_config(vision_config={}), "vision"),
        (_thudm_config(pre_seq_len=128), "P-tuning"),
        (_thudm_config(rmsnorm=False), "LayerNorm"),
        (_thudm_config(original_rope=False), "rotary"),
        ({"model_type": "llama"}, "model_type"),
    ],
)
def test_unconvertible_checkpoints_are_refused_with_the_reason(
    tmp_path: Path, config: dict, reason: str
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotConvertible, match=reason):
        detect_family(tmp_path)
    assert choose_adapter(ModelSpec(name="m", path=tmp_path)) in ("chatglm", "hf-causal")  # no hint, no error


def test_split_qkv_without_multi_query_interleaves_per_head() -> None:
    heads, hd = 3, 2
    rows = torch.arange(heads * 3 * hd)  # head h: [q_h; k_h; v_h]
    q, k, v = split_qkv(rows, heads, heads, hd, per_head=True)
    assert q.tolist() == [0, 1, 6, 7, 12, 13] and k.tolist() == [2, 3, 8, 9, 14, 15]
    assert v.tolist() == [4, 5, 10, 11, 16, 17]
    # multi-query: [q heads; k groups; v groups], also when there are as many groups as heads
    q, k, v = split_qkv(torch.arange((4 + 2 * 2) * hd), 4, 2, hd)
    assert q.tolist() == list(range(8)) and k.tolist() == [8, 9, 10, 11] and v.tolist() == [12, 13, 14, 15]
    q, k, v = split_qkv(rows, heads, heads, hd)
    assert q.tolist() == list(range(6)) and v.tolist() == list(range(12, 18))
    with pytest.raises(NotConvertible, match="rows"):
        split_qkv(torch.arange(10), 4, 2, hd)


def test_full_multi_head_attention_converts_too(tmp_path: Path) -> None:
    """Released checkpoints all use multi-query attention; without it the fused rows interleave per head."""
    from transformers import GlmForCausalLM

    src = make_tiny_thudm(tmp_path / "src", "chatglm2", shards=1, multi_query_attention=False)
    convert_checkpoint(src, tmp_path / "dst", tokenizer=False)
    model = GlmForCausalLM.from_pretrained(tmp_path / "dst", dtype=torch.float32).eval()
    assert model.config.num_key_value_heads == model.config.num_attention_heads
    config, weights = json.loads((src / "config.json").read_text()), load_weights(src)
    with torch.no_grad():
        got = model(torch.tensor([SEQUENCES[1]])).logits[0]
    assert torch.allclose(got, reference_logits(weights, config, SEQUENCES[1]), atol=1e-4)


def test_dtype_conversion_only_rounds_the_weights(tmp_path: Path) -> None:
    from transformers import GlmForCausalLM

    src = make_tiny_thudm(tmp_path / "src", "glm4", shards=1)
    report = convert_checkpoint(src, tmp_path / "dst", dtype="bfloat16", tokenizer=False)
    assert (
        report.dtype == "bfloat16"
        and json.loads((tmp_path / "dst" / "config.json").read_text())["dtype"] == "bfloat16"
    )
    model = GlmForCausalLM.from_pretrained(tmp_path / "dst", dtype=torch.float32).eval()
    rounded = {k: v.to(torch.bfloat16).float() for k, v in load_weights(src).items()}
    with torch.no_grad():
        got = model(torch.tensor([SEQUENCES[1]])).logits[0]
    expected = reference_logits(rounded, json.loads((src / "config.json").read_text()), SEQUENCES[1])
    assert torch.allclose(got, expected, atol=1e-4)


def test_spm_reader_matches_sentencepiece(tmp_path: Path) -> None:
    import sentencepiece as spm

    src = make_tiny_thudm(tmp_path / "src", "chatglm2", shards=1)
    proto = parse_spm((src / "tokenizer.model").read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    assert [p.piece for p in proto.pieces] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert proto.trainer_spec.model_type == 2 and proto.trainer_spec.byte_fallback
    assert proto.pieces[sp.unk_id()].type == 2 and proto.pieces[3].type == 6  # UNKNOWN, BYTE <0x00>


def test_fast_tokenizer_failure_falls_back_to_the_remote_tokenizer(tmp_path: Path, monkeypatch) -> None:
    from adapters import glm_tokenizer

    def broken(*_: object) -> None:
        raise ValueError("no converter")

    monkeypatch.setattr(glm_tokenizer, "build_fast", broken)
    src = make_tiny_thudm(tmp_path / "src", "chatglm3", shards=1)
    report = convert_checkpoint(src, tmp_path / "dst", dtype="bfloat16")
    assert report.tokenizer == "remote-code" and "no converter" in report.summary()
    assert "trust_remote_code" in report.summary()
    assert (tmp_path / "dst" / "tokenization_chatglm.py").is_file() and not (
        tmp_path / "dst" / "tokenizer.json"
    ).exists()
    config = json.loads((tmp_path / "dst" / "tokenizer_config.json").read_text())
    assert config["auto_map"] and "<|assistant|>" in config["chat_template"]
    assert report.dtype == "bfloat16" and (tmp_path / "dst" / "model.safetensors").is_file()


def test_a_non_empty_destination_is_kept_unless_overwrite(tmp_path: Path) -> None:
    src = make_tiny_thudm(tmp_path / "src", "chatglm2", shards=1)
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        convert_checkpoint(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "keep.txt").read_text() == "mine"
    convert_checkpoint(src, tmp_path / "dst", overwrite=True, tokenizer=False)
    assert not (tmp_path / "dst" / "keep.txt").exists()


def test_a_failed_conversion_leaves_no_destination(tmp_path: Path) -> None:
    src = make_tiny_thudm(tmp_path / "src", "chatglm2", shards=1)
    (src / "config.json").write_text(
        json.dumps({**json.loads((src / "config.json").read_text()), "num_layers": 3})
    )
    with pytest.raises(NotConvertible, match="lacks"):
        convert_checkpoint(src, tmp_path / "dst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    with pytest.raises(FileExistsError):
        convert_checkpoint(src, src, overwrite=True)


def test_cli_converts_end_to_end(tmp_path: Path) -> None:
    src = make_tiny_thudm(tmp_path / "src", "glm4", shards=1)
    script = Path(sys.executable).parent / "queuechat"  # the installed console script
    cli = (
        [str(script), "convert-chatglm"]
        if script.is_file()
        else [sys.executable, "-m", "queuechat.cli", "convert-chatglm"]
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args], capture_output=True, text=True, cwd=REPO, check=False, timeout=120
        )

    done = run(str(src), str(tmp_path / "dst"))
    assert done.returncode == 0, done.stderr
    assert "converted glm4 checkpoint" in done.stdout and "fast tokenizer" in done.stdout
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["model_type"] == "glm"
    refused = run(str(tmp_path / "dst"), str(tmp_path / "again"))
    assert refused.returncode != 0 and "model_type 'glm'" in refused.stderr
