"""The engines a generating model can run on besides transformers in the worker: servers the
worker starts and owns (workers/sidecar.py) and talks to in OpenAI's completions protocol
(workers/sidecar_engine.py).  Each kind says how its server is started, how many requests it
decodes together by default, and which request features it cannot give (refused with a 400 by
the gateway, from the card the worker publishes).

The models file picks one per model (`engine: llama-cpp`); `options` tune it:
  engine_command: [program, args...]   what starts the server (default: llama-server, `vllm serve`)
  engine_args: [...]                   more flags for it (threads, GPU layers, quantisation ...)
  kv_tokens: N                         llama.cpp's shared KV cache, in tokens (default: max(context, 1024 x slots))
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from adapters import ModelLoadError
from protocol import EngineKind, Feature, ModelSpec

LLAMA_SERVER_NAME = "llama-server"


class EngineNotInstalled(ModelLoadError):
    pass


@dataclass(frozen=True)
class SidecarKind:
    name: EngineKind
    unsupported: tuple[Feature, ...]
    default_slots: int

    def slots(self, spec: ModelSpec) -> int:
        return spec.slots or self.default_slots

    def command(self, spec: ModelSpec, port: int, context: int, cache_dir: Path, binary: Path | None) -> list[str]:
        program = [str(p) for p in spec.options.get("engine_command") or self._program(cache_dir, binary)]
        extra = [str(a) for a in spec.options.get("engine_args") or []]
        slots, path = self.slots(spec), str(spec.path)
        if self.name == "llama-cpp":
            kv_tokens = int(spec.options.get("kv_tokens") or max(context, 1024 * slots))
            return [*program, "--model", path, "--host", "127.0.0.1", "--port", str(port), "--parallel", str(slots),
                    "--kv-unified", "--ctx-size", str(kv_tokens), "--no-webui", *llama_threads(extra), *extra]  # fmt: skip
        flags = ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", spec.name,
                 "--max-num-seqs", str(slots), "--max-model-len", str(context)]  # fmt: skip
        if spec.dtype != "auto":
            flags += ["--dtype", spec.dtype]
        if spec.trust_remote_code:
            flags.append("--trust-remote-code")
        return [*program, path, *flags, *extra]

    def _program(self, cache_dir: Path, binary: Path | None) -> list[str]:
        if self.name == "vllm":
            return ["vllm", "serve"]
        found = find_llama_server(cache_dir, binary)
        if found is None:
            raise EngineNotInstalled(
                f"{LLAMA_SERVER_NAME} was not found (QUEUECHAT_LLAMA_SERVER, PATH, or {llama_server_path(cache_dir)}); "
                "build it once with `make llama-cpp` (README, Engines)"
            )
        return [str(found)]


def llama_threads(extra: list[str]) -> list[str]:
    """Unless the models file sets them: one-token decode steps (a single stream) on all cores but
    one, batches (prompts, several streams) on all.  The worker, Redis and the gateway spend ~0.9 ms
    of CPU per streamed token; on a 2-core machine, with both cores decoding, that time was taken
    from llama.cpp's threads (one stream: 0.85x llama.cpp's own server); with one core left to
    them, 0.94x, and batches still use both (README, Engines)."""
    if any(flag in extra for flag in ("-t", "--threads", "-tb", "--threads-batch")):
        return []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return ["--threads", str(max(1, cores - 1)), "--threads-batch", str(cores)]


def llama_server_path(cache_dir: Path) -> Path:
    """Where `make llama-cpp` (scripts/build_llama_cpp.py) installs the server it builds."""
    return cache_dir / "llama.cpp" / "bin" / LLAMA_SERVER_NAME


def find_llama_server(cache_dir: Path, binary: Path | None = None) -> Path | None:
    """The llama.cpp server to run: the one the settings name, else one on PATH, else our build."""
    if binary is not None:
        return binary if binary.exists() else None
    on_path = shutil.which(LLAMA_SERVER_NAME)
    if on_path:
        return Path(on_path)
    built = llama_server_path(cache_dir)
    return built if built.exists() and os.access(built, os.X_OK) else None


# Both serve OpenAI's completions protocol with token-id prompts, stops, seeds, top_k, penalties,
# logit_bias and per-token logprobs.  Neither takes llguidance's grammars (the constraint) as
# QueueChat compiles them, nor is asked for the prompt's logprobs (prompt_logprobs, echo+logprobs).
SIDECARS: dict[str, SidecarKind] = {
    "llama-cpp": SidecarKind("llama-cpp", unsupported=("prompt_logprobs", "constraint"), default_slots=16),
    "vllm": SidecarKind("vllm", unsupported=("prompt_logprobs", "constraint"), default_slots=256),
}
