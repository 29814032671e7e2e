"""Named conversation templates, for tokenizers that ship no chat template of their own.

Each template turns OpenAI-style messages into the prompt text a model family was trained on,
ending where the assistant's reply starts, and names the strings that end a reply when the
family has no dedicated end-of-turn token.  The models file picks one with `template: NAME`;
otherwise a tokenizer without a chat template gets `default_template(model_type)`.

Pure Python (no torch), so the gateway and tests may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from protocol import ChatMessage

Render = Callable[[Sequence[ChatMessage]], str]


@dataclass(frozen=True)
class Template:
    name: str
    render: Render
    stop: tuple[str, ...] = ()  # reply boundaries when the tokenizer's EOS does not mark them
    about: str = ""


def _split_system(messages: Sequence[ChatMessage], default: str = "") -> tuple[str, list[ChatMessage]]:
    """(system text, the other messages); several system/developer messages are joined."""
    system = [m.content for m in messages if m.role in ("system", "developer")]
    return "\n\n".join(system) or default, [m for m in messages if m.role not in ("system", "developer")]


def _turns(messages: Sequence[ChatMessage]) -> list[tuple[str, str | None]]:
    """(user text, assistant reply or None) pairs; tool results are shown as user turns."""
    pairs: list[tuple[str, str | None]] = []
    for m in messages:
        if m.role == "assistant":
            if pairs and pairs[-1][1] is None:
                pairs[-1] = (pairs[-1][0], m.content)
            else:
                pairs.append(("", m.content))
        else:
            pairs.append((m.content, None))
    return pairs


def _chatml(messages: Sequence[ChatMessage]) -> str:
    body = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def _llama2(messages: Sequence[ChatMessage]) -> str:
    system, rest = _split_system(messages)
    out = ""
    for i, (user, reply) in enumerate(_turns(rest)):
        if i == 0 and system:
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
        out += f"<s>[INST] {user.strip()} [/INST]"
        if reply is not None:
            out += f" {reply.strip()} </s>"
    return out


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def _vicuna(messages: Sequence[ChatMessage]) -> str:
    system, rest = _split_system(messages, _VICUNA_SYSTEM)
    out = system + " "
    for user, reply in _turns(rest):
        out += f"USER: {user} ASSISTANT:"
        if reply is not None:
            out += f" {reply}</s>"
    return out


_ALPACA_SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def _alpaca(messages: Sequence[ChatMessage]) -> str:
    system, rest = _split_system(messages, _ALPACA_SYSTEM)
    out = system + "\n\n"
    for user, reply in _turns(rest):
        out += f"### Instruction:\n{user}\n\n### Response:\n"
        if reply is not None:
            out += f"{reply}\n\n"
    return out


def _chatglm(messages: Sequence[ChatMessage]) -> str:
    """ChatGLM-6B / ChatGLM2-6B: numbered rounds of 问 (question) and 答 (answer)."""
    system, rest = _split_system(messages)
    out = f"{system}\n\n" if system else ""
    for n, (user, reply) in enumerate(_turns(rest), start=1):
        out += f"[Round {n}]\n\n问：{user}\n\n答："
        if reply is not None:
            out += f"{reply}\n\n"
    return out


def _glm_roles(prefix: str) -> Render:
    """ChatGLM3 and GLM-4: <|role|> markers, the reply follows <|assistant|>."""

    def render(messages: Sequence[ChatMessage]) -> str:
        out = prefix
        for m in messages:
            role = {"developer": "system", "tool": "observation"}.get(m.role, m.role)
            out += f"<|{role}|>\n{m.content}"
        return out + "<|assistant|>\n"

    return render


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("chatml", _chatml, ("<|im_end|>",), "<|im_start|>role ... <|im_end|> (Qwen, SmolLM, many others)"),
        Template("llama-2", _llama2, ("</s>",), "[INST] <<SYS>> ... [/INST] (Llama-2 chat)"),
        Template("vicuna", _vicuna, ("</s>", "USER:"), "USER: ... ASSISTANT: (Vicuna v1.1)"),
        Template("alpaca", _alpaca, ("### Instruction:",), "### Instruction / ### Response (Alpaca)"),
        Template("chatglm", _chatglm, ("[Round ",), "[Round n] 问：... 答： (ChatGLM-6B, ChatGLM2-6B)"),
        Template("chatglm3", _glm_roles("[gMASK]sop"), ("<|user|>", "<|observation|>"), "<|user|> ... <|assistant|> (ChatGLM3-6B)"),
        Template("glm4", _glm_roles("[gMASK]<sop>"), ("<|user|>", "<|observation|>"), "GLM-4 (GLM-4-9B-Chat, GLM-4-0414)"),
    )
}

# What a tokenizer without a chat template most likely wants, by config.json's model_type.
_BY_MODEL_TYPE = {"chatglm": "chatglm", "glm": "glm4", "glm4": "glm4"}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}") from None


def default_template(model_type: str | None) -> Template:
    return TEMPLATES[_BY_MODEL_TYPE.get(model_type or "", "chatml")]
