"""Tiny stand-ins for THUDM's published remote code (ChatGLM-6B = generation 1, ChatGLM2-6B = 2,
ChatGLM3-6B = 3, GLM-4-9B-chat's first code = 4), built in a temp folder by `make_thudm_chatglm`
and written here from scratch for issue 13 (generation 4 later).  They keep the *shape* of that
code where transformers 5 broke it, so the compatibility layer in adapters/chatglm_compat/ can be
tested without THUDM's files:
- tokenizer: generation 1 calls `super().__init__` before it builds `self.sp_tokenizer`, which its
  `vocab_size` / `get_vocab` need; `_pad` has no `padding_side`; generation 3's
  `build_chat_input` calls `batch_encode_plus`;
- model: inherits PreTrainedModel only (no GenerationMixin); generation 1 never calls
  `post_init()`; generations 2/3 read `config.max_length` and `config.use_cache`; its own
  `stream_generate` calls `_get_logits_processor`, `_get_stopping_criteria` (which reads
  `generation_config._eos_token_tensor`) and `_get_logits_warper`; its
  `_update_model_kwargs_for_generation` calls `_extract_past_from_model_output` (generation 1:
  the old one-value form, 2/3: `cache_name, cache = ...`); `chat()` goes through `generate()`
  with a config that says `num_layers`, not `num_hidden_layers`, and a tuple-of-tensors KV cache;
  generation 1 makes its own 2-D (position, block position) ids when given none, and its
  tokenizer returns masks and positions only when it pads;
- generation 4 (GLM-4-9B-chat): a tiktoken tokenizer (`ChatGLM4Tokenizer`, one rank per byte
  here) whose own `apply_chat_template` calls `batch_encode_plus`, specials as added tokens;
  `chat` / `stream_chat` take a `role` and build the prompt with that apply_chat_template, stop at
  <|endoftext|>, <|user|> or <|observation|>, and keep the one-value `_extract_past_from_model_output`.
"""

from __future__ import annotations

import json
from pathlib import Path

_THUDM_CONFIGURATION = '''
from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(self, vocab_size=128, hidden_size=32, num_layers=2, seq_length=256, eos_token_id=2,
                 bos_token_id=1, pad_token_id=0, **kwargs):
        self.vocab_size = vocab_size
        self.padded_vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.seq_length = seq_length
        super().__init__(eos_token_id=eos_token_id, bos_token_id=bos_token_id, pad_token_id=pad_token_id, **kwargs)
'''

