"""The conversation-template registry and the automatic choice of adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.select import choose_adapter
from adapters.templates import TEMPLATES, default_template, get_template
from protocol import ChatMessage
from protocol.models_file import ModelSpec

CHAT = (
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Hi"),
    ChatMessage(role="assistant", content="Hello!"),
    ChatMessage(role="user", content="Capital of France?"),
)

EXPECTED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
              "Hello!<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n",
    "llama-2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Capital of France? [/INST]",
    "vicuna": "Be brief. USER: Hi ASSISTANT: Hello!</s>USER: Capital of France? ASSISTANT:",
    "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n### Instruction:\nCapital of France?"
              "\n\n### Response:\n",
    "chatglm": "Be brief.\n\n[Round 1]\n\n问：Hi\n\n答：Hello!\n\n[Round 2]\n\n问：Capital of France?\n\n答：",
    "chatglm3": "[gMASK]sop<|system|>\nBe brief.<|user|>\nHi<|assistant|>\nHello!<|user|>\nCapital of France?"
                "<|assistant|>\n",
    "glm4": "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\nHello!<|user|>\nCapital of France?"
            "<|assistant|>\n",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_each_template_renders_the_conversation_in_its_familys_format(name: str) -> None:
    assert get_template(name).render(CHAT) == EXPECTED[name]


def test_vicuna_and_alpaca_bring_their_default_system_prompt() -> None:
    user_only = (ChatMessage(role="user", content="Hi"),)
    assert get_template("vicuna").render(user_only).startswith("A chat between a curious user")
    assert get_template("alpaca").render(user_only).startswith("Below is an instruction")


def test_unknown_template_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="chatml"):
        get_template("nope")


def test_default_template_by_model_type() -> None:
    assert default_template("chatglm").name == "chatglm"
    assert default_template("glm4").name == "glm4"
    assert default_template("llama").name == "chatml"
    assert default_template(None).name == "chatml"


def _spec(path: Path | None, adapter: str = "auto") -> ModelSpec:
    return ModelSpec(name="m", path=path, adapter=adapter)


def _folder(path: Path, config: dict | None, *files: str) -> Path:
    import json

    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    for name in files:
        (path / name).write_text("[]")
    return path


@pytest.mark.parametrize(
    "folder,config,files,expected",
    [
        ("a", {"model_type": "chatglm", "auto_map": {}}, (), "chatglm"),
        ("b", {"model_type": "glm4", "architectures": ["Glm4ForCausalLM"]}, (), "chatglm"),
        ("c", {"model_type": "bert", "architectures": ["BertModel"]}, (), "embeddings"),
        ("d", {"model_type": "bert"}, ("modules.json",), "embeddings"),
        ("chatglm-but-llama", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, (), "hf-causal"),
        ("embedding-but-qwen", {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, (), "hf-causal"),
    ],
)
def test_auto_adapter_reads_the_models_own_files_not_its_name(tmp_path, folder, config, files, expected) -> None:
    assert choose_adapter(_spec(_folder(tmp_path / folder, config, *files))) == expected


def test_a_gguf_file_is_a_causal_lm_whatever_its_name(tmp_path: Path) -> None:
    assert choose_adapter(_spec(tmp_path / "chatglm-embeddings.gguf")) == "hf-causal"


def test_an_explicit_adapter_wins(tmp_path: Path) -> None:
    assert choose_adapter(_spec(_folder(tmp_path, {"model_type": "glm4"}), adapter="hf-causal")) == "hf-causal"
