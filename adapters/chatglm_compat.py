"""Run THUDM's published ChatGLM remote code (ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B; GLM-4-9B-chat's
original code shares the model side but was not tried) on transformers 5, unchanged on disk.

Their `modeling_chatglm.py` / `tokenization_chatglm.py` were written against transformers 4.2x-4.3x
and use APIs that transformers has since changed or removed.  Each break gets one function below
that patches the *dynamically loaded remote class* (never transformers itself), names the
transformers release that introduced the break, and checks first whether the class still needs
it, so code that already copes (a newer revision of a checkpoint, our own adapters) is left
alone.  `prepare_remote_classes` applies them; `load_chatglm` loads a folder with them.

Only models whose config.json says `model_type: chatglm` and whose `auto_map` points at their
own code get here (`is_chatglm_remote_code`); the patches are recorded on each class
(`__queuechat_compat__`) so a class is patched once however many models load it.

The releases named are where the change landed as far as could be told without transformers'
history at hand (4.50 for GenerationMixin is stated by transformers 5.24's own code); every break
is verified against the transformers this project runs (5.24) by tests/unit/test_chatglm_compat.py.
"""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARK = "__queuechat_compat__"

# generation parameters THUDM's code reads from the *model* config (ChatGLM2/3: `config.max_length`
# in __init__, `config.use_cache` in forward)
CONFIG_GENERATION_FIELDS = ("max_length", "use_cache")


def is_chatglm_remote_code(config: dict) -> bool:
    """True for a config.json whose model is THUDM-style remote code (model_type chatglm and an
    auto_map naming a module of the checkpoint's own)."""
    auto_map = config.get("auto_map") or {}
    return config.get("model_type") == "chatglm" and any(
        isinstance(ref, str) and "." in ref for ref in auto_map.values()
    )


def _applied(cls: type) -> list[str]:
    """The fixes recorded on `cls` itself (not inherited)."""
    return cls.__dict__.get(MARK, [])


def _record(cls: type, name: str) -> None:
    if MARK not in cls.__dict__:
        setattr(cls, MARK, [])
    cls.__dict__[MARK].append(name)


def _once(fix: Callable[[type], bool]) -> Callable[[type], bool]:
    """A fix applies to a class at most once; returns whether it changed the class (now or before)."""

    @functools.wraps(fix)
    def apply(cls: type, *args: Any) -> bool:
        if fix.__name__ in _applied(cls):
            return True
        changed = fix(cls, *args)
        if changed:
            _record(cls, fix.__name__)
            log.info("chatglm compat: %s on %s.%s", fix.__name__, cls.__module__, cls.__qualname__)
        return changed

    return apply


# --------------------------------------------------------------------------------------------
# configuration


@_once
def keep_generation_fields_on_config(cls: type, model_source: str | None = None) -> bool:
    """Break (transformers 5.0): `PreTrainedConfig.__init__` pops every generation parameter
    (`max_length`, `use_cache`, ...) from its kwargs and no longer sets the old defaults, so
    `config.max_length` (ChatGLM2/3 `__init__`) and `config.use_cache` (their `forward`) raise
    AttributeError.  Fix: after the remote `__init__`, set each of CONFIG_GENERATION_FIELDS the
    instance lacks to the value config.json gave, else to GenerationConfig's default.
    Needed when: the model's code (`model_source`; unknown: assume so) reads `config.<field>` and
    the config class does not define the field itself."""
    from transformers import GenerationConfig

    missing = [
        name
        for name in CONFIG_GENERATION_FIELDS
        if (model_source is None or f"config.{name}" in model_source) and not _defines(cls, name)
    ]
    if not missing:
        return False
    defaults = GenerationConfig._get_default_generation_params()
    original = cls.__init__

    original_parameters = cls._get_generation_parameters

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = {name: kwargs[name] for name in missing if name in kwargs}
        original(self, *args, **kwargs)
        for name in missing:
            if name not in self.__dict__:
                object.__setattr__(self, name, given.get(name, defaults.get(name)))

    @functools.wraps(original_parameters)
    def _get_generation_parameters(self) -> dict[str, Any]:
        """The fields put back are for the remote code to read; generate() takes its settings from
        generation_config and refuses a config that sets generation parameters, so they are not
        reported as such."""
        return {k: v for k, v in original_parameters(self).items() if k not in missing}

    cls.__init__ = __init__
    cls._get_generation_parameters = _get_generation_parameters
    return True


