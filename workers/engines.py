"""One engine per served model, chosen by its adapter's kind; loading the models of a worker."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

from adapters import AdapterKind, ModelLoadError, adapter_for
from adapters.base import AdapterBase
from adapters.hf_causal import HfCausalAdapter
from protocol import ModelSpec, load_models_file
from workers.batch_engine import BatchEngine
from workers.contract import Engine
from workers.embed_engine import EmbeddingEngine
from workers.engine_kinds import SIDECARS
from workers.publisher import Outbox
from workers.score_engine import ScoringEngine
from workers.serial_engine import SerialEngine
from workers.settings import WorkerSettings
from workers.sidecar import SidecarFailed
from workers.sidecar_engine import SidecarEngine

log = logging.getLogger(__name__)

# Built alike: Engine(adapter, slots=, on_step_end=, keepalive=); sized with pool_slots(spec).
ENGINES: dict[AdapterKind, type[BatchEngine] | type[SerialEngine] | type[EmbeddingEngine] | type[ScoringEngine]] = {
    "batch": BatchEngine,
    "text": SerialEngine,
    "embed": EmbeddingEngine,
    "classify": ScoringEngine,
}


class WorkerStartupError(RuntimeError):
    pass


@dataclass
class Loaded:
    """What a worker could load: an engine per model, and why each other model failed."""

    engines: dict[str, Engine] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def load_engines(settings: WorkerSettings, queues: list[str], outbox: Outbox) -> Loaded:
    """Load every model of `queues`.  A model that fails (whatever the exception: remote code
    raises anything) is reported once, with its name and cause, and left out; raises
    WorkerStartupError when no model at all could be loaded."""
    models = load_models_file(settings.models_file)
    served = [q for q in queues if models.get(q)]
    for queue in queues:
        if queue not in served:
            log.warning("queue %r names no model in %s; its tasks will fail", queue, settings.models_file)
    if not served:
        raise WorkerStartupError(
            f"this worker consumes no model queue; start it with -Q <model> "
            f"(models in {settings.models_file}: {', '.join(models.names)})"
        )
    loaded = Loaded()
    for name in served:
        spec = with_engine(models.models[name], settings)
        try:
            if spec.engine in SIDECARS:
                loaded.engines[name] = start_sidecar_engine(spec, settings, outbox)
                continue
            adapter = adapter_for(spec)(spec, settings.cache_dir)
            log.info("loading model %s (adapter %s) from %s", name, adapter.name, spec.path)
            if _runs_on(spec, "llama-cpp", type(adapter)) and spec.device in ("auto", "cpu"):
                log.info("model %s is a GGUF file: on a CPU, `engine: llama-cpp` runs it several times faster "
                         "for one stream (README, Engines)", name)  # fmt: skip
            adapter.load()
            loaded.engines[name] = make_engine(adapter, spec, outbox, settings.keepalive_interval)
        except Exception as exc:  # noqa: BLE001 - remote code and loaders raise anything
            loaded.failures[name] = failure_reason(exc)
            log.error("model %s failed to load: %s", name, loaded.failures[name],
                      exc_info=not isinstance(exc, ModelLoadError))  # fmt: skip
            continue
        log.info("model %s serves up to %d requests together", name, loaded.engines[name].slots)
    if not loaded.engines:
        raise WorkerStartupError("no model could be loaded: " + "; ".join(f"{m}: {why}" for m, why in loaded.failures.items()))
    return loaded


def with_engine(spec: ModelSpec, settings: WorkerSettings) -> ModelSpec:
    """`spec` with the engine the worker's settings choose (QUEUECHAT_ENGINE, as `make run
    ENGINE=llama-cpp` sets it) for every model that engine can run: causal LMs (and for llama.cpp,
    GGUF files only); other models keep theirs."""
    if settings.engine is None or settings.engine == spec.engine:
        return spec
    try:
        runs = _runs_on(spec, settings.engine, adapter_for(spec))
    except ModelLoadError:
        return spec  # reported when the worker loads its models
    return spec.model_copy(update={"engine": settings.engine}) if runs else spec


def _runs_on(spec: ModelSpec, engine: str, adapter_class: type) -> bool:
    """Whether `engine` can run `spec`, served by `adapter_class` (adapter_for's answer)."""
    causal = issubclass(adapter_class, HfCausalAdapter)
    return causal and (engine != "llama-cpp" or (spec.path is not None and spec.path.suffix == ".gguf"))


def start_sidecar_engine(spec: ModelSpec, settings: WorkerSettings, outbox: Outbox) -> SidecarEngine:
    """The model's prompting (tokenizer, template) here, its weights in a server this worker starts."""
    if not _runs_on(spec, spec.engine, adapter_for(spec)):
        what = "GGUF files of causal LMs" if spec.engine == "llama-cpp" else "causal LMs (adapter hf-causal)"
        raise ModelLoadError(f"model {spec.name!r}: engine {spec.engine} runs {what}, not {spec.path}")
    from adapters.hf_prompts import HfPromptAdapter

    kind = SIDECARS[spec.engine]
    kind.command(spec, 0, 1, settings.cache_dir, settings.llama_server)  # a missing program fails the load now
    adapter = HfPromptAdapter(spec, settings.cache_dir)
    adapter.load()
    command = partial(kind.command, spec, context=adapter.context_length, cache_dir=settings.cache_dir,
                      binary=settings.llama_server)  # fmt: skip
    log.info("model %s runs on %s (%d slots)", spec.name, spec.engine, kind.slots(spec))
    try:
        return SidecarEngine(adapter, spec, lambda port: command(port=port), on_step_end=outbox.flush,
                             keepalive=settings.keepalive_interval)  # fmt: skip
    except SidecarFailed as exc:  # its own output says why: no traceback of ours needed
        raise ModelLoadError(f"model {spec.name!r}: {exc}") from exc


def failure_reason(exc: BaseException, limit: int = 500) -> str:
    """The cause of a failed load in one line: the exception's type (unless it is ours) and message."""
    text = " ".join(str(exc).split()) or "(no message)"
    reason = text if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {text}"
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def make_engine(adapter: AdapterBase, spec: ModelSpec, outbox: Outbox, keepalive: float = 5.0) -> Engine:
    """The engine of the adapter's kind; events are flushed to Redis after each of its steps."""
    engine_class = ENGINES[adapter.kind]
    return engine_class(adapter, slots=spec.slots, on_step_end=outbox.flush, keepalive=keepalive)  # type: ignore[arg-type]


def pool_slots(spec: ModelSpec) -> int:
    """Task threads a model needs: its slots, or one for adapters that run one request at a time."""
    if spec.engine in SIDECARS:
        return SidecarEngine.pool_slots(spec)
    try:
        return ENGINES[adapter_for(spec).kind].pool_slots(spec)
    except ModelLoadError:
        return spec.slots or 1  # reported when the worker loads its models
