"""The prompting half of a Hugging Face causal LM, for engines that run the weights themselves (a
llama.cpp or vLLM server the worker owns): its tokenizer, chat template, tools, stops, end-of-text
ids and context length, without loading the weights into this process.  GGUF files are read for
their tokenizer and config only (kept in the cache folder after the first time)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any

from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from adapters.gguf_cache import converted_dir, is_complete
from adapters.hf_causal import HfCausalAdapter

log = logging.getLogger(__name__)


class HfPromptAdapter(HfCausalAdapter):
    """Everything of HfCausalAdapter that needs no weights; it never decodes (`new_batch` raises)."""

    name = "hf-prompts"

    def load(self) -> None:
        started = time.monotonic()
        path = self._model_path()
        remote = self.spec.trust_remote_code
        folder = _gguf_prompting_folder(path, self.cache_dir) if path.suffix == ".gguf" else path
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
        self.config = AutoConfig.from_pretrained(folder, trust_remote_code=remote)
        try:
            self.generation_config: Any = GenerationConfig.from_pretrained(folder)
        except OSError:  # no generation_config.json: the model recommends nothing
            self.generation_config = GenerationConfig.from_model_config(self.config)
        self.model = None
        self.template = self._pick_template()
        self._eos_ids = self._find_eos_ids()
        self._context_length = self._find_context_length()
        self._grammars = None
        self._prefixes = None
        self.kv_bytes_per_token = 0
        log.info("prompting for %s ready (tokenizer and template, context %d) in %.1f s", self.spec.name,
                 self._context_length, time.monotonic() - started)  # fmt: skip

    def _model_config(self) -> Any:
        return self.config

    def _generation_config(self) -> Any:
        return self.generation_config

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def grammars(self) -> None:
        return None  # masks need the logits, which stay in the engine's process

    def cache_stats(self) -> dict[str, int]:
        return {}

    def new_batch(self) -> Any:
        raise NotImplementedError("the weights run in the engine's own process")


def _gguf_prompting_folder(gguf_path: Any, cache_dir: Any) -> Any:
    """A folder with the tokenizer and config of a GGUF file: the full conversion's when it exists
    (adapters/gguf_cache.py), else one holding only those, made once (a few seconds)."""
    full = converted_dir(gguf_path, cache_dir)
    if is_complete(full):
        return full
    target = full.with_name(full.name + "-prompting")
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    source, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    config = AutoConfig.from_pretrained(source, gguf_file=name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".prompting-", dir=target.parent)
    try:
        tokenizer.save_pretrained(staging)
        config.save_pretrained(staging)
        os.rename(staging, target)  # atomic: a half-written folder is never taken for a finished one
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "tokenizer_config.json").exists():  # not merely another worker that finished first
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
