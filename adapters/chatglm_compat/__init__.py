"""Run THUDM's published ChatGLM remote code (ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B; GLM-4-9B-chat's
original code shares the model side but was not tried) on transformers 5, unchanged on disk.

Their `modeling_chatglm.py` / `tokenization_chatglm.py` were written against transformers 4.2x-4.3x
and use APIs that transformers has since changed or removed.  Each break gets one function (in
tokenizer_fixes.py, model_fixes.py or generation_fixes.py) that patches the *dynamically loaded
remote class* (never transformers itself), names the transformers release that introduced the
break, and checks first whether the class still needs it, so code that already copes (a newer
revision of a checkpoint, our own adapters) is left alone.  `prepare_remote_classes` applies them; `load_chatglm` loads a folder with them.

Only models whose config.json says `model_type: chatglm` and whose `auto_map` points at their
own code get here (`is_chatglm_remote_code`); the patches are recorded on each class
(`__queuechat_compat__`) so a class is patched once however many models load it.

The releases named are where the change landed as far as could be told without transformers'
history at hand (4.50 for GenerationMixin is stated by transformers 5.24's own code); every break
is verified against the transformers this project runs (5.24) by tests/unit/test_chatglm_compat.py.

GLM-4-9B-chat's first published code (tiktoken `ChatGLM4Tokenizer` with its own
`apply_chat_template`; `chat` / `stream_chat(..., role=...)`) has since been tried: it breaks on
the same APIs as ChatGLM3 (batch_encode_plus, `_pad`'s padding_side, config.max_length, no
post_init, the one-value `_extract_past_from_model_output`, generate's default cache) and needs no
fix of its own; its later code without `stream_chat` is refused by adapters/chatglm.py.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from adapters.chatglm_compat.generation_fixes import (
    UNSET_GENERATION_KWARGS,
    keep_legacy_kv_cache_in_generate,
    let_the_model_make_its_position_ids,
    prepare_special_tokens_on_demand,
    restore_extract_past_from_model_output,
    restore_get_logits_warper,
    tolerate_unset_mask_and_positions,
)
from adapters.chatglm_compat.model_fixes import (
    CONFIG_GENERATION_FIELDS,
    call_post_init,
    inherit_generation_mixin,
    keep_generation_fields_on_config,
)
from adapters.chatglm_compat.patching import MARK
from adapters.chatglm_compat.tokenizer_fixes import (
    accept_padding_side_in_pad,
    defer_special_tokens_until_vocab_exists,
    restore_batch_encode_plus,
)

__all__ = [
    "MARK",
    "CONFIG_GENERATION_FIELDS",
    "UNSET_GENERATION_KWARGS",
    "CONFIG_FIXES",
    "TOKENIZER_FIXES",
    "MODEL_FIXES",
    "keep_generation_fields_on_config",
    "call_post_init",
    "inherit_generation_mixin",
    "defer_special_tokens_until_vocab_exists",
    "accept_padding_side_in_pad",
    "restore_batch_encode_plus",
    "restore_get_logits_warper",
    "restore_extract_past_from_model_output",
    "prepare_special_tokens_on_demand",
    "keep_legacy_kv_cache_in_generate",
    "let_the_model_make_its_position_ids",
    "tolerate_unset_mask_and_positions",
    "is_chatglm_remote_code",
    "patch_config_class",
    "patch_tokenizer_class",
    "patch_model_class",
    "remote_classes",
    "prepare_remote_classes",
    "load_chatglm",
]


def is_chatglm_remote_code(config: dict) -> bool:
    """True for a config.json whose model is THUDM-style remote code (model_type chatglm and an
    auto_map naming a module of the checkpoint's own)."""
    auto_map = config.get("auto_map") or {}
    return config.get("model_type") == "chatglm" and any(
        isinstance(ref, str) and "." in ref for ref in auto_map.values()
    )


CONFIG_FIXES = (keep_generation_fields_on_config,)
TOKENIZER_FIXES = (
    defer_special_tokens_until_vocab_exists,
    accept_padding_side_in_pad,
    restore_batch_encode_plus,
)
MODEL_FIXES = (
    inherit_generation_mixin,
    restore_get_logits_warper,
    restore_extract_past_from_model_output,
    prepare_special_tokens_on_demand,
    keep_legacy_kv_cache_in_generate,
    let_the_model_make_its_position_ids,
    tolerate_unset_mask_and_positions,
)


def patch_config_class(cls: type, model_source: str | None = None) -> list[str]:
    return [fix.__name__ for fix in CONFIG_FIXES if fix(cls, model_source)]


def patch_tokenizer_class(cls: type) -> list[str]:
    return [fix.__name__ for fix in TOKENIZER_FIXES if fix(cls)]


def patch_model_class(cls: type) -> list[str]:
    """The model class and, for `post_init`, every PreTrainedModel class its module defines (the
    inner `ChatGLMModel` is built inside the outer one)."""
    import sys

    from transformers import PreTrainedModel

    applied = [fix.__name__ for fix in MODEL_FIXES if fix(cls)]
    module = sys.modules.get(cls.__module__)
    classes = {cls}
    for value in vars(module).values() if module else ():
        if isinstance(value, type) and issubclass(value, PreTrainedModel) and value.__module__ == cls.__module__:
            classes.add(value)
    for klass in sorted(classes, key=lambda k: k.__qualname__):
        if call_post_init(klass) and "call_post_init" not in applied:
            applied.append("call_post_init")
    return applied


def _class_ref(ref: Any) -> str | None:
    if isinstance(ref, (list, tuple)):  # AutoTokenizer: [slow, fast]
        ref = next((r for r in ref if r), None)
    return ref if isinstance(ref, str) else None


def remote_classes(path: Path, config: dict) -> dict[str, type]:
    """The classes config.json's (and tokenizer_config.json's) auto_map name, loaded from the
    checkpoint's own modules (the same class objects AutoModel & co. use)."""
    import json

    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = dict(config.get("auto_map") or {})
    tokenizer_config = path / "tokenizer_config.json"
    if "AutoTokenizer" not in auto_map and tokenizer_config.is_file():
        auto_map.update(json.loads(tokenizer_config.read_text()).get("auto_map") or {})
    model_keys = ("AutoModel", "AutoModelForCausalLM", "AutoModelForSeq2SeqLM")
    model_key = next((k for k in model_keys if k in auto_map), None)
    wanted = {"config": "AutoConfig", "tokenizer": "AutoTokenizer", "model": model_key}
    classes = {}
    for role, key in wanted.items():
        ref = _class_ref(auto_map.get(key)) if key else None
        if ref:
            classes[role] = get_class_from_dynamic_module(ref, str(path))
    return classes


def prepare_remote_classes(path: Path, config: dict) -> dict[str, list[str]]:
    """Patch the remote config, tokenizer and model classes of the checkpoint at `path` (whose
    config.json is `config`); returns the fixes that apply to each."""
    import sys

    classes = remote_classes(path, config)
    fixes: dict[str, list[str]] = {}
    if "model" in classes:
        fixes["model"] = patch_model_class(classes["model"])
    if "tokenizer" in classes:
        fixes["tokenizer"] = patch_tokenizer_class(classes["tokenizer"])
    config_classes = [classes["config"]] if "config" in classes else []
    model_config = getattr(classes.get("model"), "config_class", None)
    if model_config is not None and model_config not in config_classes and model_config.__module__.startswith(
        "transformers_modules"
    ):  # the model module's own import of the config class (a module object of its own)
        config_classes.append(model_config)
    module = sys.modules.get(classes["model"].__module__) if "model" in classes else None
    try:
        model_source = inspect.getsource(module) if module else None
    except (OSError, TypeError):
        model_source = None
    for config_class in config_classes:
        applied = patch_config_class(config_class, model_source)
        fixes["config"] = sorted(set(fixes.get("config", [])) | set(applied))
    return fixes


def load_chatglm(path: Path, dtype: Any = None, device: Any = None) -> tuple[Any, Any, dict[str, list[str]]]:
    """(tokenizer, model in eval mode, fixes applied) for a THUDM-style ChatGLM folder."""
    import json

    from transformers import AutoModel, AutoTokenizer

    config = json.loads((path / "config.json").read_text())
    fixes = prepare_remote_classes(path, config) if is_chatglm_remote_code(config) else {}
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=dtype)
    if device is not None:
        model = model.to(device)
    return tokenizer, model.eval(), fixes

