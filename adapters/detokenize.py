"""Turn a growing list of token ids into text deltas without re-decoding everything each step."""

from __future__ import annotations

from typing import Any

_CONTEXT_TOKENS = 4  # prompt tokens decoded along with the first ones, so leading spaces come out right


class IncrementalDetokenizer:
    """Decodes a window of recent tokens and emits only what is new.

    A delta is held back while it ends in U+FFFD, i.e. a multi-byte character is still incomplete.
    The concatenated deltas (plus `flush()`) equal decoding all generated ids at once.
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0  # start of the window that gets decoded
        self._read = len(self._ids)  # end of what was already emitted

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._advance(hold_incomplete=True)

    def flush(self) -> str:
        return self._advance(hold_incomplete=False)

    def _advance(self, hold_incomplete: bool) -> str:
        seen = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        if len(full) <= len(seen) or (hold_incomplete and full.endswith("\ufffd")):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return full[len(seen) :]
