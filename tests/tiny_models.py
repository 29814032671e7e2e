"""Tiny random models written to a folder, for fast tests: a byte-level BPE tokenizer trained on
a few sentences (so any text encodes), a ChatML chat template, and a 2-layer Llama."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello! How are you today? I am fine, thank you.",
    "Queues hold work until a worker is free; workers stream tokens back.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" @ # $ % & _",
    "Élan, naïve café: über straße — 東京 😀",
]


def write_tiny_tokenizer(folder: Path, template: str | None = CHAT_TEMPLATE) -> Any:
    """A byte-level BPE tokenizer (any text encodes) saved to `folder`; returns it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS * 4, vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    if template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_tiny_model(folder: Path, seed: int = 0, context: int = 256, template: bool = True) -> Path:
    """Write tokenizer + random LlamaForCausalLM to `folder`; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = write_tiny_tokenizer(folder, CHAT_TEMPLATE if template else None)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.2,  # varied greedy output, not one repeated token
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    return folder


def write_models_file(path: Path, entries: dict[str, dict]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"models": {name: {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in spec.items()}
                                               for name, spec in entries.items()}}))  # fmt: skip
    return path
