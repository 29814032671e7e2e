"""GGUF files are dequantised by transformers on every load (~20 s for SmolLM2-135M on 2 cores).
Convert once and keep a safetensors copy in the cache directory; later loads take about a second."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def converted_dir(gguf_path: Path, cache_dir: Path) -> Path:
    """Cache folder for one GGUF file, named by its content: a re-downloaded copy of the same
    file hits the cache, a changed file gets a new folder.  (Hashing 100 MB takes ~0.2 s.)"""
    digest = hashlib.sha256()
    with open(gguf_path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return cache_dir / "gguf" / f"{gguf_path.stem}-{digest.hexdigest()[:16]}"


def is_complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def convert_gguf(gguf_path: Path, cache_dir: Path) -> Path:
    """Return a safetensors folder for `gguf_path`, converting it first if needed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_dir(gguf_path, cache_dir)
    if is_complete(target):
        return target
    log.info("converting %s once (dequantising GGUF); later starts load %s", gguf_path.name, target)
    started = time.monotonic()
    source, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name)
    # The dequantised weights are plain tensors; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)  # atomic: a half-written folder is never taken for a cache hit
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not is_complete(target):  # not merely another worker that finished first
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("converted %s in %.1f s", gguf_path.name, time.monotonic() - started)
    return target