def _defines(cls: type, name: str) -> bool:
    """Whether remote code (not transformers' base classes) provides attribute `name`."""
    for klass in _remote_mro(cls):
        if name in klass.__dict__:
            return True
        try:
            source = inspect.getsource(klass.__init__) if "__init__" in klass.__dict__ else ""
        except (OSError, TypeError):
            source = ""
        if f"self.{name} =" in source:
            return True
    return False


# --------------------------------------------------------------------------------------------
# tokenizer


class _VocabNotReady(Exception):
    pass


@_once
def defer_special_tokens_until_vocab_exists(cls: type) -> bool:
    """Break (transformers 4.34, the added-tokens refactor; a TypeError since 5.0): the slow
    tokenizer base `__init__` registers the special tokens through `_add_tokens`, which calls
    `get_vocab()`.  ChatGLM-6B calls `super().__init__` *before* it builds `self.sp_tokenizer`,
    which its `vocab_size` / `get_vocab` read, so loading fails ("'property' object cannot be
    interpreted as an integer": transformers' `__getattr__` hands back the class's property).
    Fix: while the remote `__init__` runs, an `_add_tokens` whose `get_vocab()` fails is put off
    and replayed once `__init__` has returned (the vocabulary exists by then).
    Needed when: the class computes its own vocabulary (defines `get_vocab`) and its `__init__`
    sets attributes after calling `super().__init__` (ChatGLM2/3 build their vocabulary first);
    even then it does nothing at run time unless `get_vocab()` fails during `__init__`."""
    own_vocab = any("get_vocab" in k.__dict__ for k in _remote_mro(cls))
    if not own_vocab or not _sets_attributes_after_super_init(cls):
        return False
    original_init, original_add = cls.__init__, cls._add_tokens

    @functools.wraps(original_init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_qc_deferred_tokens"] = []
        try:
            original_init(self, *args, **kwargs)
        finally:
            deferred = self.__dict__.pop("_qc_deferred_tokens", [])
        for new_tokens, special_tokens in deferred:
            original_add(self, new_tokens, special_tokens=special_tokens)
        if deferred:
            self._update_total_vocab_size()

    @functools.wraps(original_add)
    def _add_tokens(self, new_tokens: Any, special_tokens: bool = False) -> int:
        deferred = self.__dict__.get("_qc_deferred_tokens")
        if deferred is not None:
            try:
                vocab = self.get_vocab()
                if not isinstance(vocab, dict):
                    raise _VocabNotReady
            except (AttributeError, TypeError, _VocabNotReady):
                deferred.append((list(new_tokens), special_tokens))
                return 0
        return original_add(self, new_tokens, special_tokens=special_tokens)

    cls.__init__ = __init__
    cls._add_tokens = _add_tokens
    return True


def _sets_attributes_after_super_init(cls: type) -> bool:
    """Whether a remote `__init__` assigns `self.<name>` after its `super().__init__(...)` call
    (unknown source: assume so)."""
    for klass in _remote_mro(cls):
        if "__init__" not in klass.__dict__:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass.__init__)))
        except (OSError, TypeError, SyntaxError):
            return True
        super_calls = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__init__"
            and isinstance(node.func.value, ast.Call) and getattr(node.func.value.func, "id", "") == "super"
        ]  # fmt: skip
        if super_calls and any(
            isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name) and node.value.id == "self" and node.lineno > min(super_calls)
            for node in ast.walk(tree)
        ):  # fmt: skip
            return True
    return False


def _remote_mro(cls: type) -> list[type]:
    return [k for k in cls.__mro__ if not k.__module__.startswith(("transformers.", "builtins"))]


@_once
def accept_padding_side_in_pad(cls: type) -> bool:
    """Break (transformers 4.45, `padding_side` per call): `pad()` calls
    `self._pad(..., padding_side=...)`; THUDM's `_pad` overrides predate that argument
    (TypeError: unexpected keyword argument 'padding_side').  Fix: a wrapper takes
    `padding_side` and, when it differs from the tokenizer's, sets `self.padding_side` for the call.
    Needed when: the class's `_pad` accepts neither `padding_side` nor `**kwargs`."""
    pad = getattr(cls, "_pad", None)
    if pad is None or _accepts(pad, "padding_side"):
        return False

    @functools.wraps(pad)
    def _pad(self, encoded_inputs: Any, *args: Any, padding_side: str | None = None, **kwargs: Any) -> Any:
        if padding_side is None or padding_side == self.padding_side:
            return pad(self, encoded_inputs, *args, **kwargs)
        saved, self.padding_side = self.padding_side, padding_side
        try:
            return pad(self, encoded_inputs, *args, **kwargs)
        finally:
            self.padding_side = saved

    cls._pad = _pad
    return True


