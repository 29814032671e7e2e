"""Generic Hugging Face causal LM: a safetensors folder or a GGUF file, prompted with the
tokenizer's own chat template, decoded in batches over the model's KV cache (adapters/hf_batch.py)."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import DynamicCache, DynamicLayer

from adapters.base import ModelAdapter, ModelLoadError, UnsupportedParameter
from adapters.detokenize import IncrementalDetokenizer
from adapters.gguf_cache import convert_gguf
from adapters.guidance import Grammars, hf_grammars
from adapters.hf_batch import HfDecodeBatch
from adapters.memory import KV_CACHE_SHARE, MB, PREFIX_CACHE_SHARE, budget_bytes
from adapters.prefix_cache import PrefixCache
from adapters.templates import Template, default_template, get_template
from adapters.tools import as_text_turns, choice_hint, template_dicts, tool_instructions
from protocol import ChatMessage, with_system_text

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(wanted: str) -> torch.device:
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX tiles): there bf16 halves
    the memory traffic of every matrix product at no extra cost, elsewhere oneDNN emulates it
    (slower than float32)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(torch.cpu, probe, lambda: False)() for probe in probes):
        return True
    try:  # a torch without the probes: ask the kernel
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_dtype(wanted: str, device: torch.device, cpu_bf16: bool = True) -> torch.dtype:
    """The models file's dtype; for `auto` the fastest accurate one for the device: bfloat16 on
    CUDA devices that have it (else float16) and, unless `cpu_bf16` is False, on CPUs with native
    bf16; else float32."""
    if wanted != "auto":
        return _DTYPES[wanted]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16 and device.type == "cpu" and cpu_has_native_bf16() else torch.float32


class HfCausalAdapter(ModelAdapter):
    name = "hf-causal"

    def load(self) -> None:
        started = time.monotonic()
        path = self._model_path()
        folder = convert_gguf(path, self.cache_dir) if path.suffix == ".gguf" else path
        self.device = pick_device(self.spec.device)
        dtype = pick_dtype(self.spec.dtype, self.device)
        remote = self.spec.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
        extra = {"attn_implementation": attention} if (attention := self._attention(remote)) else {}
        if self.spec.device_map:  # accelerate spreads the layers over the devices it finds
            self.model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, trust_remote_code=remote, device_map=self.spec.device_map, **extra
            )
            self.device = self.model.get_input_embeddings().weight.device  # where inputs go
        else:
            self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=remote, **extra)
            self.model.to(self.device)
        self.model.eval()
        self.template = self._pick_template()
        self._eos_ids = self._find_eos_ids()
        # transformers 5.x renamed `past_key_values` to `cache`; support both.
        forward_params = inspect.signature(self.model.forward).parameters
        self._forward_kwargs: dict[str, str | int] = {
            "cache": "cache" if "cache" in forward_params else "past_key_values"
        }
        for name in ("logits_to_keep", "num_logits_to_keep"):  # skip logits nobody samples from
            if name in forward_params:
                self._forward_kwargs[name] = 1
                break
        self._mergeable_cache = self._cache_is_plain_dynamic()
        self._context_length = self._find_context_length()
        self.kv_bytes_per_token = self._kv_bytes_per_token()
        kv_bytes = budget_bytes(self.spec.kv_cache_mb, KV_CACHE_SHARE, self.device)
        self._kv_budget = max(1, kv_bytes // self.kv_bytes_per_token) if self.kv_bytes_per_token else None
        self._grammars: Grammars | None = None
        self._prefixes = None
        if self._mergeable_cache and self.spec.prefix_cache:
            self._prefixes = PrefixCache(budget_bytes(self.spec.prefix_cache_mb, PREFIX_CACHE_SHARE, self.device))
        log.info(
            "loaded %s (%s, %s on %s, context %d) in %.1f s; KV cache: %d bytes a token, room for %s tokens; "
            "prefix cache: %s",
            self.spec.name, self.model.config.model_type, dtype, self.device, self._context_length,
            time.monotonic() - started, self.kv_bytes_per_token, self._kv_budget,
            f"{self._prefixes.max_bytes / MB:.0f} MB" if self._prefixes is not None else "off",
        )  # fmt: skip

    def _model_path(self) -> Path:
        """The models file's path for this model; ModelLoadError when nothing is there."""
        path = self.spec.path
        if path is None or not path.exists():
            raise ModelLoadError(f"model {self.spec.name!r}: {path} does not exist (see README: make model)")
        return path

    def _attention(self, remote: bool) -> str | None:
        """The attention kernel: the models file's `options.attn_implementation`, else "eager"
        (remote code keeps its own).  transformers' default, PyTorch's fused SDPA, gives a row
        results that depend on how much left padding its batch has (an ulp off in bfloat16 on
        CPUs and GPUs: enough to change a greedy reply), and with a padding mask it is slower:
        a decode step of a 0.6B Llama on an H100 took 55-146 ms with SDPA and 17-30 ms eager
        across runs, SmolLM2-135M on two CPU cores 50 against 33 ms (16 rows, bf16; at one row
        eager is ~7 % slower).  The plain matmul-softmax-matmul gives each row the same result
        whatever its neighbours (tests/unit/test_chunked_prefill.py, scripts/gpu_check.py)."""
        chosen = self.spec.options.get("attn_implementation")
        return chosen if chosen or remote else "eager"

    def _kv_bytes_per_token(self) -> int:
        """What one more token adds to a row's KV cache: keys and values of every layer, read off
        the config.  (Not measured with a forward pass: one run on the loading thread leaves the
        engine thread's forward passes about 40% slower on CPU, as two OpenMP thread teams then
        compete for the cores.)"""
        config = self.model.config.get_text_config()
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        itemsize = torch.empty((), dtype=self.model.dtype).element_size()
        return int(config.num_hidden_layers * 2 * heads * head_dim * itemsize)

    @property
    def kv_budget_tokens(self) -> int | None:
        return self._kv_budget

    @property
    def grammars(self) -> Grammars | None:
        """A fast (Rust) tokenizer's vocabulary is what llguidance reads; slow ones cannot be."""
        if self._grammars is None and getattr(self.tokenizer, "is_fast", False):
            self._grammars = hf_grammars(self.tokenizer, self.vocab_size, self.eos_ids)
        return self._grammars

    def cache_stats(self) -> dict[str, int]:
        stats = {"kv_bytes_per_token": self.kv_bytes_per_token}
        if self._grammars is not None:
            stats.update(self._grammars.stats())
        if self._prefixes is not None:
            stats.update(prefix_cache_bytes=self._prefixes.bytes, prefix_cache_limit_bytes=self._prefixes.max_bytes,
                         prefix_cache_hits=self._prefixes.hits, prefix_cache_misses=self._prefixes.misses)  # fmt: skip
        return stats

    def _pick_template(self) -> Template | None:
        """A named template when the models file asks for one or the tokenizer has none; else None
        (the tokenizer's own chat template is used)."""
        if self.spec.template:
            try:
                return get_template(self.spec.template)
            except KeyError as exc:
                raise ModelLoadError(f"model {self.spec.name!r}: {exc.args[0]}") from None
        if self.tokenizer.chat_template:
            return None
        template = default_template(getattr(self._model_config(), "model_type", None))
        log.warning("%s has no chat template; using the %r template", self.spec.name, template.name)
        return template

    def _model_config(self) -> Any:
        """The model's config (HfPromptAdapter: read without the weights)."""
        return self.model.config

    def _generation_config(self) -> Any:
        return self.model.generation_config

    @property
    def chat_stops(self) -> tuple[str, ...]:
        return self.template.stop if self.template else ()

    def _new_cache(self) -> DynamicCache:
        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers: layers are created lazily
            return DynamicCache()

    def _cache_is_plain_dynamic(self) -> bool:
        """Rows can join a running batch only when every layer keeps a plain, growing KV cache
        (sliding-window or recurrent layers would need their own merge rules)."""
        return all(type(layer) is DynamicLayer for layer in getattr(self._new_cache(), "layers", []))

    def _find_eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self._generation_config().eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return frozenset(ids)

    def _find_context_length(self) -> int:
        native = getattr(self._model_config(), "max_position_embeddings", None) or 2048
        return min(native, self.spec.max_context) if self.spec.max_context else native

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def native_tools(self) -> bool:
        """Whether the tokenizer's own chat template renders `tools`."""
        return self.template is None and "tools" in str(self.tokenizer.chat_template or "")

    def chat_prompt(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] | None = None,
                    tool_choice: str | None = None, add_generation_prompt: bool = True) -> list[int]:  # fmt: skip
        """`add_generation_prompt` False (/tokenize's): the chat as it stands, for the tokenizer's
        own template (a named template always ends with the assistant's turn)."""
        native = self.native_tools
        extra: dict[str, Any] = {}
        if tools and native:
            extra["tools"] = [{"type": "function", "function": t} for t in tools]
            if hint := choice_hint(tool_choice):
                messages = with_system_text(messages, hint.strip())
        elif tools:
            messages = with_system_text(messages, tool_instructions(tools, tool_choice))
        if not native:
            messages = as_text_turns(messages)
        if self.template is not None:
            if not add_generation_prompt:
                raise UnsupportedParameter("add_generation_prompt", self.spec.name, "can only be true for model")
            text = self.template.render(messages)
        else:
            text = self.tokenizer.apply_chat_template(template_dicts(messages), tokenize=False,
                                                      add_generation_prompt=add_generation_prompt, **extra)  # fmt: skip
        # The template already wrote any BOS it wants; do not let the tokenizer add another.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def text_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id]  # an empty prompt: generate from the start of a text
        return ids

    def default_sampling(self) -> dict[str, float]:
        config = self._generation_config()
        if not getattr(config, "do_sample", False):
            return {}  # transformers' class defaults (temperature 1.0 ...) are no recommendation
        return {k: v for k in ("temperature", "top_p") if isinstance(v := getattr(config, k, None), (int, float))}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def token_texts(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]

    def token_strs(self, ids: list[int]) -> list[str]:
        return [str(piece) for piece in self.tokenizer.convert_ids_to_tokens(ids)]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    @property
    def eos_ids(self) -> frozenset[int]:
        return self._eos_ids

    def detokenizer(self, prompt_ids: list[int]) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, prompt_ids)

    def new_batch(self) -> HfDecodeBatch:
        batch = HfDecodeBatch(self.model, self.device, dict(self._forward_kwargs), self._new_cache, self._prefixes)
        if not self._mergeable_cache:
            batch.max_rows = 1
        return batch

