"""Fixes for THUDM's remote config class and for building its model classes
(`configuration_chatglm.py`, `modeling_chatglm.py`), each naming the transformers release that
broke it; the fixes for generating are in generation_fixes.py."""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Any

from adapters.chatglm_compat.patching import _calls, _once, _remote_mro

# generation parameters THUDM's code reads from the *model* config (ChatGLM2/3: `config.max_length`
# in __init__, `config.use_cache` in forward)
CONFIG_GENERATION_FIELDS = ("max_length", "use_cache")


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