_THUDM_TOKENIZATION = '''
import json

from transformers import PreTrainedTokenizer
from transformers.tokenization_utils_base import BatchEncoding, EncodedInput
from transformers.utils import PaddingStrategy

GENERATION = {generation}


class CharPieces:
    """One piece per character (plus named specials), read from a JSON list."""

    def __init__(self, vocab_file):
        with open(vocab_file, encoding="utf-8") as f:
            self.pieces = json.load(f)
        self.ids = {{p: i for i, p in enumerate(self.pieces)}}
        self.num_tokens = len(self.pieces)

    def tokenize(self, text):
        return [c if c in self.ids else "<unk>" for c in text]

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.pieces[key]
        return self.ids.get(key, 0)


class ChatGLMTokenizer(PreTrainedTokenizer):
    vocab_files_names = {{"vocab_file": "pieces.json"}}
    model_input_names = ["input_ids", "attention_mask", "position_ids"]

    def __init__(self, vocab_file, padding_side="left", **kwargs):
        kwargs.setdefault("eos_token", "</s>")
        kwargs.setdefault("bos_token", "<s>")
        kwargs.setdefault("unk_token", "<unk>")
        kwargs.setdefault("pad_token", "<unk>")
{init_body}

    @property
    def vocab_size(self):
        return self.sp_tokenizer.num_tokens

    def get_vocab(self):
        vocab = {{self._convert_id_to_token(i): i for i in range(self.vocab_size)}}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text, **kwargs):
        return self.sp_tokenizer.tokenize(text)

    def _convert_token_to_id(self, token):
        return self.sp_tokenizer[token]

    def _convert_id_to_token(self, index):
        return self.sp_tokenizer[index]

    def convert_tokens_to_string(self, tokens):
        return "".join(t for t in tokens if self.sp_tokenizer[t] >= {num_specials})  # specials are not text

    def get_command(self, token):
        return self.sp_tokenizer[token]

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = [self.get_command("[gMASK]"), self.get_command("sop")] + token_ids_0
        if token_ids_1 is not None:
            ids = ids + token_ids_1 + [self.get_command("</s>")]
        return ids

    def build_prompt(self, query, history=None):
        prompt = ""
        for i, (old_query, response) in enumerate(history or [], start=1):
            prompt += "[Round {{}}]\\n\\n问：{{}}\\n\\n答：{{}}\\n\\n".format(i, old_query, response)
        return prompt + "[Round {{}}]\\n\\n问：{{}}\\n\\n答：".format(len(history or []) + 1, query)

    if GENERATION == 3:  # only ChatGLM3's tokenizer has it (the adapter picks the history style by it)
        def build_chat_input(self, query, history=None, role="user"):
            ids = [self.get_command("[gMASK]"), self.get_command("sop")]
            for item in history or []:
                ids += [self.get_command("<|" + item["role"] + "|>")] + self.convert_tokens_to_ids(
                    self.sp_tokenizer.tokenize("\\n" + item["content"]))
            ids += [self.get_command("<|" + role + "|>")] + self.convert_tokens_to_ids(
                self.sp_tokenizer.tokenize("\\n" + query))
            ids += [self.get_command("<|assistant|>")]
            return self.batch_encode_plus([ids], return_tensors="pt", is_split_into_words=True)

    def _pad(self, encoded_inputs, max_length=None, padding_strategy=PaddingStrategy.DO_NOT_PAD,
             pad_to_multiple_of=None, return_attention_mask=None):
        # the signature of transformers 4.3x: no padding_side
        assert self.padding_side == "left"
        if GENERATION == 1 and max_length is None:
            return encoded_inputs  # ChatGLM-6B: masks and positions only when it pads
        required_input = encoded_inputs[self.model_input_names[0]]
        seq_length = len(required_input)
        if padding_strategy == PaddingStrategy.LONGEST:
            max_length = len(required_input)
        needs_to_be_padded = padding_strategy != PaddingStrategy.DO_NOT_PAD and seq_length != max_length
        if "attention_mask" not in encoded_inputs:
            encoded_inputs["attention_mask"] = [1] * seq_length
        if "position_ids" not in encoded_inputs:
            encoded_inputs["position_ids"] = list(range(seq_length))
        if needs_to_be_padded:
            difference = max_length - seq_length
            encoded_inputs["attention_mask"] = [0] * difference + encoded_inputs["attention_mask"]
            encoded_inputs["position_ids"] = [0] * difference + encoded_inputs["position_ids"]
            encoded_inputs[self.model_input_names[0]] = [self.pad_token_id] * difference + required_input
        return encoded_inputs

    def save_vocabulary(self, save_directory, filename_prefix=None):
        return ()
'''

