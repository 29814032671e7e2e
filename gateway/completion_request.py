"""POST /v1/completions' request (named as in openapi.json): prompts as text or as token ids,
echo (with the prompt's logprobs when `logprobs` is set, as OpenAI's legacy API and lm-evaluation-
harness use it), vLLM's `prompt_logprobs`, `best_of`, and structured outputs (gateway/structured.py)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from gateway.errors import InvalidRequest
from gateway.openai_types import _NEUTRAL_VALUES, MAX_CHOICES, _GenerationRequest
from gateway.reply import Format, Reply
from gateway.settings import GatewaySettings
from gateway.structured import only_one
from gateway.tool_types import ResponseFormat
from protocol import GenerateJob

TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
Prompt = (
    str
    | Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICES)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_CHOICES)]
)


class CreateCompletionRequest(_GenerationRequest):
    _ID_PREFIX = "cmpl"
    _UNSUPPORTED = {name: value for name, value in _NEUTRAL_VALUES.items() if name != "best_of"}
    prompt: Prompt  # string | string[] | int[] | int[][], as the spec allows
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default; 0 (with echo): score the prompt only
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = False
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)
    response_format: ResponseFormat | None = None  # an extension here, as vLLM has it

    @model_validator(mode="after")
    def _best_of_fits(self) -> CreateCompletionRequest:
        if self.best_of is not None and self.best_of < self.n:
            raise InvalidRequest(f"'best_of' ({self.best_of}) must be at least n ({self.n}).", param="best_of")
        if self.stream and self.candidates is not None:
            raise InvalidRequest("'best_of' greater than n is not available when streaming.", param="best_of")
        return self

    @property
    def candidates(self) -> int | None:
        """Jobs per prompt when best_of asks for more than the n choices returned (else None)."""
        return self.best_of if self.best_of is not None and self.best_of > self.n else None

    @property
    def prompts(self) -> list[str | tuple[int, ...]]:
        """Each prompt: a string, or a tuple of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt[0], int):
            return [tuple(prompt)]  # type: ignore[arg-type]
        return [p if isinstance(p, str) else tuple(p) for p in prompt]  # type: ignore[union-attr]

    @property
    def echo_top(self) -> int | None:
        """Alternatives per prompt position that echo with logprobs asks for (None: no prompt logprobs)."""
        return self.logprobs if self.echo and self.logprobs is not None else None

    def check_limits(self, limits: GatewaySettings) -> None:
        self._check_common_limits(limits, sum(len(p) for p in self.prompts), "prompt")

    def reply(self) -> Reply:
        return Reply(Format.TEXT, self.stream, self.include_usage, logprobs=self.logprobs is not None, n=self.n,
                     best_of=self.candidates, echo_top=self.echo_top, prompt_logprobs=self.prompt_logprobs)  # fmt: skip

    def to_jobs(self, queue_timeout: float, response_id: str | None = None) -> list[GenerateJob]:
        wanted = [k for k in (self.echo_top, self.prompt_logprobs) if k is not None]
        update: dict[str, Any] = {"prompt_logprobs": max(wanted) if wanted else None,
                                  "cumulative_logprob": self.candidates is not None}  # fmt: skip
        params = self.sampling_params(self.max_tokens, self.logprobs).model_copy(update=update)
        fmt = self.response_format.constraint() if self.response_format else None
        constraint = only_one(fmt, self.extension_constraint())
        prompts = [{"prompt": p, "echo": bool(self.echo), "constraint": constraint} for p in self.prompts]
        return self._jobs(response_id, queue_timeout, prompts, params, self.candidates)
