"""Grammar-constrained decoding: llguidance's token masks over one model's vocabulary.

A request's `Constraint` (a grammar the gateway built and validated) is compiled into a matcher
in the request's own task thread, never on the decode loop; compiled grammars are kept by their
text, and each request gets a copy.  After each forward pass the engine asks every constrained
row's mask at once (llguidance fills them in parallel threads) and each mask is applied to its
own row of logits only: the rows without a constraint are left exactly as they were.

A reply cut by its token limit would be broken JSON (a small model at temperature 0 can repeat
an array item or a phrase inside a string until the limit).  So in a constrained reply's last
`LANDING_TOKENS` tokens (at most a quarter of its limit) the allowed tokens are narrowed to those
that close what is open or end the reply, whenever the grammar allows any: the reply then ends
valid, with finish_reason "stop".  Elsewhere the model chooses freely among the allowed tokens.

Why llguidance (not xgrammar): measured on this 2-core CPU with SmolLM2's 49,152-token vocabulary
over twenty JSON schemas, computing and applying one mask took 83 us (median; p95 171 us) against
xgrammar's 229 us (p95 305 us); a matcher is ready in ~1 ms (xgrammar compiled in 3 ms median,
1 s at worst); and llguidance needs no torch, so the gateway validates grammars with the same
library before queueing them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import llguidance
import llguidance.torch
import numpy as np
import torch

from adapters.base import AdapterError
from protocol import Constraint

log = logging.getLogger(__name__)

LLMatcher = llguidance.LLMatcher  # one request's place in its grammar

CACHED_GRAMMARS = 256  # compiled grammars kept per model (least recently used go first)
LANDING_TOKENS = 48  # a constrained reply this close to its token limit is steered to close (at most a quarter of it)
CLOSERS = frozenset('"]}')


class InvalidGrammar(AdapterError):
    def __init__(self, constraint: Constraint, why: str) -> None:
        super().__init__(f"'{constraint.param}' cannot be used with this model: {why.strip()[:500]}")
        self.param = constraint.param


class Grammars:
    """The compiled grammars of one model, and the masks of its constrained rows."""

    def __init__(self, make_tokenizer: Callable[[], tuple[llguidance.LLTokenizer, np.ndarray]], vocab_size: int) -> None:
        self._make_tokenizer = make_tokenizer  # built at the first constrained request (~0.5 s)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._closing = np.zeros(vocab_size, dtype=bool)  # tokens that only close JSON ("]}), and EOS
        self.vocab_size = vocab_size
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = llguidance.LLExecutor(max(1, min(4, os.cpu_count() or 1)))
        self.hits = self.misses = 0

    def matcher(self, constraint: Constraint) -> llguidance.LLMatcher:
        """A fresh matcher of `constraint` for one request; InvalidGrammar when it does not compile."""
        with self._lock:
            compiled = self._compiled.get(constraint.grammar)
            if compiled is not None:
                self._compiled.move_to_end(constraint.grammar)
                self.hits += 1
                return compiled.deep_copy()
            if self._tokenizer is None:
                try:
                    self._tokenizer, self._closing = self._make_tokenizer()
                except Exception as exc:  # noqa: BLE001 - whatever the tokenizer library raises
                    log.exception("could not build the grammar tokenizer")
                    raise InvalidGrammar(constraint, f"its tokenizer cannot be used for structured output ({exc})") from None
            tokenizer = self._tokenizer
        compiled = llguidance.LLMatcher(tokenizer, constraint.grammar)  # outside the lock: others go on
        if compiled.is_error():
            raise InvalidGrammar(constraint, compiled.get_error())
        with self._lock:
            self.misses += 1
            self._compiled[constraint.grammar] = compiled
            while len(self._compiled) > CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
            return compiled.deep_copy()

    def mask(self, matchers: Sequence[llguidance.LLMatcher], logits: torch.Tensor,
             landing: Sequence[bool] = ()) -> torch.Tensor:  # fmt: skip
        """`logits` (one row per matcher) with every token its matcher forbids at -inf (a new
        tensor).  A matcher in error forbids everything; its row is then all -inf.  A row that is
        `landing` (its token limit is near) keeps only the allowed tokens that close what is open
        (`"`, `]`, `}`) or end the reply, where there are any."""
        bitmask = llguidance.torch.allocate_token_bitmask(len(matchers), self.vocab_size)
        llguidance.torch.fill_next_token_bitmask_par(self._executor, [(m, i) for i, m in enumerate(matchers)], bitmask)
        allowed = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, : logits.shape[-1]] != 0
        for k in (k for k, near in enumerate(landing) if near):
            closing = allowed[k] & self._closing[: allowed.shape[1]]
            if closing.any():
                allowed[k] = closing
        return logits.masked_fill(torch.from_numpy(~allowed).to(logits.device), float("-inf"))

    def mask_rows(self, logits: torch.Tensor, rows: list[int], matchers: Sequence[llguidance.LLMatcher],
                  landing: Sequence[bool] = ()) -> None:  # fmt: skip
        """Mask `logits` (a batch's) in place: row rows[k] as matchers[k] allows."""
        index = torch.tensor(rows, device=logits.device)
        logits[index] = self.mask(matchers, logits[index], landing)

    def stats(self) -> dict[str, int]:
        return {"grammar_cache_hits": self.hits, "grammar_cache_misses": self.misses,
                "grammar_cache_entries": len(self._compiled)}  # fmt: skip


def hf_grammars(tokenizer: object, vocab_size: int, eos_ids: frozenset[int]) -> Grammars:
    """Grammars for a model with a Hugging Face fast tokenizer."""
    import llguidance.hf

    def make() -> tuple[llguidance.LLTokenizer, np.ndarray]:
        ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=sorted(eos_ids))  # type: ignore[arg-type]
        texts = tokenizer.batch_decode([[i] for i in range(min(vocab_size, len(tokenizer)))])  # type: ignore[attr-defined]
        closing = np.zeros(vocab_size, dtype=bool)
        closing[[i for i, t in enumerate(texts) if t.strip() and set(t.strip()) <= CLOSERS]] = True
        closing[sorted(i for i in eos_ids if i < vocab_size)] = True
        return ll, closing

    return Grammars(make, vocab_size)
