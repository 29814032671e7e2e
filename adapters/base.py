"""What every model adapter offers the worker's engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from workers.models_file import ModelSpec
from workers.protocol import ChatMessage, SamplingParams


class AdapterError(Exception):
    """Raised by adapters for problems the client caused; mapped to error events in one place."""


class ContextLengthExceeded(AdapterError):
    def __init__(self, prompt_tokens: int, limit: int) -> None:
        super().__init__(
            f"This model's maximum context length is {limit} tokens, but the prompt has "
            f"{prompt_tokens} tokens. Shorten the prompt or the conversation."
        )
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class EmptyPrompt(AdapterError):
    def __init__(self) -> None:
        super().__init__("The prompt is empty and this model has no beginning-of-text token to start from.")


class ModelLoadError(Exception):
    """The model named in the models file could not be loaded."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of generation: the text it added (may be empty while a character is incomplete),
    how many tokens it consumed, and `finish="stop"` when the model ended the sequence itself."""

    text: str
    tokens: int = 1
    finish: Literal["stop"] | None = None


class ModelAdapter(ABC):
    """Loads one model family and turns prompts into streams of `Step`s."""

    name: ClassVar[str]

    def __init__(self, spec: ModelSpec, cache_dir: Path) -> None:
        self.spec = spec
        self.cache_dir = cache_dir

    @abstractmethod
    def load(self) -> None:
        """Load weights and tokenizer; called once, before the worker takes tasks."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Most tokens (prompt + completion) the model accepts."""

    @abstractmethod
    def chat_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of a chat, ready for the assistant's reply (the model's chat template)."""

    @abstractmethod
    def text_prompt(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt."""

    @abstractmethod
    def stream(self, prompt_ids: list[int], params: SamplingParams, max_new_tokens: int) -> Iterator[Step]:
        """Generate at most `max_new_tokens` tokens.  Closing the iterator stops generation."""

    def default_sampling(self) -> dict[str, float]:
        """The model's own recommended temperature / top_p, if it ships any."""
        return {}

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as this model counts them."""
