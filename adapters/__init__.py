"""Model adapters: how each model family is loaded, prompted and streamed.

Imported only by workers.  The models file names an adapter by its key in `ADAPTERS`.
"""

from __future__ import annotations

from adapters.base import (
    AdapterError,
    ContextLengthExceeded,
    DecodeBatch,
    EmptyPrompt,
    ModelAdapter,
    ModelLoadError,
)


def adapter_class(name: str) -> type[ModelAdapter]:
    """The adapter registered under `name`; imports heavy libraries only when asked."""
    if name == "hf-causal":
        from adapters.hf_causal import HfCausalAdapter

        return HfCausalAdapter
    if name == "echo":
        from adapters.echo import EchoAdapter

        return EchoAdapter
    raise ModelLoadError(f"unknown adapter {name!r}; known: {', '.join(ADAPTER_NAMES)}")


ADAPTER_NAMES = ("hf-causal", "echo")

__all__ = [
    "ADAPTER_NAMES",
    "AdapterError",
    "ContextLengthExceeded",
    "DecodeBatch",
    "EmptyPrompt",
    "ModelAdapter",
    "ModelLoadError",
    "adapter_class",
]
