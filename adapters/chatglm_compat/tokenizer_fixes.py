"""Fixes for THUDM's remote tokenizer classes (`tokenization_chatglm.py`), each naming the
transformers release that broke it."""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Any

from adapters.chatglm_compat.patching import _accepts, _once, _remote_mro


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

