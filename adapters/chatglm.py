"""ChatGLM with its own remote code (ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B, and GLM-4-9B-chat's
first published code, which still has `chat` / `stream_chat`): the model's
`stream_chat(tokenizer, query, history, ...)` generates, and this adapter maps OpenAI messages
onto that interface and turns the growing responses it yields into deltas.

Native GLM-4 checkpoints (transformers' GlmForCausalLM / Glm4ForCausalLM) need no remote code;
`adapter_class` serves them with the generic batched adapter and the `glm4` template fallback.

THUDM's published code was written for transformers 4.2x-4.3x; `adapters/chatglm_compat/`
patches its classes at load time (one documented fix per API transformers changed since), so the
checkpoints are served exactly as downloaded.

History styles, chosen by `options: {history: pairs|messages}` or detected from the tokenizer:
- pairs (ChatGLM-6B / ChatGLM2-6B): history = [(question, answer), ...]; a system message is
  put before the first question, since these models have no system role;
- messages (ChatGLM3-6B, whose tokenizer has `build_chat_input`; GLM-4-9B-chat, whose
  `stream_chat` takes a `role`): history = [{"role", "content"}].

GLM-4-9B-chat code without `stream_chat` (its later revisions, meant for `generate()` with the
tokenizer's chat template) is refused with the `queuechat convert-chatglm` command: its network is
transformers' own Glm, served batched by hf-causal once converted.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from adapters.base import AdapterError, ModelLoadError, TextAdapter, UnsupportedParameter
from adapters.chatglm_compat import is_chatglm_remote_code, prepare_remote_classes
from adapters.hf_causal import pick_device, pick_dtype
from adapters.select import read_config
from adapters.templates import Template, get_template
from protocol import ChatMessage, GenerateJob, SamplingParams

log = logging.getLogger(__name__)


class ConversationError(AdapterError):
    param = "messages"


def takes_messages(tokenizer: Any, stream_chat: Any) -> bool:
    """Whether `stream_chat` wants history as role/content messages: ChatGLM3's tokenizer has
    `build_chat_input`; GLM-4-9B-chat's first code has none (its tokenizer's own
    `apply_chat_template` builds the prompt), but its stream_chat, like ChatGLM3's, takes the new
    message's `role`, which ChatGLM-6B / ChatGLM2-6B's do not."""
    if hasattr(tokenizer, "build_chat_input"):
        return True
    try:
        return "role" in inspect.signature(stream_chat).parameters
    except (TypeError, ValueError):
        return False


def default_template(tokenizer: Any, style: str) -> str:
    """The template that spells the prompt as the model's code does (for usage and the context
    check): GLM-4's vocabulary has `<sop>` (its prompt starts `[gMASK]<sop>`), ChatGLM3's `sop`."""
    if style == "pairs":
        return "chatglm"
    try:
        glm4 = "<sop>" in tokenizer.get_vocab()
    except Exception:  # a remote get_vocab that fails: keep ChatGLM3's
        glm4 = False
    return "glm4" if glm4 else "chatglm3"


def no_stream_chat_message(name: str, path: Any, config: dict) -> str:
    """Later revisions of GLM-4-9B-chat's code dropped chat()/stream_chat() (meant for generate()
    with the tokenizer's chat template); its network is transformers' own Glm, so the converter
    serves it natively (batched, no remote model code)."""
    from adapters.select import convert_hint

    hint = convert_hint(path, config)
    return f"model {name!r}: its code has no stream_chat(), which adapter chatglm runs; " + (
        hint or "serve a converted or native checkpoint (transformers' Glm/Glm4) with adapter hf-causal"
    )


class ChatGLMAdapter(TextAdapter):
    """Remote-code ChatGLM-6B/2/3 and GLM-4-9B-chat: the model's own `stream_chat` writes the reply."""

    name = "chatglm"

    def load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        started = time.monotonic()
        path = self.model_folder()
        if not self.spec.trust_remote_code:
            raise ModelLoadError(
                f"model {self.spec.name!r} runs its own Python code (auto_map in {path / 'config.json'}); "
                "set 'trust_remote_code: true' in the models file if you trust that code"
            )
        device = pick_device(self.spec.device)
        config = read_config(path)
        # THUDM's code predates transformers 5: patch its classes before they are used (see chatglm_compat)
        self.compat_fixes = prepare_remote_classes(path, config) if is_chatglm_remote_code(config) else {}
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        # float32 on CPUs as THUDM run it there (their code's bf16 paths assume CUDA)
        dtype = pick_dtype(self.spec.dtype, device, cpu_bf16=False)
        model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=dtype)
        self.model = model.to(device).eval()
        if not callable(getattr(self.model, "stream_chat", None)):
            raise ModelLoadError(no_stream_chat_message(self.spec.name, path, config))
        style = self.spec.options.get("history", "auto")
        if style == "auto":
            style = "messages" if takes_messages(self.tokenizer, self.model.stream_chat) else "pairs"
        if style not in ("pairs", "messages"):
            raise ModelLoadError(f"model {self.spec.name!r}: options.history must be pairs or messages")
        self.history_style = style
        self.template: Template = get_template(self.spec.template or default_template(self.tokenizer, style))
        config = self.model.config
        native = getattr(config, "seq_length", None) or getattr(config, "max_position_embeddings", None) or 2048
        self._context = min(native, self.spec.max_context) if self.spec.max_context else native
        fixes = sorted({fix for applied in self.compat_fixes.values() for fix in applied})
        log.info("loaded %s (remote-code ChatGLM, %s history%s) in %.1f s", self.spec.name, style,
                 f"; transformers compat: {', '.join(fixes)}" if fixes else "", time.monotonic() - started)  # fmt: skip

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def chat_stops(self) -> tuple[str, ...]:
        return self.template.stop

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def check(self, job: GenerateJob) -> None:
        """stream_chat yields text, not logits: what needs logits cannot be honoured."""
        params = job.params
        if job.tools:
            raise UnsupportedParameter("tools", self.spec.name)
        if job.constraint is not None:  # a grammar masks logits
            raise UnsupportedParameter(job.constraint.param, self.spec.name, "(structured output) is not supported by model")
        if params.logprobs is not None:
            raise UnsupportedParameter("logprobs", self.spec.name)
        if params.logit_bias:
            raise UnsupportedParameter("logit_bias", self.spec.name)
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(params, name):
                raise UnsupportedParameter(name, self.spec.name)

    def prompt_ids(self, job: GenerateJob) -> list[int]:
        """The prompt's token ids as the model's own code builds them (for usage and the context
        check): the tokenizer's `build_chat_input` (ChatGLM3) or `apply_chat_template` (GLM-4)
        when the model takes messages; else the template's text.  Encoding a template that spells
        special tokens as text (`[gMASK]sop<|user|>`) would count them as ordinary pieces."""
        if self.history_style == "messages":
            query, history = self.conversation(job)
            if callable(getattr(self.tokenizer, "build_chat_input", None)):
                return _flat_ids(self.tokenizer.build_chat_input(query, history=history, role="user"))
            try:
                chat = [*history, {"role": "user", "content": query}]
                return _flat_ids(self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True))
            except ValueError:  # no chat template: the named template's text below
                pass
        text = self.template.render(job.messages) if job.messages is not None else job.prompt or ""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def conversation(self, job: GenerateJob) -> tuple[str, list[Any]]:
        """(query, history) in the model's own terms."""
        if job.messages is None:
            return job.prompt or "", []  # a completion prompt is asked as a single question
        messages: Sequence[ChatMessage] = job.messages
        if messages[-1].role != "user":
            raise ConversationError("The last message must come from the user for this model.")
        if any(m.role == "tool" for m in messages):
            raise ConversationError("This model does not take tool messages.")
        query, earlier = messages[-1].content, messages[:-1]
        if self.history_style == "messages":
            role = {"developer": "system"}
            return query, [{"role": role.get(m.role, m.role), "content": m.content} for m in earlier]
        system = "\n\n".join(m.content for m in earlier if m.role in ("system", "developer"))
        history: list[tuple[str, str]] = []
        pending: str | None = None
        for m in earlier:
            if m.role == "user":
                if pending is not None:
                    history.append((pending, ""))
                pending = m.content
            elif m.role == "assistant":
                history.append((pending or "", m.content))
                pending = None
        if pending is not None:
            query = f"{pending}\n\n{query}"
        if system:  # no system role in these models: it leads the first question
            if history:
                history[0] = (f"{system}\n\n{history[0][0]}", history[0][1])
            else:
                query = f"{system}\n\n{query}"
        return query, history

    @torch.inference_mode()
    def stream(self, job: GenerateJob, params: SamplingParams, limit: int, prompt_tokens: int) -> Iterator[str]:
        """Text deltas of the reply; `params` are resolved (temperature and top_p are set)."""
        query, history = self.conversation(job)
        kwargs: dict[str, Any] = {"max_length": prompt_tokens + limit + 8, "do_sample": not params.greedy}
        if not params.greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
            if params.top_k:
                kwargs["top_k"] = params.top_k
            if params.seed is not None:
                torch.manual_seed(params.seed)  # one request at a time: the global RNG is ours
        previous = ""
        for response, _ in self.model.stream_chat(self.tokenizer, query, history=history, **kwargs):
            if not isinstance(response, str):  # ChatGLM3 turns its own tool-call syntax into a dict
                continue
            if not response.startswith(previous):  # the model rewrote its text (post-processing)
                previous = response
                continue
            delta, previous = response[len(previous) :], response
            if delta:
                yield delta


def _flat_ids(encoded: Any) -> list[int]:
    """One sequence's ids from what a remote tokenizer returns: ids, a batch of one, a tensor or an
    encoding with `input_ids`."""
    if not isinstance(encoded, (list, tuple)) and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    ids = encoded.tolist() if hasattr(encoded, "tolist") else list(encoded)
    while ids and isinstance(ids[0], (list, tuple)):
        ids = list(ids[0])
    return [int(token) for token in ids]
