"""/tokenize and /detokenize on the worker: only it has the model's tokenizer."""

from __future__ import annotations

from adapters import ModelAdapter, UnsupportedParameter
from protocol import TokenizeJob
from workers.contract import Engine
from workers.publisher import EventPublisher


def answer_tokenize(engine: Engine, job: TokenizeJob, publisher: EventPublisher) -> None:
    """Tokenize (or detokenize) with the engine's adapter and publish the TokenizedEvent;
    raises an AdapterError for what the model cannot do."""
    adapter = getattr(engine, "adapter", None)
    if not isinstance(adapter, ModelAdapter):
        raise UnsupportedParameter("model", job.model, "tokenizing is not offered by model")
    length = adapter.context_length
    if job.tokens is not None:
        bad = next((t for t in job.tokens if not 0 <= t < adapter.vocab_size), None)
        if bad is not None:
            raise UnsupportedParameter("tokens", job.model, f"holds the token id {bad}, outside the vocabulary "
                                       f"(0..{adapter.vocab_size - 1}) of model")  # fmt: skip
        publisher.tokenized(length, text=adapter.decode(list(job.tokens)))
        return
    if job.messages is not None:
        ids = adapter.chat_prompt(job.messages, add_generation_prompt=job.add_generation_prompt)  # type: ignore[call-arg]
    else:
        ids = adapter.encode(job.prompt or "", add_special_tokens=job.add_special_tokens)
    strs = tuple(adapter.token_strs(ids)) if job.return_token_strs else None
    publisher.tokenized(length, tokens=tuple(ids), token_strs=strs)
