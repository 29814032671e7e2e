"""Fixes for THUDM's remote model classes where they generate (`chat`, `stream_chat`, their own
`stream_generate`, and transformers' `generate()` called on them), each naming the transformers
release that broke it.  They assume GenerationMixin is a base (model_fixes.inherit_generation_mixin)."""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from adapters.chatglm_compat.patching import _accepts, _calls, _once


@_once
def restore_get_logits_warper(cls: type) -> bool:
    """Break (transformers 4.45): `_get_logits_warper` was removed; its warpers (temperature,
    top-k, top-p, ...) moved into `_get_logits_processor`, which THUDM's `stream_generate` also
    calls.  Fix: `_get_logits_warper` returns an empty LogitsProcessorList, so the warpers apply
    once (inside `_get_logits_processor`), as before.
    Needed when: the class's code calls `_get_logits_warper` and the class has none."""
    if hasattr(cls, "_get_logits_warper") or not _calls(cls, "_get_logits_warper"):
        return False
    from transformers.generation.logits_process import LogitsProcessorList

    def _get_logits_warper(self, generation_config: Any, device: Any = None) -> Any:
        return LogitsProcessorList()  # already part of self._get_logits_processor(generation_config)

    cls._get_logits_warper = _get_logits_warper
    return True


@_once
def restore_extract_past_from_model_output(cls: type) -> bool:
    """Break (removed in the 4.4x cache refactor; gone in 5.x): THUDM's
    `_update_model_kwargs_for_generation` calls `self._extract_past_from_model_output(outputs,
    standardize_cache_format=...)`.  Older revisions (ChatGLM-6B) take its result as the cache;
    newer ones (ChatGLM2/3, transformers >= 4.42) unpack `cache_name, cache`.  Fix: put it back,
    returning the form the class's own code unpacks (read from its source), with the outputs'
    `past_key_values` (the name these models' `forward` takes).
    Needed when: the class's code calls `_extract_past_from_model_output` and the class has none."""
    if hasattr(cls, "_extract_past_from_model_output") or not _calls(cls, "_extract_past_from_model_output"):
        return False
    pair = _unpacks_cache_name(cls)

    def _extract_past_from_model_output(self, outputs: Any, standardize_cache_format: bool = False) -> Any:
        past = None
        for name in ("past_key_values", "mems", "past_buckets_states", "cache_params"):
            past = getattr(outputs, name, None)
            if past is not None:
                break
        return ("past_key_values", past) if pair else past

    cls._extract_past_from_model_output = _extract_past_from_model_output
    return True