def _accepts(function: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


@_once
def restore_batch_encode_plus(cls: type) -> bool:
    """Break (transformers 5.0; deprecated through 4.x): `batch_encode_plus` is gone, and
    ChatGLM3's `build_chat_input` (ChatGLM2's `build_stream_inputs`) call it.  Fix: a
    `batch_encode_plus` that calls the tokenizer on the batch; an old-style pair whose second part
    is None, `(ids, None)`, is passed as the single sequence it meant.
    Needed when: the class has none (the callers may be in the model's code, as ChatGLM2's are,
    so the tokenizer's source does not tell)."""
    if hasattr(cls, "batch_encode_plus"):
        return False

    def batch_encode_plus(self, batch_text_or_text_pairs: Any, **kwargs: Any) -> Any:
        batch = [
            item[0] if isinstance(item, tuple) and len(item) == 2 and item[1] is None else item
            for item in batch_text_or_text_pairs
        ]
        return self(batch, **kwargs)

    cls.batch_encode_plus = batch_encode_plus
    return True


# --------------------------------------------------------------------------------------------
# model


@_once
def call_post_init(cls: type) -> bool:
    """Break (transformers 5.0): loading reads attributes that `PreTrainedModel.post_init()`
    sets (`all_tied_weights_keys`, ...); ChatGLM-6B's classes never call `post_init()`
    (AttributeError: ... has no attribute 'all_tied_weights_keys').  Fix: after the remote
    `__init__` of the class being built, call `post_init()` if it has not run.
    Needed when: the class's `__init__` does not call `post_init()`; at run time, when the
    instance has no `all_tied_weights_keys` once the outermost `__init__` returns."""
    if "__init__" not in cls.__dict__ or _calls_in_init(cls, "post_init"):
        return False
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        depth = self.__dict__.get("_qc_init_depth", 0)  # a wrapped __init__ may call another via super()
        self.__dict__["_qc_init_depth"] = depth + 1
        try:
            original(self, *args, **kwargs)
        finally:
            self.__dict__["_qc_init_depth"] = depth
        if depth == 0:
            del self.__dict__["_qc_init_depth"]
            if "all_tied_weights_keys" not in self.__dict__:  # the outermost __init__ is done
                self.post_init()

    cls.__init__ = __init__
    return True


def _calls_in_init(cls: type, name: str) -> bool:
    """Whether the class's own `__init__` calls `<something>.name(...)`."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__dict__["__init__"])))
    except (OSError, TypeError, SyntaxError):
        return False
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
        for node in ast.walk(tree)
    )


@_once
def inherit_generation_mixin(cls: type) -> bool:
    """Break (transformers 4.50 announced, 5.0 done): `PreTrainedModel` no longer inherits
    `GenerationMixin`, so `generate()`, `_get_logits_processor`, `_get_stopping_criteria`,
    `_prepare_special_tokens`... are missing on classes that inherit only PreTrainedModel, and no
    generation_config is made.  Fix: append GenerationMixin to the class's bases (before the model
    is built, so `can_generate()` is true).  AutoModel in 5.x does the same for remote classes
    with their own `prepare_inputs_for_generation`, but on a fresh copy of the class
    (`add_generation_mixin_to_remote_model`); patching the class itself covers every load path
    (the class's own `from_pretrained` too) and AutoModel then uses the class as it is.
    Needed when: the class is not a GenerationMixin subclass and its code generates (defines
    `prepare_inputs_for_generation` or calls `generate` / `_get_logits_processor`)."""
    from transformers import GenerationMixin

    generation_names = ("prepare_inputs_for_generation", "generate", "_get_logits_processor")
    generates = any(_calls(cls, name) for name in generation_names)
    if issubclass(cls, GenerationMixin) or not generates:
        return False
    cls.__bases__ = (*cls.__bases__, GenerationMixin)
    return True


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


def _calls(cls: type, name: str) -> bool:
    """Whether the code of `cls` or its remote bases uses or defines `name` (an attribute, a
    variable or a method name; comments and strings do not count; source unknown: yes)."""
    for klass in _remote_mro(cls):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            return True
        for node in ast.walk(tree):
            if (
                (isinstance(node, ast.Attribute) and node.attr == name)
                or (isinstance(node, ast.Name) and node.id == name)
                or (isinstance(node, ast.FunctionDef) and node.name == name)
            ):
                return True
    return False


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
