"""Convert THUDM's remote-code ChatGLM2-6B / ChatGLM3-6B / GLM-4-9B(-chat) checkpoints to
transformers' native GLM architecture (`GlmForCausalLM`, model_type `glm`), so that the generic
`hf-causal` adapter serves them batched, without running the checkpoint's own Python code.

    queuechat convert-chatglm SRC DST

All three generations share one network (partial rotary on half of each head's dims in
interleaved pairs, multi-query attention with a fused, biased QKV, SwiGLU with a fused
gate/up projection, RMSNorm) and one weight naming, which is exactly transformers' `Glm`
(not `Glm4`: that is GLM-4-0414, with two extra norms per layer).  The weights are renamed and
the fused QKV is split into q/k/v; nothing is recomputed, so the logits match.  ChatGLM-6B (the
first generation: 2D positions, LayerNorm, GELU) and the vision models are refused.

adapters/glm_weights.py maps the config and the tensor names.  adapters/glm_tokenizer.py turns
the tokenizer into a transformers fast tokenizer, checked against the original library; if that
fails the remote tokenizer files are copied and only the tokenizer needs `trust_remote_code`.

Importing this module is cheap (no torch): adapters/select.py uses `conversion_hint`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.glm_weights import (
    NotConvertible,
    check_complete,
    convert_config,
    convert_tensors,
    read_json,
    read_shard,
    source_shards,
)

log = logging.getLogger(__name__)

FAMILIES = ("chatglm2", "chatglm3", "glm4")
COMMAND = "queuechat convert-chatglm"


@dataclass
class ConvertReport:
    family: str
    src: Path
    dst: Path
    tensors: int = 0
    shards: int = 0
    dtype: str = ""
    tokenizer: str = "none"  # "fast" | "remote-code" | "none"
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        tokenizer = {
            "fast": "tokenizer: converted to a transformers fast tokenizer (tokenizer.json); no remote code needed",
            "remote-code": (
                "tokenizer: remote tokenizer files copied; serve with `trust_remote_code: true` "
                "(the model itself runs transformers' own code)"
            ),
            "none": "tokenizer: none found in the source; copy one in before serving",
        }[self.tokenizer]
        lines = [
            (
                f"converted {self.family} checkpoint {self.src} -> {self.dst} (GlmForCausalLM, {self.dtype}, "
                f"{self.tensors} tensors in {self.shards} file(s))"
            ),
            tokenizer,
            *self.notes,
        ]
        return "\n".join(lines)


def detect_family(folder: Path, config: dict[str, Any] | None = None) -> str:
    """The family ("chatglm2", "chatglm3" or "glm4") of a convertible THUDM checkpoint folder; raises
    NotConvertible (with the reason) otherwise.  Reads files, runs no code."""
    config = read_json(folder / "config.json") if config is None else config
    if config.get("model_type") != "chatglm":
        raise NotConvertible(f"{folder}: model_type {config.get('model_type')!r} is not THUDM's 'chatglm'")
    if "vision_config" in config:
        raise NotConvertible(f"{folder}: a vision model (GLM-4V); only text models convert")
    if "padded_vocab_size" not in config or "ffn_hidden_size" not in config:
        raise NotConvertible(f"{folder}: ChatGLM-6B (first generation: 2D positions, LayerNorm, GELU) has no "
                             "transformers-native counterpart")  # fmt: skip
    if config.get("pre_seq_len") is not None:
        raise NotConvertible(f"{folder}: a P-tuning v2 checkpoint (pre_seq_len); its prefix encoder has no native "
                             "counterpart")  # fmt: skip
    unsupported = {
        "rmsnorm": (True, "LayerNorm instead of RMSNorm"),
        "add_bias_linear": (False, "biases on the linear layers"),
        "apply_residual_connection_post_layernorm": (False, "post-layernorm residuals"),
        "post_layer_norm": (True, "no final layer norm"),
        "original_rope": (True, "a rotary variant other than ChatGLM's interleaved pairs"),
    }
    for key, (wanted, what) in unsupported.items():
        if config.get(key, wanted) != wanted:
            raise NotConvertible(f"{folder}: {what} ({key}={config.get(key)!r}); transformers' Glm has none")
    tokenizer_config = read_json(folder / "tokenizer_config.json")
    tokenizer_class = str(tokenizer_config.get("tokenizer_class", ""))
    if (
        "ChatGLM4" in tokenizer_class
        or config["padded_vocab_size"] >= 150000
        or _is_tiktoken(folder / "tokenizer.model")
    ):
        return "glm4"
    remote = folder / "tokenization_chatglm.py"
    template = str(tokenizer_config.get("chat_template", ""))
    named = str(config.get("_name_or_path", "")).lower()
    if (
        "<|user|>" in template
        or "chatglm3" in named
        or (remote.is_file() and "<|user|>" in remote.read_text(errors="replace"))
    ):
        return "chatglm3"
    return "chatglm2"


def conversion_hint(folder: Path | None, config: dict[str, Any]) -> str | None:
    """A one-line suggestion to convert `folder`, or None when it cannot be converted."""
    if folder is None or not folder.is_dir():
        return None
    try:
        family = detect_family(folder, config)
    except NotConvertible:
        return None
    return (f"{folder} is a {family} checkpoint in THUDM's remote-code format, served one request at a time; "
            f"`{COMMAND} {folder} {folder}-hf` converts it to transformers' native GLM, served batched "
            "by hf-causal without remote model code")  # fmt: skip


def _is_tiktoken(path: Path) -> bool:
    """GLM-4's tokenizer.model is tiktoken's text format (`base64 rank` lines), not SentencePiece."""
    try:
        with path.open("rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return bool(re.match(rb"[A-Za-z0-9+/=]+ \d+\n", head))


_EOS_BY_FAMILY = {"chatglm3": ("<|user|>", "<|observation|>"), "glm4": ()}


def convert_checkpoint(src: Path, dst: Path, *, dtype: str | None = None, family: str | None = None,
                       tokenizer: bool = True, overwrite: bool = False) -> ConvertReport:  # fmt: skip
    """Write `src` (THUDM format) to `dst` as a GlmForCausalLM folder: config.json,
    generation_config.json, safetensors shards (one per source shard, so memory stays at one
    shard) and the tokenizer.  `dtype`: "float32" | "float16" | "bfloat16" (default: keep).
    `family` overrides the one read from the files (the architecture checks still apply).
    The folder is written beside `dst` and moved there when complete."""
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise NotConvertible(f"{src}: no config.json")
    thudm = read_json(src / "config.json")
    detected = detect_family(src, thudm)  # the architecture checks, even when `family` is given
    family = family or detected
    if family not in FAMILIES:
        raise NotConvertible(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if dst.resolve() == src.resolve():
        raise FileExistsError(f"{dst} is the source folder; pick a new one")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty (use --overwrite)")
    work = dst.parent / f".{dst.name}.converting"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        report = _convert_into(src, work, thudm, family, dtype, tokenizer)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if dst.exists():
        shutil.rmtree(dst)
    work.rename(dst)
    report.dst = dst
    return report


def _convert_into(src: Path, dst: Path, thudm: dict[str, Any], family: str, dtype: str | None,
                  tokenizer: bool) -> ConvertReport:  # fmt: skip
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, GlmConfig

    glm = convert_config(thudm, family)
    target = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype or "")
    report = ConvertReport(family=family, src=src, dst=dst)
    shards = source_shards(src)
    weight_map: dict[str, str] = {}
    total = 0
    seen_dtype = None
    per_head_qkv = not thudm.get("multi_query_attention")
    for n, shard in enumerate(shards, start=1):
        tensors = convert_tensors(dict(read_shard(shard)), glm, per_head_qkv=per_head_qkv)
        tensors = {k: (v.to(target) if target is not None else v).contiguous() for k, v in tensors.items()}
        name = "model.safetensors" if len(shards) == 1 else f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(dst / name), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
            seen_dtype = seen_dtype or (tensor.dtype if tensor.is_floating_point() else None)
        report.tensors += len(tensors)
        del tensors
    report.shards = len(shards)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    check_complete(weight_map, glm)

    report.dtype = str(seen_dtype or torch.float32).removeprefix("torch.")
    config = GlmConfig(**glm)
    config.dtype = report.dtype
    config.architectures = ["GlmForCausalLM"]
    config.save_pretrained(dst)
    if tokenizer:
        from adapters.glm_tokenizer import convert_tokenizer

        report.tokenizer, notes = convert_tokenizer(src, dst, family)
        report.notes += notes
    eos = _family_eos(src, family, glm["eos_token_id"])
    generation = GenerationConfig(eos_token_id=eos, pad_token_id=glm["pad_token_id"], **_sampling(src))
    generation.save_pretrained(dst)
    converted = {"source": str(src), "family": family, "by": COMMAND, "tokenizer": report.tokenizer}
    (dst / "CONVERTED_FROM.json").write_text(json.dumps(converted, indent=2))
    return report


# What THUDM's chat() / stream_chat() sample with when the checkpoint has no generation_config.json.
_CHAT_SAMPLING = {"do_sample": True, "temperature": 0.8, "top_p": 0.8}


def _sampling(src: Path) -> dict[str, Any]:
    """The source's sampling defaults (its generation_config.json, else THUDM's chat() defaults), so
    that requests without temperature / top_p sample as the original chat() did."""
    source = read_json(src / "generation_config.json")
    keys = ("do_sample", "temperature", "top_p", "top_k")
    picked = {k: source[k] for k in keys if k in source}
    return picked if picked.get("do_sample") is not None else _CHAT_SAMPLING


def _family_eos(src: Path, family: str, eos: Any) -> list[int] | int:
    """ChatGLM3 ends a turn with <|user|> or <|observation|> as well as </s> (its chat() stops
    on all three); GLM-4's config already lists its three."""
    ids = list(eos) if isinstance(eos, list) else [eos]
    extra = _EOS_BY_FAMILY.get(family, ())
    if extra and (src / "tokenizer.model").is_file():
        from adapters.glm_tokenizer import special_ids

        specials = special_ids(src, family)
        ids += [specials[t] for t in extra if specials[t] not in ids]
    return ids if len(ids) > 1 else ids[0]
