"""What every model adapter offers the worker's engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

from protocol import Capability, ChatMessage, GenerateJob, ModelSpec, SamplingParams

if TYPE_CHECKING:
    import torch

    from adapters.guidance import Grammars

# Which engine drives an adapter (workers.engines.ENGINES): logits that the worker samples in a
# batch, text the model streams itself, embeddings, or a sequence classifier's class scores.
AdapterKind = Literal["batch", "text", "embed", "classify"]


class AdapterError(Exception):
    """Raised by adapters for problems the client caused; mapped to error events in one place."""

    param: str | None = None


class UnsupportedParameter(AdapterError):
    def __init__(self, param: str, model: str, why: str = "is not supported by model") -> None:
        super().__init__(f"'{param}' {why} '{model}'." if why.endswith("model") else f"'{param}' {why}.")
        self.param = param


class ContextLengthExceeded(AdapterError):
    def __init__(self, prompt_tokens: int, limit: int) -> None:
        super().__init__(
            f"This model's maximum context length is {limit} tokens, but the prompt has "
            f"{prompt_tokens} tokens. Shorten the prompt or the conversation."
        )
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class KVCacheExceeded(AdapterError):
    """The request would need more KV cache than the worker may ever hold for this model."""

    def __init__(self, needed: int, budget: int, model: str, param: str, cause: str) -> None:
        super().__init__(
            f"This request needs the KV cache of {needed} tokens ({cause}), but a worker of model '{model}' "
            f"holds at most {budget} (its kv_cache_mb). "
            + ("Lower max_tokens." if param == "max_tokens" else "Shorten the prompt or the conversation.")
        )
        self.param = param


class EmptyPrompt(AdapterError):
    def __init__(self) -> None:
        super().__init__("The prompt is empty and this model has no beginning-of-text token to start from.")


class ModelLoadError(Exception):
    """The model named in the models file could not be loaded."""


@dataclass
class PromptScores:
    """How likely a prompt's tokens were, position by position (from the second token on): each
    one's logprob given the tokens before it, its rank in the vocabulary (1: the likeliest), and
    the likeliest tokens there (ids and logprobs, likeliest first)."""

    logprobs: list[float] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)

    def extend(self, other: PromptScores) -> None:
        self.logprobs += other.logprobs
        self.ranks += other.ranks
        self.top_ids += other.top_ids
        self.top_logprobs += other.top_logprobs


class Prefill(ABC):
    """Rows on their way into a batch: their prompts are computed `feed` by `feed`, and the call
    that computes the last of them joins them to the batch (after its rows, in order) and
    returns their next-token logits, shape [rows, vocab].  Rows started with a number in
    `scored` (alternatives wanted) also get their prompt's `PromptScores` in `prompt_scores` by
    then (computed whole: such a row takes nothing from a prefix cache)."""

    prompt_scores: list[PromptScores | None] = []

    @property
    @abstractmethod
    def remaining(self) -> int:
        """Prompt columns still to compute (rows are padded to the longest)."""

    @abstractmethod
    def feed(self, columns: int) -> torch.Tensor | None:
        """Compute up to `columns` more columns of every row; the logits once all are done, else None."""


class _WholePrefill(Prefill):
    """For batches that prefill in one pass: the first feed adds the rows whole."""

    def __init__(self, batch: DecodeBatch, prompts: list[list[int]]) -> None:
        self._batch, self._prompts = batch, prompts
        self.prompt_scores = [None] * len(prompts)

    @property
    def remaining(self) -> int:
        return max((len(p) for p in self._prompts), default=0)

    def feed(self, columns: int) -> torch.Tensor:
        logits, self._prompts = self._batch.add(self._prompts), []
        return logits


class DecodeBatch(ABC):
    """The rows one engine is decoding together: rows join (prefilled), step, and leave.

    Rows are numbered in the order they joined; `remove` keeps the others in order."""

    #: most rows this batch can hold at once (1 for models whose cache cannot be merged)
    max_rows: int = 1 << 30
    #: whether `start` can score prompts (prompt logprobs)
    scores_prompts: bool = False

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    def columns(self) -> int:
        """Token positions each row's KV cache spans now (rows are padded to a common width)."""
        return 0

    def width_with(self, prompts: list[list[int]], whole: Sequence[bool] = ()) -> int:
        """The width `prompts` would take if they joined together now (their KV cache only);
        `whole[i]`: prompt i is computed whole (scored), whatever a cache holds."""
        return max((len(p) for p in prompts), default=0)

    def prefill_columns(self, prompts: list[list[int]], whole: Sequence[bool] = ()) -> int:
        """Columns a prefill of `prompts` together computes (what no cache holds, padded)."""
        return max((len(p) for p in prompts), default=0)

    @abstractmethod
    def add(self, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill new rows; returns their next-token logits, shape [len(prompts), vocab]."""

    def start(self, prompts: list[list[int]], scored: Sequence[int | None] = ()) -> Prefill:
        """Begin prefilling new rows, to be computed in chunks (batches that cannot chunk do it
        all at the first feed).  `scored[i]`: alternatives wanted per position of prompt i's
        scores (None: not scored); only for batches that `scores_prompts`."""
        if any(k is not None for k in scored):
            raise NotImplementedError("this batch does not score prompts")
        return _WholePrefill(self, prompts)

    @abstractmethod
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per row (in row order); returns next-token logits, shape [rows, vocab]."""

    @abstractmethod
    def remove(self, rows: list[int]) -> None:
        """Drop the given rows (finished or cancelled)."""


class Detokenizer(Protocol):
    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


class AdapterBase(ABC):
    """What every adapter has: its models-file entry, the cache folder, and which engine drives
    it (`kind`).  Each kind has its own interface below: `ModelAdapter` (batch), `TextAdapter`,
    `EmbedAdapter`."""

    name: ClassVar[str]
    kind: ClassVar[AdapterKind]

    def __init__(self, spec: ModelSpec, cache_dir: Path) -> None:
        self.spec = spec
        self.cache_dir = cache_dir

    def model_folder(self) -> Path:
        """The spec's path, which must be a folder (config, weights, tokenizer)."""
        path = self.spec.path
        if path is None or not path.is_dir():
            raise ModelLoadError(f"model {self.spec.name!r}: {path} is not a model folder")
        return path

    @abstractmethod
    def load(self) -> None:
        """Load weights and tokenizer; called once, before the worker takes tasks."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Most tokens the model accepts (prompt + completion; or one input, for embeddings)."""

    def default_sampling(self) -> dict[str, float]:
        """The model's own recommended temperature / top_p, if it ships any."""
        return {}


class ModelAdapter(AdapterBase):
    """Kind "batch": loads one model family; its `DecodeBatch` gives logits that the worker's
    BatchEngine samples."""

    kind = "batch"

    @abstractmethod
    def chat_prompt(self, messages: Sequence[ChatMessage], tools: Sequence[dict] | None = None,
                    tool_choice: str | None = None) -> list[int]:  # fmt: skip
        """Token ids of a chat, ready for the assistant's reply (the model's chat template), with
        the tools described when given (adapters/tools.py)."""

    @abstractmethod
    def text_prompt(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt."""

    @property
    @abstractmethod
    def eos_ids(self) -> frozenset[int]:
        """Tokens that end a sequence."""

    @abstractmethod
    def new_batch(self) -> DecodeBatch:
        """An empty batch to decode many sequences together."""

    @abstractmethod
    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        """Turns one sequence's generated ids into text deltas."""

    @property
    def kv_budget_tokens(self) -> int | None:
        """Most token positions (rows x columns) the decode batch's KV cache may hold; None: no
        bound (a model without a KV cache)."""
        return None

    def cache_stats(self) -> dict[str, int]:
        """Counters of the adapter's caches, for the worker's heartbeat."""
        return {}

    @property
    def grammars(self) -> Grammars | None:
        """How this model's output is held to a grammar (structured outputs); None: it cannot be."""
        return None

    @property
    def chat_stops(self) -> tuple[str, ...]:
        """Strings that end a chat reply besides the EOS tokens (from a named template)."""
        return ()

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Size of the logits (token ids 0 .. vocab_size - 1)."""

    @abstractmethod
    def token_texts(self, ids: list[int]) -> list[str]:
        """Each token on its own, as text (for logprobs)."""

    def token_strs(self, ids: list[int]) -> list[str]:
        """Each token as the vocabulary spells it (/tokenize's token_strs)."""
        return self.token_texts(ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (/tokenize); with the tokenizer's special tokens (BOS...) when asked."""
        raise UnsupportedParameter("prompt", self.spec.name, "cannot be tokenized by model")

    def decode(self, ids: list[int]) -> str:
        """The text of token ids, special tokens included (/detokenize, the echo of a token prompt)."""
        return "".join(self.token_texts(ids))

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as this model counts them."""


class TextAdapter(AdapterBase):
    """Kind "text": the model streams text itself (remote-code ChatGLM's `stream_chat`), so what
    needs logits (logprobs, penalties, logit_bias, tools) is refused; driven by SerialEngine."""

    kind = "text"

    @abstractmethod
    def check(self, job: GenerateJob) -> None:
        """Raise UnsupportedParameter for what this model cannot honour."""

    @abstractmethod
    def prompt_ids(self, job: GenerateJob) -> list[int]:
        """The prompt as the model's own format spells it, for usage and the context check."""

    @abstractmethod
    def conversation(self, job: GenerateJob) -> object:
        """The job in the model's own terms; raises an AdapterError for one it cannot take."""

    @abstractmethod
    def stream(self, job: GenerateJob, params: SamplingParams, limit: int, prompt_tokens: int) -> Iterator[str]:
        """Text deltas of the reply; `params` are resolved (temperature and top_p are set)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as this model counts them."""

    @property
    def chat_stops(self) -> tuple[str, ...]:
        """Strings that end a chat reply (the conversation template's)."""
        return ()


class EmbedAdapter(AdapterBase):
    """Kind "embed": an encoder whose pooled output is the embedding; driven by EmbeddingEngine."""

    kind = "embed"
    dimensions: int

    @abstractmethod
    def token_ids(self, inputs: tuple[str | tuple[int, ...], ...]) -> list[list[int]]:
        """Each input as the model's token ids; raises ContextLengthExceeded for one too long."""

    @abstractmethod
    def embed(self, rows: list[list[int]]) -> torch.Tensor:
        """One vector per row, shape [len(rows), dimensions]."""


class ClassifyAdapter(AdapterBase):
    """Kind "classify": a sequence classifier (a cross-encoder when it has one output); driven
    by ScoringEngine."""

    kind = "classify"
    labels: tuple[str, ...]  # the classes' names, in the order of the model's outputs

    @property
    @abstractmethod
    def capabilities(self) -> tuple[Capability, ...]:
        """"classify", and "score" for a model with a single output (a relevance score)."""

    @abstractmethod
    def encode(self, rows: Sequence[tuple[str, ...]], param: str) -> list[dict[str, list[int]]]:
        """Each row (a text, or a pair read together) as the model's inputs (input_ids, and
        token_type_ids where the model has them); raises ContextLengthExceeded, naming the row
        as `param`[i], for one that is too long."""

    @abstractmethod
    def predict(self, encoded: list[dict[str, list[int]]]) -> torch.Tensor:
        """The activated outputs (probabilities, or the scores), shape [rows, len(labels)], on the CPU."""
