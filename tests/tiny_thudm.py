"""A tiny checkpoint in THUDM's remote-code ChatGLM2/3 / GLM-4 format, written to a temp folder,
and a reference forward pass for it written here in plain torch (THUDM's own code is not
shipped): the ground truth that adapters/glm_convert.py's output is compared with.

The network, as ChatGLM2-6B / ChatGLM3-6B / GLM-4-9B define it: token embedding; per layer
RMSNorm -> fused QKV (with bias) -> multi-query attention, rotary on the first half of each
head's dims in interleaved (even, odd) pairs -> dense -> residual; RMSNorm -> dense_h_to_4h
([gate; up]) -> silu(gate) * up -> dense_4h_to_h -> residual; final RMSNorm; output layer.

Tokenizers: ChatGLM2/3 ship a SentencePiece model with special tokens appended after its
pieces; GLM-4 ships a tiktoken file (`base64 rank` lines) with specials after its ranks.  Both
are trained here on a few sentences.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import torch

TINY = {
    "hidden_size": 32, "ffn_hidden_size": 48, "num_layers": 2, "num_attention_heads": 4,
    "multi_query_attention": True, "multi_query_group_num": 2, "kv_channels": 8,
    "layernorm_epsilon": 1e-5, "seq_length": 256, "add_qkv_bias": True, "add_bias_linear": False,
    "rmsnorm": True, "post_layer_norm": True, "apply_residual_connection_post_layernorm": False,
    "original_rope": True, "tie_word_embeddings": False,
}  # fmt: skip

CHATGLM2_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
CHATGLM3_SPECIALS = [*CHATGLM2_SPECIALS, "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                 "<|end_of_video|>"]  # fmt: skip

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello! How are you today? I am fine, thank you.",
    "Queues hold work until a worker is free; workers stream tokens back.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" @ # $ % & _",
    "你好，世界。法国的首都是巴黎。 Élan, naïve café",
    "  two spaces,\ttabs\nand new lines\n\n",
]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def chatglm_rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """x: (seq, heads, head_dim).  ChatGLM rotates the first head_dim // 2 dims, as pairs
    (x[2i], x[2i+1]) by angle pos * base^(-2i / (head_dim // 2)); the rest pass through."""
    rot = x.shape[-1] // 2
    theta = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    angles = positions[:, None].float() * theta[None, :]  # (seq, rot/2)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    pairs = x[..., :rot].reshape(*x.shape[:-1], rot // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    return torch.cat((rotated, x[..., rot:]), dim=-1)


@torch.no_grad()
def reference_logits(weights: dict[str, torch.Tensor], config: dict, ids: list[int]) -> torch.Tensor:
    """(len(ids), vocab) float32 logits of one sequence, positions 0..n-1."""
    w = {k: v.float() for k, v in weights.items()}
    heads, hd = config["num_attention_heads"], config["kv_channels"]
    mqa = config["multi_query_attention"]
    groups = config["multi_query_group_num"] if mqa else heads
    eps, base = config["layernorm_epsilon"], 10000.0 * config.get("rope_ratio", 1)
    n = len(ids)
    positions = torch.arange(n)
    h = w["transformer.embedding.word_embeddings.weight"][torch.tensor(ids)]
    causal = torch.full((n, n), float("-inf")).triu(1)
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        qkv = (
            x @ w[p + "self_attention.query_key_value.weight"].T
            + w[p + "self_attention.query_key_value.bias"]
        )
        if mqa:  # [all q heads; k groups; v groups]
            q, k, v = qkv.split([heads * hd, groups * hd, groups * hd], dim=-1)
        else:  # per head [q_h; k_h; v_h]
            q, k, v = (part.reshape(n, heads * hd) for part in qkv.view(n, heads, 3 * hd).split(hd, dim=-1))
        q = chatglm_rotary(q.view(n, heads, hd), positions, base)
        k = chatglm_rotary(k.view(n, groups, hd), positions, base)
        v = v.view(n, groups, hd)
        per_group = heads // groups
        k, v = (
            k.repeat_interleave(per_group, dim=1),
            v.repeat_interleave(per_group, dim=1),
        )  # head j uses group j // per_group
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + causal
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, heads * hd)
        h = h + attn @ w[p + "self_attention.dense.weight"].T
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = (x @ w[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        h = h + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.dense_4h_to_h.weight"].T
    h = rms_norm(h, w["transformer.encoder.final_layernorm.weight"], eps)
    return h @ w["transformer.output_layer.weight"].T


def random_weights(config: dict, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    heads, hd = config["num_attention_heads"], config["kv_channels"]
    groups = config["multi_query_group_num"] if config["multi_query_attention"] else heads
    hidden, ffn, vocab = config["hidden_size"], config["ffn_hidden_size"], config["padded_vocab_size"]

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def norm() -> torch.Tensor:
        return 1.0 + rnd(hidden)

    qkv_rows = (heads + 2 * groups) * hd
    w = {"transformer.embedding.word_embeddings.weight": rnd(vocab, hidden) * 5,
         "transformer.rotary_pos_emb.inv_freq": torch.zeros(hd // 4)}  # fmt: skip
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        w |= {
            p + "input_layernorm.weight": norm(),
            p + "self_attention.query_key_value.weight": rnd(qkv_rows, hidden),
            p + "self_attention.query_key_value.bias": rnd(qkv_rows),
            p + "self_attention.dense.weight": rnd(hidden, heads * hd),
            p + "post_attention_layernorm.weight": norm(),
            p + "mlp.dense_h_to_4h.weight": rnd(2 * ffn, hidden),
            p + "mlp.dense_4h_to_h.weight": rnd(hidden, ffn),
        }
    w["transformer.encoder.final_layernorm.weight"] = norm()
    w["transformer.output_layer.weight"] = rnd(vocab, hidden)
    return w


def _write_sentencepiece(folder: Path, specials: list[str]) -> int:
    """tokenizer.model, a small BPE SentencePiece with byte fallback (as ChatGLM2/3's); returns
    its piece count (the first special token's id)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 8), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, minloglevel=2, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
    )  # fmt: skip
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip


def _write_tiktoken(folder: Path) -> int:
    """tokenizer.model in tiktoken's format (GLM-4's): 256 bytes, then merges learned from the
    corpus with tiktoken's own trainer; returns the rank count (the first special token's id)."""
    from tiktoken._educational import bpe_train

    ranks = bpe_train("\n".join(_CORPUS * 4), vocab_size=300, pat_str=GLM4_PATTERN, visualise=None)
    lines = [
        f"{base64.b64encode(tok).decode()} {rank}"
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])
    ]
    (folder / "tokenizer.model").write_text("\n".join(lines) + "\n")
    return len(ranks)


def make_tiny_thudm(folder: Path, family: str = "chatglm3", seed: int = 0, shards: int = 2,
                    fmt: str = "safetensors", rope_ratio: float | None = None, **sizes: int) -> Path:  # fmt: skip
    """Write a THUDM-format checkpoint (config.json, weights under THUDM's names in `shards`
    files, tokenizer.model + tokenizer_config.json) to `folder`; `sizes` override TINY's
    (hidden_size=512, num_layers=8, ... for a bench)."""
    folder.mkdir(parents=True, exist_ok=True)
    if family == "glm4":
        first = _write_tiktoken(folder)
        specials, tok_class = GLM4_SPECIALS, "ChatGLM4Tokenizer"
        eos = [first + GLM4_SPECIALS.index(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
        pad = first
    else:
        specials = CHATGLM3_SPECIALS if family == "chatglm3" else CHATGLM2_SPECIALS
        first, tok_class, eos, pad = _write_sentencepiece(folder, specials), "ChatGLMTokenizer", 2, 0
    config = {
        "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        **TINY, **sizes, "padded_vocab_size": ((first + len(specials)) + 15) // 16 * 16,
        "eos_token_id": eos, "pad_token_id": pad, "torch_dtype": "float32",
    }  # fmt: skip
    if rope_ratio is not None:
        config["rope_ratio"] = rope_ratio
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": tok_class, "auto_map": {"AutoTokenizer": [f"tokenization_chatglm.{tok_class}", None]},
        "padding_side": "left", "clean_up_tokenization_spaces": False,
    }))  # fmt: skip
    # Stands in for THUDM's tokenization_chatglm.py (not shipped): the converter reads, never runs, it.
    (folder / "tokenization_chatglm.py").write_text(
        f"raise ImportError('a test stand-in')\nSPECIAL_TOKENS = {specials!r}\n"
    )
    weights = random_weights(config, seed)
    names = list(weights)
    parts = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for n, part in enumerate(parts, start=1):
        tensors = {k: weights[k].contiguous() for k in part}
        if fmt == "safetensors":
            from safetensors.torch import save_file

            name = f"model-{n:05d}-of-{shards:05d}.safetensors"
            save_file(tensors, str(folder / name), metadata={"format": "pt"})
        else:
            name = f"pytorch_model-{n:05d}-of-{shards:05d}.bin"
            torch.save(tensors, folder / name)
        weight_map |= dict.fromkeys(part, name)
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The THUDM-named tensors of a tiny checkpoint (for `reference_logits`)."""
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        from safetensors.torch import load_file

        out |= load_file(str(path))
    for path in sorted(folder.glob("pytorch_model*.bin")):
        out |= torch.load(path, weights_only=True)
    return out
