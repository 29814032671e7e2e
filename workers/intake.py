"""What a batch engine checks of a request before it starts, in the request's own thread: its
prompt (text, chat or token ids) within the context, its token limit within the KV cache budget,
its logit_bias ids, whether prompt logprobs can be given, and its grammar (compiled here, never on
the decode loop).  Each failure is an AdapterError the client caused: a 400 naming the parameter."""

from __future__ import annotations

from adapters import ContextLengthExceeded, EmptyPrompt, KVCacheExceeded, ModelAdapter, UnsupportedParameter
from adapters.guidance import Grammars, GrammarState
from protocol import GenerateJob, SamplingParams
from workers.logprobs import prompt_logprobs_param, token_prompt


class Intake:
    def __init__(self, adapter: ModelAdapter, kv_budget: int | None, scores_prompts: bool) -> None:
        self.adapter = adapter
        self.kv_budget = kv_budget  # token positions (rows x columns); None: unbounded
        self._scores_prompts = scores_prompts  # whether the batch can give prompt logprobs
        self._default_max_tokens = adapter.spec.defaults.max_tokens

    def prompt_ids(self, job: GenerateJob) -> list[int]:
        """Tokenize the job's prompt; raise ContextLengthExceeded when no token would fit after it,
        EmptyPrompt when there is nothing to generate from."""
        if job.messages is not None:
            ids = self.adapter.chat_prompt(job.messages, job.tools, job.tool_choice)
        else:
            ids = token_prompt(job.prompt, self.adapter.vocab_size) if isinstance(job.prompt, tuple) \
                else self.adapter.text_prompt(job.prompt or "")
        if not ids:
            raise EmptyPrompt()
        if len(ids) >= self.adapter.context_length:
            raise ContextLengthExceeded(len(ids), self.adapter.context_length)
        self._check_budget(job, len(ids))
        if any(not 0 <= token < self.adapter.vocab_size for token, _ in job.params.logit_bias):
            raise UnsupportedParameter("logit_bias", self.adapter.spec.name,
                                       f"holds a token id outside this model's vocabulary (0..{self.adapter.vocab_size - 1})")  # fmt: skip
        if job.params.prompt_logprobs is not None and not self._scores_prompts:
            raise UnsupportedParameter(prompt_logprobs_param(job), self.adapter.spec.name,
                                       "(logprobs of the prompt) is not supported by model")  # fmt: skip
        if job.constraint is not None:  # compiled here, in the task thread: one that fails is refused before the start
            self._grammars(job).compile(job.constraint)
        return ids

    def grammar(self, job: GenerateJob) -> GrammarState | None:
        """The job's own start in its constraint's grammar (compiled by `prompt_ids`); None without one."""
        return None if job.constraint is None else self._grammars(job).state(job.constraint)

    def _grammars(self, job: GenerateJob) -> Grammars:
        assert job.constraint is not None
        if self.adapter.grammars is None:
            raise UnsupportedParameter(job.constraint.param, self.adapter.spec.name,
                                       "(structured output) is not supported by model")  # fmt: skip
        return self.adapter.grammars

    def _check_budget(self, job: GenerateJob, prompt_tokens: int) -> None:
        """Refuse a request that could not fit in the KV cache even alone: a prompt that fills it,
        or an explicit max_tokens beyond it (an implicit limit is cut to fit instead)."""
        budget, prompt_param = self.kv_budget, "messages" if job.messages is not None else "prompt"
        if budget is None:
            return
        if prompt_tokens >= budget:
            raise KVCacheExceeded(prompt_tokens + 1, budget, self.adapter.spec.name, prompt_param,
                                  f"a prompt of {prompt_tokens} and at least one new token")  # fmt: skip
        asked = job.params.max_tokens
        if asked is not None and prompt_tokens + self.limit(job.params, prompt_tokens) > budget:
            raise KVCacheExceeded(prompt_tokens + asked, budget, self.adapter.spec.name, "max_tokens",
                                  f"a prompt of {prompt_tokens} and max_tokens {asked}")  # fmt: skip

    def limit(self, params: SamplingParams, prompt_tokens: int) -> int:
        """Most tokens a request may generate: its max_tokens (else the models file's default),
        within the context and, for an implicit limit, within the KV cache budget."""
        room = self.adapter.context_length - prompt_tokens
        if params.max_tokens is not None:
            return min(params.max_tokens, room)
        if self.kv_budget is not None:
            room = min(room, self.kv_budget - prompt_tokens)
        return min(self._default_max_tokens or room, room)