def _unpacks_cache_name(cls: type) -> bool:
    """Whether the remote code assigns `a, b = self._extract_past_from_model_output(...)`."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return True  # the newer form
    targets = [
        node.targets[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "_extract_past_from_model_output"
    ]  # fmt: skip
    return not targets or any(isinstance(target, ast.Tuple) for target in targets)


@_once
def prepare_special_tokens_on_demand(cls: type) -> bool:
    """Break (transformers 4.42, `_prepare_special_tokens`): `_get_stopping_criteria` and
    `_get_logits_processor` read `generation_config._eos_token_tensor`, which only
    `_prepare_special_tokens` (called inside `generate()`) sets; THUDM's own `stream_generate`
    calls them on a plain copy of the generation config (AttributeError).  Fix: on the remote
    class, both call `_prepare_special_tokens` first when the config lacks `_eos_token_tensor`.
    Needed when: the class's generation code calls them outside `generate()` (stream_generate);
    at run time a no-op when `generate()` already prepared the tokens."""
    if not _calls(cls, "_get_stopping_criteria") and not _calls(cls, "_get_logits_processor"):
        return False
    if not hasattr(cls, "_prepare_special_tokens"):  # needs GenerationMixin (inherit_generation_mixin) first
        return False
    for name in ("_get_stopping_criteria", "_get_logits_processor"):
        setattr(cls, name, _with_special_tokens(getattr(cls, name)))
    return True


def _with_special_tokens(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any) -> Any:
        config = kwargs.get("generation_config", args[0] if args else None)
        if config is not None and not hasattr(config, "_eos_token_tensor"):
            self._prepare_special_tokens(config, device=self.device)
        return method(self, *args, **kwargs)

    return wrapper


@_once
def keep_legacy_kv_cache_in_generate(cls: type) -> bool:
    """Break (transformers 5.0 `generate()`): generate builds a `DynamicCache(config=...)`, which
    reads `config.num_hidden_layers` (ChatGLM's config says `num_layers`: AttributeError), and
    passes it as `cache`, a name THUDM's `prepare_inputs_for_generation` / `forward` do not take
    (they keep their own tuple cache under `past_key_values`).  Fix: the class reports that it
    cannot use a default cache (`_supports_default_dynamic_cache() -> False`, what transformers
    uses for models that manage their own), so generate leaves the cache to the model.
    Needed when: the class's `forward` takes `past_key_values` but not `cache`, and the class's
    code calls `generate` (ChatGLM's `chat`)."""
    forward = cls.__dict__.get("forward") or getattr(cls, "forward", None)
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
    if "cache" in parameters or "past_key_values" not in parameters or not _calls(cls, "generate"):
        return False
    cls._supports_default_dynamic_cache = classmethod(lambda klass: False)
    return True


@_once
def let_the_model_make_its_position_ids(cls: type) -> bool:
    """Break (transformers 5.x `generate()`, `_prepare_position_ids_for_generation`): generate
    infers 1-D `position_ids` (an arange / the attention mask's cumsum) whenever the inputs carry
    none and `forward` takes them.  ChatGLM-6B's tokenizer returns none when it does not pad, and
    its `prepare_inputs_for_generation` builds its own 2-D (position, block position) ids when it
    gets None; handed generate's 1-D ids, its attention fails on `position_ids[:, 0, :]`
    (IndexError: too many indices).  Fix: the class's `_prepare_position_ids_for_generation`
    returns None, leaving the positions to the model as the transformers it was written for did
    (`tolerate_unset_mask_and_positions` keeps that None from its own update code).
    Needed when: the class's `prepare_inputs_for_generation` builds position ids itself (calls
    `get_position_ids`)."""
    method = cls.__dict__.get("prepare_inputs_for_generation")
    if method is None or not hasattr(cls, "_prepare_position_ids_for_generation"):
        return False
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
    except (OSError, TypeError, SyntaxError):
        return False
    if not any(isinstance(node, ast.Attribute) and node.attr == "get_position_ids" for node in ast.walk(tree)):
        return False

    def _prepare_position_ids_for_generation(self, inputs_tensor: Any, model_kwargs: dict) -> None:
        return None  # prepare_inputs_for_generation makes them (get_position_ids)

    cls._prepare_position_ids_for_generation = _prepare_position_ids_for_generation
    return True


UNSET_GENERATION_KWARGS = ("attention_mask", "position_ids")


@_once
def tolerate_unset_mask_and_positions(cls: type) -> bool:
    """Break (transformers 5.0 `generate()`): generate replaces an all-ones attention mask (no
    padding) by `attention_mask: None` (and, after `let_the_model_make_its_position_ids`,
    `position_ids` may be None), and THUDM's `_update_model_kwargs_for_generation` does
    `torch.cat([attention_mask, ...])` / `position_ids[..., -1:]` whenever the key is present
    ('NoneType' object has no attribute 'new_ones').  Fix: the remote method is called without
    those keys when their value is None, and the None (no padding / positions the model makes
    itself, which it reads the same way) is put back.
    Needed when: the class overrides `_update_model_kwargs_for_generation`."""
    original = cls.__dict__.get("_update_model_kwargs_for_generation")
    if original is None:
        return False

    @functools.wraps(original)
    def _update_model_kwargs_for_generation(self, outputs: Any, model_kwargs: dict, *args: Any, **kwargs: Any):
        unset = [k for k in UNSET_GENERATION_KWARGS if k in model_kwargs and model_kwargs[k] is None]
        if unset:
            model_kwargs = {k: v for k, v in model_kwargs.items() if k not in unset}
        kwargs = {k: v for k, v in kwargs.items() if _accepts(original, k)}  # num_new_tokens (4.4x+)
        updated = original(self, outputs, model_kwargs, *args, **kwargs)
        for key in unset:
            updated.setdefault(key, None)
        return updated

    cls._update_model_kwargs_for_generation = _update_model_kwargs_for_generation
    return True

