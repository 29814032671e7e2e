"""The tokenizer half of adapters/glm_convert.py: THUDM's ChatGLM2/3 (SentencePiece) and GLM-4
(tiktoken) tokenizers as transformers fast tokenizers (tokenizer.json), checked against the
original library on probe texts at conversion time; on any mismatch (or a missing library)
the remote tokenizer files are copied instead and only the tokenizer needs `trust_remote_code`.

Both originals append their special tokens after the base vocabulary, in a fixed order that
THUDM's tokenization_chatglm.py hard-codes (repeated here as data), and prefix every text with
[gMASK] sop (ChatGLM2/3) or [gMASK] <sop> (GLM-4).  The converted tokenizer does the same
(its post-processor adds the prefix when `add_special_tokens` is on) and carries a chat template.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from adapters.glm_weights import read_json

log = logging.getLogger(__name__)

SPECIALS = {
    "chatglm2": ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"],
    "chatglm3": ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                 "<|observation|>"],
    "glm4": ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
             "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
             "<|end_of_video|>"],
}  # fmt: skip
PREFIX = {"chatglm2": ("[gMASK]", "sop"), "chatglm3": ("[gMASK]", "sop"), "glm4": ("[gMASK]", "<sop>")}
GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip

# Used only when the source tokenizer_config.json has no chat template of its own.
CHAT_TEMPLATES = {
    "chatglm2": (
        "[gMASK]sop{% set ns = namespace(round=0) %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] }}\n\n"
        "{% else %}{% set ns.round = ns.round + 1 %}[Round {{ ns.round }}]\n\n问：{{ m['content'] }}\n\n答："
        "{% endif %}{% endfor %}"
    ),
    "chatglm3": (
        "[gMASK]sop{% for m in messages %}<|{{ m['role'] }}|>\n {{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    ),
    "glm4": (
        "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
}

PROBES = [
    "Hello world! How are you today?", "The capital of France is Paris.", "  leading and  double spaces ",
    "tabs\tand\nnew lines\n\n", "数字 0123456789, 你好，世界。", "Émoji 😀 and naïve café", "<|user|> not special here?",
    "[gMASK]sop text", "a", " ", "\n", "",
]  # fmt: skip

_REMOTE_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenization_chatglm.py",
                 "added_tokens.json")  # fmt: skip


def special_ids(src: Path, family: str) -> dict[str, int]:
    """The special tokens' ids: they follow the base vocabulary in THUDM's fixed order."""
    path = src / "tokenizer.model"
    if family == "glm4":
        base = sum(1 for line in path.read_text().splitlines() if line.strip())
    else:
        base = len(parse_spm(path.read_bytes()).pieces)
    return {token: base + i for i, token in enumerate(SPECIALS[family])}


def convert_tokenizer(src: Path, dst: Path, family: str) -> tuple[str, list[str]]:
    """Write dst's tokenizer; returns ("fast" | "remote-code" | "none", notes)."""
    if not (src / "tokenizer.model").is_file():
        return "none", [f"no tokenizer.model in {src}"]
    source_config = read_json(src / "tokenizer_config.json")
    try:
        tokenizer = build_fast(src, family)
        bad = mismatches(tokenizer, src, family)
        if bad:
            raise ValueError(
                f"encodes {len(bad)} probe text(s) differently from the original, e.g. {bad[0]!r}"
            )
    except Exception as exc:  # noqa: BLE001 - any failure falls back to the remote tokenizer
        log.warning("fast tokenizer conversion failed (%s); copying the remote tokenizer", exc)
        return _copy_remote(src, dst, family, source_config), [f"fast tokenizer conversion failed: {exc}"]
    _fast_wrapper(tokenizer, family, source_config).save_pretrained(dst)
    return "fast", []


def build_fast(src: Path, family: str) -> Any:
    """A `tokenizers.Tokenizer` equivalent to the original (specials and prefix included)."""
    from tokenizers import AddedToken, processors

    if family == "glm4":
        from transformers.convert_slow_tokenizer import TikTokenConverter

        tok = TikTokenConverter(str(src / "tokenizer.model"), pattern=GLM4_PATTERN).converted()
        byte_level = [processors.ByteLevel(trim_offsets=False)]
    else:
        from transformers.convert_slow_tokenizer import SpmConverter

        proto = parse_spm((src / "tokenizer.model").read_bytes())
        if proto.trainer_spec.model_type == 2:  # BPE
            vocab: Any = {p.piece: i for i, p in enumerate(proto.pieces)}
        else:
            vocab = [(p.piece, p.score) for p in proto.pieces]
        tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
        if tok is None:
            raise ValueError(f"SentencePiece model type {proto.trainer_spec.model_type} is not supported")
        byte_level = []
    ids = special_ids(src, family)
    base = tok.get_vocab_size(with_added_tokens=False)
    if min(ids.values()) != base:
        raise ValueError(f"special tokens start at {min(ids.values())}, the vocabulary has {base} entries")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS[family]])
    for token, i in ids.items():
        if tok.token_to_id(token) != i:
            raise ValueError(f"{token} got id {tok.token_to_id(token)}, not {i}")
    gmask, sop = PREFIX[family]
    tok.post_processor = processors.Sequence([*byte_level, processors.TemplateProcessing(
        single=f"{gmask}:0 {sop}:0 $A:0", pair=f"{gmask}:0 {sop}:0 $A:0 $B:1",
        special_tokens=[(gmask, ids[gmask]), (sop, ids[sop])])])  # fmt: skip
    return tok


def mismatches(tok: Any, src: Path, family: str) -> list[str]:
    """Probe texts the converted tokenizer encodes differently from the original library."""
    if family == "glm4":
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(src / "tokenizer.model"))
        enc = tiktoken.Encoding(
            "glm4", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=special_ids(src, family)
        )

        def original(text: str) -> list[int]:
            return enc.encode(text, disallowed_special=())
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))

        def original(text: str) -> list[int]:
            return sp.encode(text)

    plain = [t for t in PROBES if not any(s in t for s in SPECIALS[family])]
    bad = [t for t in plain if tok.encode(t, add_special_tokens=False).ids != original(t)]
    # Specials inside text are whole tokens (the remote tokenizers register them as added tokens).
    marked = f"{SPECIALS[family][-1]}x"
    if tok.encode(marked, add_special_tokens=False).ids[:1] != [
        special_ids(src, family)[SPECIALS[family][-1]]
    ]:
        bad.append(marked)
    return bad


def _fast_wrapper(tok: Any, family: str, source_config: dict[str, Any]) -> Any:
    from transformers import PreTrainedTokenizerFast

    if family == "glm4":
        names = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": None}
    else:
        names = {"eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    wrapper = PreTrainedTokenizerFast(
        tokenizer_object=tok, padding_side="left", clean_up_tokenization_spaces=False,
        additional_special_tokens=[t for t in SPECIALS[family] if t not in names.values()], **names,
    )  # fmt: skip
    wrapper.chat_template = source_config.get("chat_template") or CHAT_TEMPLATES[family]
    return wrapper


def _copy_remote(src: Path, dst: Path, family: str, source_config: dict[str, Any]) -> str:
    for name in _REMOTE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    config = dict(source_config)
    config.setdefault("chat_template", CHAT_TEMPLATES[family])
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return "remote-code"


def parse_spm(data: bytes) -> Any:
    """A tokenizer.model as SentencePiece's own ModelProto (pieces, trainer_spec, normalizer_spec),
    read with the protobuf classes the sentencepiece package ships."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    return proto