_THUDM_MODELING = '''
"""A tiny model with the generation code of THUDM's ChatGLM (old transformers APIs)."""
import copy
from typing import Any, Dict

import torch
from torch import nn
from transformers.generation.logits_process import LogitsProcessor
from transformers.generation.utils import GenerationConfig, LogitsProcessorList, ModelOutput, StoppingCriteriaList
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_chatglm import ChatGLMConfig

GENERATION = {generation}


class InvalidScoreLogitsProcessor(LogitsProcessor):
    def __call__(self, input_ids, scores):
        if torch.isnan(scores).any() or torch.isinf(scores).any():
            scores.zero_()
            scores[..., 5] = 5e4
        return scores


class Layer(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x, past, mask):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        scores = q @ k.transpose(1, 2) / k.shape[-1] ** 0.5
        n, m = q.shape[1], k.shape[1]
        causal = torch.ones(n, m, dtype=torch.bool, device=x.device).tril(m - n)
        if mask is not None:
            causal = causal & mask[:, None, -m:].bool()
        scores = scores.masked_fill(~causal, float("-inf"))
        return x + self.out(torch.softmax(scores, -1) @ v), (k, v)


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"

    def _init_weights(self, module):
        return


class ChatGLMForConditionalGeneration(ChatGLMPreTrainedModel):
    def __init__(self, config, empty_init=True, device=None):
        super().__init__(config)
        if GENERATION >= 2:
            self.max_sequence_length = config.max_length
        self.embedding = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.seq_length, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config.hidden_size) for _ in range(config.num_layers))
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.config = config
        # ChatGLM-6B never calls self.post_init(); ChatGLM2/3 neither (kept for the generation-1 break)

    def get_position_ids(self, input_ids, device):
        batch_size, seq_length = input_ids.shape
        position_ids = torch.arange(seq_length, dtype=torch.long, device=device).unsqueeze(0).repeat(batch_size, 1)
        if GENERATION == 1:  # ChatGLM-6B: 2-D positions (position, block position)
            position_ids = torch.stack([position_ids, torch.zeros_like(position_ids)], dim=1)
        return position_ids

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, past_key_values=None,
                use_cache=None, return_dict=None, return_last_logit=False, **kwargs):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if position_ids is None:
            position_ids = self.get_position_ids(input_ids, input_ids.device)
        if GENERATION == 1:
            position_ids = position_ids[:, 0, :]  # (batch, 2, seq); the block positions are unused here
        hidden = self.embedding(input_ids) + self.position(position_ids)
        presents = ()
        for i, layer in enumerate(self.layers):
            hidden, present = layer(hidden, past_key_values[i] if past_key_values else None, attention_mask)
            presents += (present,)
        if return_last_logit:
            hidden = hidden[:, -1:]
        logits = self.output_layer(hidden)
        return CausalLMOutputWithPast(logits=logits, past_key_values=presents if use_cache else None)

    def _update_model_kwargs_for_generation(self, outputs: ModelOutput, model_kwargs: Dict[str, Any],
                                            is_encoder_decoder: bool = False,
                                            standardize_cache_format: bool = False) -> Dict[str, Any]:
{extract_past}
        if "attention_mask" in model_kwargs:
            attention_mask = model_kwargs["attention_mask"]
            model_kwargs["attention_mask"] = torch.cat(
                [attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=-1)
        if "position_ids" in model_kwargs:
            position_ids = model_kwargs["position_ids"]
            new_position_id = position_ids[..., -1:].clone() + 1
            model_kwargs["position_ids"] = torch.cat([position_ids, new_position_id], dim=-1)
        model_kwargs["is_first_forward"] = False
        return model_kwargs

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      position_ids=None, use_cache=None, is_first_forward=True, **kwargs):
        if position_ids is None:
            position_ids = self.get_position_ids(input_ids, device=input_ids.device)
        if not is_first_forward and past_key_values is not None:
            position_ids = position_ids[..., -1:]
            input_ids = input_ids[:, -1:]
        return {{"input_ids": input_ids, "past_key_values": past_key_values, "position_ids": position_ids,
                "attention_mask": attention_mask, "return_last_logit": True, "use_cache": use_cache}}

    def process_response(self, response):
        return response.strip()

    def build_inputs(self, tokenizer, query, history=None, role="user"):
        if GENERATION == 4:  # GLM-4-9B-chat: the tokenizer's own apply_chat_template
            return tokenizer.apply_chat_template(history + [{{"role": role, "content": query}}],
                                                 add_generation_prompt=True, tokenize=True, return_tensors="pt",
                                                 return_dict=True).to(self.device)
        if GENERATION == 3:
            return tokenizer.build_chat_input(query, history=history).to(self.device)
        return tokenizer([tokenizer.build_prompt(query, history=history)], return_tensors="pt").to(self.device)

    def eos_ids(self, tokenizer):
        if GENERATION == 4:  # GLM-4-9B-chat stops at <|endoftext|>, <|user|> and <|observation|>
            return [tokenizer.eos_token_id] + tokenizer.convert_tokens_to_ids(["<|user|>", "<|observation|>"])
        return [tokenizer.eos_token_id]

    def eos_kwargs(self, tokenizer):
        return {{"eos_token_id": self.eos_ids(tokenizer)}} if GENERATION == 4 else {{}}

    def _history_item(self, query, response):
        if GENERATION >= 3:
            return [{{"role": "user", "content": query}}, {{"role": "assistant", "content": response}}]
        return [(query, response)]

    @torch.inference_mode()
    def chat(self, tokenizer, query, history=None,{role_param} max_length=8192, num_beams=1, do_sample=True,
             top_p=0.8, temperature=0.8, logits_processor=None, **kwargs):
        history = list(history or [])
        logits_processor = logits_processor if logits_processor is not None else LogitsProcessorList()
        logits_processor.append(InvalidScoreLogitsProcessor())
        gen_kwargs = {{"max_length": max_length, "num_beams": num_beams, "do_sample": do_sample, "top_p": top_p,
                      "temperature": temperature, "logits_processor": logits_processor, **kwargs}}
        inputs = self.build_inputs(tokenizer, query, history=history{role_arg})
        gen_kwargs.update(self.eos_kwargs(tokenizer))
        outputs = self.generate(**inputs, **gen_kwargs)
        outputs = outputs.tolist()[0][len(inputs["input_ids"][0]):]
        if outputs and outputs[-1] in self.eos_ids(tokenizer):
            outputs = outputs[:-1]
        response = self.process_response(tokenizer.decode(outputs))
        return response, history + self._history_item(query, response)

    @torch.inference_mode()
    def stream_chat(self, tokenizer, query, history=None,{role_param} max_length=8192, do_sample=True,
                    top_p=0.8, temperature=0.8, logits_processor=None, **kwargs):
        history = list(history or [])
        logits_processor = logits_processor if logits_processor is not None else LogitsProcessorList()
        logits_processor.append(InvalidScoreLogitsProcessor())
        gen_kwargs = {{"max_length": max_length, "do_sample": do_sample, "top_p": top_p, "temperature": temperature,
                      "logits_processor": logits_processor, **kwargs}}
        inputs = self.build_inputs(tokenizer, query, history=history{role_arg})
        gen_kwargs.update(self.eos_kwargs(tokenizer))
        for outputs in self.stream_generate(**inputs, **gen_kwargs):
            outputs = outputs.tolist()[0][len(inputs["input_ids"][0]):]
            if outputs and outputs[-1] in self.eos_ids(tokenizer):
                outputs = outputs[:-1]
            response = tokenizer.decode(outputs)
            if response and response[-1] != "\\ufffd":
                response = self.process_response(response)
                yield response, history + self._history_item(query, response)

    @torch.inference_mode()
    def stream_generate(self, input_ids, generation_config=None, logits_processor=None, stopping_criteria=None,
                        prefix_allowed_tokens_fn=None, **kwargs):
        batch_size, input_ids_seq_length = input_ids.shape[0], input_ids.shape[-1]
        if generation_config is None:
            generation_config = self.generation_config
        generation_config = copy.deepcopy(generation_config)
        model_kwargs = generation_config.update(**kwargs)
        model_kwargs["use_cache"] = generation_config.use_cache
        eos_token_id = generation_config.eos_token_id
        if isinstance(eos_token_id, int):
            eos_token_id = [eos_token_id]
        if generation_config.max_new_tokens is not None:
            generation_config.max_length = generation_config.max_new_tokens + input_ids_seq_length
        logits_processor = logits_processor if logits_processor is not None else LogitsProcessorList()
        stopping_criteria = stopping_criteria if stopping_criteria is not None else StoppingCriteriaList()
        logits_processor = self._get_logits_processor(
            generation_config=generation_config, input_ids_seq_length=input_ids_seq_length,
            encoder_input_ids=input_ids, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
            logits_processor=logits_processor)
        stopping_criteria = self._get_stopping_criteria(
            generation_config=generation_config, stopping_criteria=stopping_criteria)
        logits_warper = self._get_logits_warper(generation_config)
        unfinished_sequences = input_ids.new(input_ids.shape[0]).fill_(1)
        scores = None
        while True:
            model_inputs = self.prepare_inputs_for_generation(input_ids, **model_kwargs)
            outputs = self(**model_inputs, return_dict=True, output_attentions=False, output_hidden_states=False)
            next_token_logits = outputs.logits[:, -1, :]
            next_token_scores = logits_processor(input_ids, next_token_logits)
            next_token_scores = logits_warper(input_ids, next_token_scores)
            probs = nn.functional.softmax(next_token_scores, dim=-1)
            if generation_config.do_sample:
                next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
            else:
                next_tokens = torch.argmax(probs, dim=-1)
            input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
            model_kwargs = self._update_model_kwargs_for_generation(
                outputs, model_kwargs, is_encoder_decoder=self.config.is_encoder_decoder)
            unfinished_sequences = unfinished_sequences.mul((sum(next_tokens != i for i in eos_token_id)).long())
            yield input_ids
            if unfinished_sequences.max() == 0 or stopping_criteria(input_ids, scores):
                break
'''

