"""Model adapters: how each model family is loaded, prompted and streamed.

Imported only by workers.  The models file names an adapter (`adapter:`), or leaves it to
`auto`, which reads the model's own files (adapters/select.py).
"""

from __future__ import annotations

from typing import Any

from adapters.base import (
    AdapterError,
    AdapterKind,
    ClassifyAdapter,
    ContextLengthExceeded,
    DecodeBatch,
    EmbedAdapter,
    EmptyPrompt,
    KVCacheExceeded,
    ModelAdapter,
    ModelLoadError,
    TextAdapter,
    UnsupportedParameter,
)

ADAPTER_NAMES = ("auto", "hf-causal", "chatglm", "embeddings", "classifier", "echo")


def adapter_class(name: str, config: dict[str, Any] | None = None) -> type:
    """The adapter class for `name` (already resolved from auto); imports heavy libraries only
    when asked.  `chatglm` is the remote-code adapter unless the config is a native GLM."""
    if name == "hf-causal":
        from adapters.hf_causal import HfCausalAdapter

        return HfCausalAdapter
    if name == "chatglm":
        from adapters.select import NATIVE_GLM_TYPES

        if (config or {}).get("model_type") in NATIVE_GLM_TYPES:
            from adapters.hf_causal import HfCausalAdapter

            return HfCausalAdapter  # GLM-4 in transformers: batched, with the glm4 template fallback
        from adapters.chatglm import ChatGLMAdapter

        return ChatGLMAdapter
    if name == "embeddings":
        from adapters.embeddings import EmbeddingAdapter

        return EmbeddingAdapter
    if name == "classifier":
        from adapters.classifier import SequenceClassifierAdapter

        return SequenceClassifierAdapter
    if name == "echo":
        from adapters.echo import EchoAdapter

        return EchoAdapter
    raise ModelLoadError(f"unknown adapter {name!r}; known: {', '.join(ADAPTER_NAMES)}")


def adapter_for(spec: Any) -> type:
    """The adapter class that serves `spec` (a ModelSpec)."""
    from adapters.select import choose_adapter, read_config

    config = read_config(spec.path)
    return adapter_class(choose_adapter(spec, config), config)


__all__ = [
    "ADAPTER_NAMES",
    "AdapterError",
    "AdapterKind",
    "ClassifyAdapter",
    "EmbedAdapter",
    "TextAdapter",
    "ContextLengthExceeded",
    "DecodeBatch",
    "EmptyPrompt",
    "KVCacheExceeded",
    "ModelAdapter",
    "ModelLoadError",
    "UnsupportedParameter",
    "adapter_class",
    "adapter_for",
]
