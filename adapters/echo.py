"""An instant, model-free adapter: answers with the prompt's own bytes, over and over.

For measuring everything around the model (queue, pub/sub, gateway, SSE) and for fast tests.
Tokens are bytes (0-255); 256 ends a sequence.  `path` in the models file is not read;
`options: {step_delay: 0.05}` makes each decode step take that long, like a slow model.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Sequence

import torch

from adapters.base import DecodeBatch, ModelAdapter
from protocol import ChatMessage

EOS = 256
VOCAB = 257


class EchoBatch(DecodeBatch):
    def __init__(self, step_delay: float = 0.0) -> None:
        self._rows: list[tuple[list[int], int]] = []  # (prompt, how many tokens generated)
        self._delay = step_delay

    def __len__(self) -> int:
        return len(self._rows)

    def _logits(self, rows: list[tuple[list[int], int]]) -> torch.Tensor:
        logits = torch.full((len(rows), VOCAB), float("-inf"))
        for i, (prompt, produced) in enumerate(rows):
            logits[i, prompt[produced % len(prompt)]] = 0.0
        return logits

    def add(self, prompts: list[list[int]]) -> torch.Tensor:
        new = [(p, 0) for p in prompts]
        self._rows.extend(new)
        return self._logits(new)

    def step(self, tokens: list[int]) -> torch.Tensor:
        if self._delay:
            time.sleep(self._delay)  # stands in for a model's forward pass
        self._rows = [(prompt, produced + 1) for prompt, produced in self._rows]
        return self._logits(self._rows)

    def remove(self, rows: list[int]) -> None:
        gone = set(rows)
        self._rows = [r for i, r in enumerate(self._rows) if i not in gone]


class ByteDetokenizer:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(bytes([token_id]))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class EchoAdapter(ModelAdapter):
    name = "echo"

    def load(self) -> None:
        self._context = self.spec.max_context or 4096

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def eos_ids(self) -> frozenset[int]:
        return frozenset({EOS})

    def chat_prompt(self, messages: Sequence[ChatMessage], tools: Sequence[dict] | None = None,
                    tool_choice: str | None = None, add_generation_prompt: bool = True) -> list[int]:  # fmt: skip
        """The contents joined by newlines (tools are not described: the echo is the reply)."""
        return self.text_prompt("\n".join(m.content for m in messages))

    def text_prompt(self, prompt: str) -> list[int]:
        return list(prompt.encode())

    def count_tokens(self, text: str) -> int:
        return len(text.encode())

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.text_prompt(text)

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")

    @property
    def vocab_size(self) -> int:
        return VOCAB

    def token_texts(self, ids: list[int]) -> list[str]:
        return [bytes([i]).decode("utf-8", "replace") if i < 256 else "" for i in ids]

    def new_batch(self) -> EchoBatch:
        return EchoBatch(float(self.spec.options.get("step_delay", 0.0)))

    def detokenizer(self, prompt_ids: list[int]) -> ByteDetokenizer:
        return ByteDetokenizer()