_THUDM4_TOKENIZATION = '''
"""GLM-4-9B-chat's tokenizer, in shape: a tiktoken vocabulary (`base64 rank` lines) built before the
base class's __init__, special tokens as added tokens after its ranks, its own apply_chat_template
that calls batch_encode_plus, a _pad of the transformers 4.3x signature."""
import base64

import tiktoken
from transformers import PreTrainedTokenizer
from transformers.utils import PaddingStrategy

PATTERN = r"\\s+(?!\\S)|\\s+|\\S+"


class ChatGLM4Tokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask", "position_ids"]

    def __init__(self, vocab_file, padding_side="left", clean_up_tokenization_spaces=False, **kwargs):
        self.vocab_file = vocab_file
        ranks = {}
        with open(vocab_file) as f:
            for line in f:
                token, rank = line.strip().split()
                ranks[base64.b64decode(token)] = int(rank)
        self.mergeable_ranks = ranks
        self.tokenizer = tiktoken.Encoding(name="tiny_glm4", pat_str=PATTERN, mergeable_ranks=ranks,
                                           special_tokens={})
        self.decoder = {rank: token for token, rank in ranks.items()}
        self.n_words = len(self.decoder)
        super().__init__(padding_side=padding_side, clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                         **kwargs)

    @property
    def vocab_size(self):
        return self.n_words

    def get_vocab(self):
        vocab = {self._convert_id_to_token(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def convert_tokens_to_string(self, tokens):
        text, pending = "", b""
        for t in tokens:
            if isinstance(t, str):
                text += pending.decode("utf-8", errors="replace") + t
                pending = b""
            else:
                pending += t
        return text + pending.decode("utf-8", errors="replace")

    def _tokenize(self, text, **kwargs):
        return [self.decoder[t] for t in self.tokenizer.encode(text, disallowed_special=())]

    def _convert_token_to_id(self, token):
        return self.mergeable_ranks[token]

    def _convert_id_to_token(self, index):
        return self.decoder[index]

    def get_prefix_tokens(self):
        return [self.convert_tokens_to_ids("[gMASK]"), self.convert_tokens_to_ids("<sop>")]

    def build_single_message(self, role, metadata, message):
        return ([self.convert_tokens_to_ids("<|" + role + "|>")]
                + self.tokenizer.encode(metadata + "\\n", disallowed_special=())
                + self.tokenizer.encode(message, disallowed_special=()))

    def apply_chat_template(self, conversation, add_generation_prompt=False, tokenize=True, padding=False,
                            truncation=False, max_length=None, return_tensors=None, return_dict=False,
                            add_special_tokens=True, **kwargs):
        ids = self.get_prefix_tokens() if add_special_tokens else []
        for item in conversation:
            if item["content"]:
                ids += self.build_single_message(item["role"], item.get("metadata", ""), item["content"])
        if add_generation_prompt:
            ids.append(self.convert_tokens_to_ids("<|assistant|>"))
        if not tokenize:
            return self.decode(ids)
        output = self.batch_encode_plus([ids], padding=padding, truncation=truncation, max_length=max_length,
                                        return_tensors=return_tensors, is_split_into_words=True,
                                        add_special_tokens=False)
        return output if return_dict else output["input_ids"]

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = self.get_prefix_tokens() + token_ids_0
        if token_ids_1 is not None:
            ids = ids + token_ids_1 + [self.convert_tokens_to_ids("<eos>")]
        return ids

    def _pad(self, encoded_inputs, max_length=None, padding_strategy=PaddingStrategy.DO_NOT_PAD,
             pad_to_multiple_of=None, return_attention_mask=None):
        # the signature of transformers 4.3x: no padding_side
        assert self.padding_side == "left"
        required_input = encoded_inputs[self.model_input_names[0]]
        seq_length = len(required_input)
        if padding_strategy == PaddingStrategy.LONGEST:
            max_length = seq_length
        if "attention_mask" not in encoded_inputs:
            encoded_inputs["attention_mask"] = [1] * seq_length
        if "position_ids" not in encoded_inputs:
            encoded_inputs["position_ids"] = list(range(seq_length))
        if padding_strategy != PaddingStrategy.DO_NOT_PAD and seq_length != max_length:
            difference = max_length - seq_length
            encoded_inputs["attention_mask"] = [0] * difference + encoded_inputs["attention_mask"]
            encoded_inputs["position_ids"] = [0] * difference + encoded_inputs["position_ids"]
            encoded_inputs[self.model_input_names[0]] = [self.pad_token_id] * difference + required_input
        return encoded_inputs

    def save_vocabulary(self, save_directory, filename_prefix=None):
        return ()
'''

