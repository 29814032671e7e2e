"""The models file: model name -> adapter, path and options.  YAML or TOML.

```yaml
models:
  smollm2-135m:
    adapter: hf-causal
    path: ../models/SmolLM2-135M-Instruct.Q4_1.gguf   # relative to this file
```
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocol.cards import EngineKind

ADAPTERS_WITHOUT_FILES = frozenset({"echo"})
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ModelsFileError(ValueError):
    pass


class SamplingDefaults(BaseModel):
    """Used when a request leaves them out (e.g. the values a model card recommends)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, description="cap when a request sets none (else: the context)")


class ModelSpec(BaseModel):
    """One servable model; its `name` is also the name of its Celery queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    adapter: str = Field("auto", description="auto: chosen from the model's config.json (adapters/select.py)")
    engine: EngineKind = Field("transformers", description="what runs a generating model: transformers in the "
                               "worker, or a llama.cpp / vLLM server the worker starts and owns (README, Engines)")
    template: str | None = Field(None, description="a named conversation template (adapters/templates.py)")
    path: Path | None = None  # a folder or file; not needed by model-free adapters (echo)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    device_map: str | None = Field(None, description="accelerate device map, e.g. 'auto' to span several GPUs")
    max_context: int | None = Field(None, ge=16, description="cap on prompt + completion tokens")
    slots: int | None = Field(None, ge=1, le=1024, description="requests decoded together (continuous batching); "
                              "default: sized to the model and memory at load (workers/sizing.py)")
    prefill_chunk: int | None = Field(None, ge=16, description="most prompt tokens prefilled in one step between "
                                      "decode steps; longer prompts are prefilled in chunks (default: 256 on "
                                      "CPU, 2048 on CUDA)")
    prefix_cache: bool = Field(True, description="reuse the KV cache of prompt prefixes seen before")
    prefix_cache_mb: float | None = Field(None, ge=0, description="bound on the prefix cache (default: a tenth of "
                                          "the memory free once the model is loaded)")
    kv_cache_mb: float | None = Field(None, gt=0, description="bound on the decode batch's KV cache; requests wait "
                                      "for room (default: 30% of the memory free once the model is loaded)")
    trust_remote_code: bool = False
    defaults: SamplingDefaults = SamplingDefaults()
    options: dict[str, Any] = Field(default_factory=dict, description="adapter-specific settings")

    @model_validator(mode="after")
    def _needs_a_path(self) -> ModelSpec:
        if self.path is None and self.adapter not in ADAPTERS_WITHOUT_FILES:
            raise ValueError(f"model {self.name!r} needs a 'path' (adapter {self.adapter})")
        return self
    owned_by: str = "queuechat"


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelSpec]

    def get(self, name: str) -> ModelSpec | None:
        return self.models.get(name)

    @property
    def names(self) -> list[str]:
        return list(self.models)


def load_models_file(path: Path) -> ModelsFile:
    """Parse and validate; relative model paths are resolved against the file's folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelsFileError(f"cannot read models file {path}: {exc}") from exc
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ModelsFileError(f"models file {path} is not valid: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise ModelsFileError(f"models file {path} needs a top-level 'models:' mapping")
    for name, entry in raw["models"].items():
        if not isinstance(entry, dict):
            raise ModelsFileError(f"models file {path}: model {name!r} must be a mapping (adapter, path, ...)")
    try:
        parsed = ModelsFile.model_validate(
            {**raw, "models": {name: {**entry, "name": name} for name, entry in raw["models"].items()}}
        )
    except ValidationError as exc:
        raise ModelsFileError(f"models file {path}: {exc}") from exc
    # Relative paths are relative to the models file, wherever the process runs.
    resolved = {
        name: spec.model_copy(update={"path": (path.parent / spec.path.expanduser()).resolve()})
        if spec.path is not None
        else spec
        for name, spec in parsed.models.items()
    }
    return ModelsFile(models=resolved)
