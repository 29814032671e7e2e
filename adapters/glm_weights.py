"""The weights half of adapters/glm_convert.py: THUDM's ChatGLM2/3 / GLM-4 config.json and tensor
names mapped onto transformers' `GlmForCausalLM` (model_type `glm`).

    transformer.embedding.word_embeddings            -> model.embed_tokens
    transformer.encoder.layers.N.input_layernorm     -> model.layers.N.input_layernorm
      .self_attention.query_key_value (weight, bias) -> .self_attn.{q,k,v}_proj (split)
      .self_attention.dense                          -> .self_attn.o_proj
      .post_attention_layernorm                      -> .post_attention_layernorm
      .mlp.dense_h_to_4h ([gate; up])                -> .mlp.gate_up_proj (same order)
      .mlp.dense_4h_to_h                             -> .mlp.down_proj
    transformer.encoder.final_layernorm              -> model.norm
    transformer.output_layer                         -> lm_head
    transformer.rotary_pos_emb.inv_freq              -> (dropped: recomputed from rope_theta)

Rotary: ChatGLM rotates the first kv_channels // 2 dims of each head in interleaved pairs with
base 10000 * rope_ratio; transformers' Glm does the same with partial_rotary_factor 0.5.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class NotConvertible(ValueError):
    """The folder is not a ChatGLM2/3 or GLM-4 checkpoint in THUDM's remote-code format."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def convert_config(config: dict[str, Any], family: str) -> dict[str, Any]:
    """GlmConfig keyword arguments for a THUDM config.json."""
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("kv_channels") or config["hidden_size"] // heads)
    kv_heads = int(config["multi_query_group_num"]) if config.get("multi_query_attention") else heads
    eos = config.get("eos_token_id", 2)
    pad = config.get("pad_token_id")
    vocab = int(config["padded_vocab_size"])
    return {
        "vocab_size": vocab,
        "hidden_size": int(config["hidden_size"]),
        "intermediate_size": int(config["ffn_hidden_size"]),
        "num_hidden_layers": int(config["num_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(config.get("seq_length", 2048)),
        "rms_norm_eps": float(config.get("layernorm_epsilon", 1e-5)),
        # ChatGLM rotates kv_channels // 2 dims of each head, base 10000 * rope_ratio
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0 * float(config.get("rope_ratio", 1)),
            "partial_rotary_factor": 0.5,
        },
        "attention_bias": bool(config.get("add_qkv_bias", True)),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "eos_token_id": eos,
        "pad_token_id": pad if isinstance(pad, int) and 0 <= pad < vocab else None,
        "bos_token_id": None,
        "use_cache": True,
    }


_LAYER = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
_SAME_IN_LAYER = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",  # [gate; up], the order Glm chunks in
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_DROPPED = ("transformer.rotary_pos_emb.inv_freq",)


def convert_tensors(
    tensors: dict[str, Any], glm: dict[str, Any], *, per_head_qkv: bool = False
) -> dict[str, Any]:
    """THUDM tensors (any subset, e.g. one shard) under transformers' Glm names; the fused QKV is
    split into q/k/v.  Unknown names raise NotConvertible rather than being dropped."""
    heads, kv_heads, head_dim = glm["num_attention_heads"], glm["num_key_value_heads"], glm["head_dim"]
    out: dict[str, Any] = {}
    for name, tensor in tensors.items():
        if name in _TOP:
            out[_TOP[name]] = tensor
            continue
        if name in _DROPPED or name.endswith(".rotary_pos_emb.inv_freq"):
            continue  # recomputed from rope_theta
        match = _LAYER.fullmatch(name)
        if not match:
            raise NotConvertible(f"unexpected tensor {name!r} (prefix tuning or another variant?)")
        prefix, rest = f"model.layers.{match[1]}.", match[2]
        if rest in _SAME_IN_LAYER:
            out[prefix + _SAME_IN_LAYER[rest]] = tensor
        elif rest.startswith("self_attention.query_key_value."):
            kind = rest.rsplit(".", 1)[1]  # weight | bias
            q, k, v = split_qkv(tensor, heads, kv_heads, head_dim, per_head=per_head_qkv)
            for proj, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{prefix}self_attn.{proj}.{kind}"] = part.contiguous()
        else:
            raise NotConvertible(f"unexpected tensor {name!r}")
    return out


def split_qkv(
    fused: Any, heads: int, kv_heads: int, head_dim: int, *, per_head: bool = False
) -> tuple[Any, Any, Any]:
    """(q, k, v) rows of ChatGLM's fused projection (a weight or a bias).  With multi-query
    attention the rows are [all q heads; k groups; v groups]; without it (`per_head`, config
    multi_query_attention false) they interleave per head ([q_h; k_h; v_h] for each head h)."""
    if not per_head:
        q_rows, kv_rows = heads * head_dim, kv_heads * head_dim
        if fused.shape[0] != q_rows + 2 * kv_rows:
            raise NotConvertible(f"query_key_value has {fused.shape[0]} rows, not {q_rows + 2 * kv_rows}")
        return fused[:q_rows], fused[q_rows : q_rows + kv_rows], fused[q_rows + kv_rows :]
    tail = fused.shape[1:]
    grouped = fused.reshape(heads, 3, head_dim, *tail)
    q, k, v = (grouped[:, i].reshape(heads * head_dim, *tail) for i in range(3))
    return q, k, v


def source_shards(src: Path) -> list[Path]:
    """The weight files, in index order when there is an index."""
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "pytorch_model*.bin")):  # fmt: skip
        index = read_json(src / index_name)
        if index.get("weight_map"):
            return [src / f for f in dict.fromkeys(index["weight_map"].values())]
        files = sorted(src.glob(pattern))
        if files:
            return files
    raise NotConvertible(f"{src}: no *.safetensors or pytorch_model*.bin weights")


def read_shard(path: Path) -> Iterator[tuple[str, Any]]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, f.get_tensor(name)
    else:
        yield from torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()


def check_complete(weight_map: dict[str, str], glm: dict[str, Any]) -> None:
    wanted = {"model.embed_tokens.weight", "model.norm.weight"}
    if not glm["tie_word_embeddings"]:
        wanted.add("lm_head.weight")
    for i in range(glm["num_hidden_layers"]):
        wanted |= {f"model.layers.{i}.{n}" for n in (*_SAME_IN_LAYER.values(), "self_attn.q_proj.weight",
                                                    "self_attn.k_proj.weight", "self_attn.v_proj.weight")}  # fmt: skip
    missing = sorted(wanted - weight_map.keys())
    if missing:
        raise NotConvertible(f"the source lacks {len(missing)} tensors, e.g. {missing[:3]}")
