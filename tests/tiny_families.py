"""Tiny local stand-ins for the model families of issue 6, built in a temp folder:

- a remote-code ChatGLM (ChatGLM2-6B's interface: `config.json` `auto_map` -> our own module
  with `chat()` / `stream_chat()` and pairs history),
- a native GLM-4 (transformers' Glm4ForCausalLM, random, with a GLM-4 style chat template),
- a sentence-transformers encoder (random BertModel + modules.json, mean pooling, Normalize);
- sequence classifiers (random BertForSequenceClassification): three labels, or one (a cross-encoder);

The stand-ins for THUDM's own ChatGLM-6B / ChatGLM2-6B / ChatGLM3-6B remote code (issue 13) are in
tests/tiny_thudm_chatglm.py (`make_thudm_chatglm`).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_models import write_tiny_tokenizer

_CONFIGURATION = '''
from transformers import PretrainedConfig


class TinyChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(self, vocab_size=400, hidden_size=32, seq_length=256, eos_token_id=2, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.seq_length = seq_length
        super().__init__(eos_token_id=eos_token_id, **kwargs)
'''

_MODELING = '''
"""A tiny stand-in for ChatGLM2-6B's remote code: the same chat()/stream_chat() interface."""
import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_tinychatglm import TinyChatGLMConfig


class TinyChatGLMModel(PreTrainedModel):
    config_class = TinyChatGLMConfig
    base_model_prefix = "transformer"

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = nn.GRU(config.hidden_size, config.hidden_size, batch_first=True)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.5)

    def forward(self, input_ids):
        hidden, _ = self.mix(self.embed(input_ids))
        return self.head(hidden)

    @staticmethod
    def build_prompt(query, history):
        prompt = ""
        for i, (old_query, response) in enumerate(history, start=1):
            prompt += f"[Round {i}]\\n\\n问：{old_query}\\n\\n答：{response}\\n\\n"
        return prompt + f"[Round {len(history) + 1}]\\n\\n问：{query}\\n\\n答："

    @torch.inference_mode()
    def stream_chat(self, tokenizer, query, history=None, max_length=256, do_sample=True, top_p=0.8,
                    temperature=0.8, top_k=None, **kwargs):
        history = list(history or [])
        ids = tokenizer.encode(self.build_prompt(query, history), add_special_tokens=False)
        generated = []
        while len(ids) + len(generated) < max_length:
            logits = self(torch.tensor([ids + generated]))[0, -1].float()
            if do_sample:
                logits = logits / temperature
                if top_k:
                    logits[logits < torch.topk(logits, top_k).values[-1]] = float("-inf")
                token = int(torch.multinomial(torch.softmax(logits, -1), 1))
            else:
                token = int(logits.argmax())
            if token == self.config.eos_token_id:
                break
            generated.append(token)
            response = tokenizer.decode(generated, skip_special_tokens=True)
            if response.endswith("\\ufffd"):
                continue
            yield response, history + [(query, response)]

    def chat(self, tokenizer, query, history=None, **kwargs):
        response = ""
        for response, _ in self.stream_chat(tokenizer, query, history, **kwargs):
            pass
        return response, list(history or []) + [(query, response)]
'''


def make_tiny_chatglm(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel

    tokenizer = write_tiny_tokenizer(folder, template=None)  # legacy ChatGLM ships no chat template
    (folder / "configuration_tinychatglm.py").write_text(_CONFIGURATION)
    (folder / "modeling_tinychatglm.py").write_text(_MODELING)
    config = {
        "model_type": "chatglm",
        "architectures": ["TinyChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_tinychatglm.TinyChatGLMConfig",
                     "AutoModel": "modeling_tinychatglm.TinyChatGLMModel"},
        "vocab_size": len(tokenizer), "hidden_size": 32, "seq_length": 256, "eos_token_id": tokenizer.eos_token_id,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    model = AutoModel.from_config(AutoConfig.from_pretrained(folder, trust_remote_code=True), trust_remote_code=True)
    model.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))  # keep auto_map exactly as written
    return folder


GLM4_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tiny_glm4(folder: Path, seed: int = 0, template: bool = True) -> Path:
    import torch
    from transformers import Glm4Config, Glm4ForCausalLM

    tokenizer = write_tiny_tokenizer(folder, GLM4_TEMPLATE if template else None)
    torch.manual_seed(seed)
    config = Glm4Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        initializer_range=0.2,
    )  # fmt: skip
    model = Glm4ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    return folder


_WORDS = ["the", "cat", "dog", "sat", "on", "mat", "queue", "worker", "paris", "france", "capital", "is", "of"]


def _write_bert_tokenizer(folder: Path) -> int:
    """A WordPiece tokenizer of a few words and letters (no word is [UNK]); returns its vocabulary size."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS, *letters, *(f"##{c}" for c in letters), ".", ","]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    return len(vocab)


def make_tiny_encoder(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    vocab_size = _write_bert_tokenizer(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 16,
                                                                 "pooling_mode_mean_tokens": True}))  # fmt: skip
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    return folder


def make_tiny_classifier(folder: Path, labels: tuple[str, ...] = ("negative", "neutral", "positive"),
                         seed: int = 0) -> Path:  # fmt: skip
    """A random BertForSequenceClassification (no sentence-transformers files): with one label it
    is a cross-encoder, as sentence-transformers' CrossEncoder models are (scores pairs)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    vocab_size = _write_bert_tokenizer(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
                        initializer_range=0.3)  # wide weights: scores far apart, orderings unambiguous  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def make_tiny_cross_encoder(folder: Path, seed: int = 1) -> Path:
    return make_tiny_classifier(folder, labels=("LABEL_0",), seed=seed)
