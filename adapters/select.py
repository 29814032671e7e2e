"""Which adapter serves a model: the models file's `adapter:`, or `auto` read from the model's
own files (config.json's model_type / architectures, sentence-transformers' modules.json;
`*ForSequenceClassification` architectures: the sequence classifier adapter),
never guessed from the path's name."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from protocol.models_file import ModelSpec

# transformers has native classes for these GLM generations; older ChatGLMs need remote code.
NATIVE_GLM_TYPES = frozenset({"glm", "glm4", "glm4_moe"})

log = logging.getLogger(__name__)
_hinted: set[Path] = set()


def convert_hint(path: Path | None, config: dict) -> str | None:
    """For a THUDM remote-code ChatGLM2/3 or GLM-4 folder: the `queuechat convert-chatglm`
    command that makes it a native, batched GLM (adapters/glm_convert.py); else None."""
    if config.get("model_type") != "chatglm":
        return None
    from adapters.glm_convert import conversion_hint

    return conversion_hint(path, config)


def read_config(path: Path | None) -> dict:
    """The model folder's config.json, or {} (a GGUF file, a missing file)."""
    if path is None or not path.is_dir() or not (path / "config.json").is_file():
        return {}
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def is_sentence_transformer(path: Path | None) -> bool:
    return path is not None and path.is_dir() and (
        (path / "modules.json").is_file() or (path / "sentence_bert_config.json").is_file()
    )


def choose_adapter(spec: ModelSpec, config: dict | None = None) -> str:
    """The adapter name for `spec`: explicit, else decided by the model's files (`config`: its
    config.json when the caller has read it already)."""
    if spec.adapter != "auto":
        return spec.adapter
    if spec.path is not None and spec.path.suffix == ".gguf":
        return "hf-causal"
    config = read_config(spec.path) if config is None else config
    model_type = config.get("model_type", "")
    architectures = config.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "classifier"  # a BERT classifier, or a cross-encoder (one output: a relevance score)
    if is_sentence_transformer(spec.path):
        return "embeddings"
    if model_type == "chatglm" or model_type in NATIVE_GLM_TYPES:
        if spec.path not in _hinted and (hint := convert_hint(spec.path, config)):
            _hinted.add(spec.path)
            log.warning("%s: %s", spec.name, hint)
        return "chatglm"
    if architectures and not any(a.endswith(("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")) for a in architectures):
        return "embeddings"  # an encoder (BertModel, ...): it can embed, not generate
    return "hf-causal"