# ChatGLM-6B: the base class first, its vocabulary afterwards; ChatGLM2/3: the other way round
_INIT_VOCAB_AFTER = """        super().__init__(padding_side=padding_side, **kwargs)
        self.vocab_file = vocab_file
        self.sp_tokenizer = CharPieces(vocab_file)"""
_INIT_VOCAB_FIRST = """        self.vocab_file = vocab_file
        self.sp_tokenizer = CharPieces(vocab_file)
        super().__init__(padding_side=padding_side, **kwargs)"""

# transformers < 4.42 returned the cache; 4.42+ returned (cache_name, cache)
_EXTRACT_PAST_OLD = """        model_kwargs["past_key_values"] = self._extract_past_from_model_output(
            outputs, standardize_cache_format=standardize_cache_format)"""
_EXTRACT_PAST_NEW = """        cache_name, cache = self._extract_past_from_model_output(
            outputs, standardize_cache_format=standardize_cache_format)
        model_kwargs[cache_name] = cache"""

THUDM_SPECIALS = ["<unk>", "<s>", "</s>", "[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>"]
_THUDM_CHARS = [chr(c) for c in range(32, 127)] + list("\n问答：，。")


# GLM-4-9B-chat's special tokens, in its order, after the tiktoken ranks (here: the 256 bytes)
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>"]  # fmt: skip


def _write_glm4_vocabulary(folder: Path) -> tuple[int, int, list[int]]:
    """tokenizer.model (one rank per byte, GLM-4's `base64 rank` format) and tokenizer_config.json with
    the specials as added tokens after the ranks; returns (vocabulary size, pad id, eos ids)."""
    import base64

    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    (folder / "tokenizer.model").write_text("\n".join(lines) + "\n")
    ids = {token: 256 + i for i, token in enumerate(GLM4_SPECIALS)}
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in ids.items()}  # fmt: skip
    tokenizer_config = {"auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
                        "tokenizer_class": "ChatGLM4Tokenizer", "added_tokens_decoder": added,
                        "additional_special_tokens": GLM4_SPECIALS, "eos_token": "<|endoftext|>",
                        "pad_token": "<|endoftext|>", "padding_side": "left"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    return 256 + len(GLM4_SPECIALS), ids["<|endoftext|>"], eos


def make_thudm_chatglm(folder: Path, generation: int, seed: int = 0) -> Path:
    """A tiny checkpoint whose remote code uses the old transformers APIs of THUDM's ChatGLM-6B
    (`generation=1`), ChatGLM2-6B (2), ChatGLM3-6B (3) or GLM-4-9B-chat (4: its first published
    code, with `chat` / `stream_chat(..., role=...)` over the tiktoken tokenizer's own
    `apply_chat_template`); see the module docstring."""
    import torch
    from safetensors.torch import save_file

    assert generation in (1, 2, 3, 4)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_chatglm.py").write_text(_THUDM_CONFIGURATION)
    if generation == 4:
        vocab, pad, eos = _write_glm4_vocabulary(folder)
        (folder / "tokenization_chatglm.py").write_text(_THUDM4_TOKENIZATION)
    else:
        pieces = THUDM_SPECIALS + _THUDM_CHARS
        vocab, pad, eos = len(pieces), 0, 2
        (folder / "pieces.json").write_text(json.dumps(pieces, ensure_ascii=False))
        init_body = _INIT_VOCAB_AFTER if generation == 1 else _INIT_VOCAB_FIRST
        tokenization = _THUDM_TOKENIZATION.format(generation=generation, num_specials=len(THUDM_SPECIALS),
                                                  init_body=init_body)  # fmt: skip
        (folder / "tokenization_chatglm.py").write_text(tokenization)
    # GLM-4-9B-chat's first code keeps the one-value form (ChatGLM3's was updated for transformers 4.42)
    extract_past = _EXTRACT_PAST_NEW if generation in (2, 3) else _EXTRACT_PAST_OLD
    role = generation == 4  # GLM-4-9B-chat's chat / stream_chat take the new message's role
    modeling = _THUDM_MODELING.format(generation=generation, extract_past=extract_past,
                                      role_param=' role="user",' if role else "",
                                      role_arg=", role=role" if role else "")  # fmt: skip
    (folder / "modeling_chatglm.py").write_text(modeling)
    hidden, layers, seq = 32, 2, 256
    auto_model = "modeling_chatglm.ChatGLMForConditionalGeneration"
    config = {
        "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig", "AutoModel": auto_model,
                     "AutoModelForCausalLM": auto_model, "AutoModelForSeq2SeqLM": auto_model},
        "vocab_size": vocab, "hidden_size": hidden, "num_layers": layers, "seq_length": seq,
        "eos_token_id": eos, "bos_token_id": 1, "pad_token_id": pad, "use_cache": True, "torch_dtype": "float32",
    }  # fmt: skip
    if generation == 1:
        config["max_sequence_length"] = seq
    (folder / "config.json").write_text(json.dumps(config))
    if generation != 4:
        tokenizer_config = {"auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
                            "tokenizer_class": "ChatGLMTokenizer", "padding_side": "left"}  # fmt: skip
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    torch.manual_seed(seed)
    weights = {"embedding.weight": torch.randn(vocab, hidden), "position.weight": torch.randn(seq, hidden) * 0.1,
               "output_layer.weight": torch.randn(vocab, hidden) * 0.5}  # fmt: skip
    for i in range(layers):
        weights[f"layers.{i}.qkv.weight"] = torch.randn(3 * hidden, hidden) * 0.3
        weights[f"layers.{i}.qkv.bias"] = torch.zeros(3 * hidden)
        weights[f"layers.{i}.out.weight"] = torch.randn(hidden, hidden) * 0.3
        weights[f"layers.{i}.out.bias"] = torch.zeros(hidden)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
