"""One engine per served model, chosen by its adapter's kind; loading the models of a worker."""

from __future__ import annotations

import logging

from adapters import AdapterKind, ModelLoadError, adapter_for
from adapters.base import AdapterBase
from protocol import ModelSpec, load_models_file
from workers.batch_engine import BatchEngine
from workers.contract import Engine
from workers.embed_engine import EmbeddingEngine
from workers.publisher import Outbox
from workers.serial_engine import SerialEngine
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

# Built alike: Engine(adapter, slots=, on_step_end=, keepalive=); sized with pool_slots(spec).
ENGINES: dict[AdapterKind, type[BatchEngine] | type[SerialEngine] | type[EmbeddingEngine]] = {
    "batch": BatchEngine,
    "text": SerialEngine,
    "embed": EmbeddingEngine,
}


class WorkerStartupError(RuntimeError):
    pass


def load_engines(settings: WorkerSettings, queues: list[str], outbox: Outbox) -> dict[str, Engine]:
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
    engines = {}
    for name in served:
        spec = models.models[name]
        adapter = adapter_for(spec)(spec, settings.cache_dir)
        log.info("loading model %s (adapter %s) from %s", name, adapter.name, spec.path)
        adapter.load()
        engines[name] = make_engine(adapter, spec, outbox, settings.keepalive_interval)
        log.info("model %s serves up to %d requests together", name, engines[name].slots)
    return engines


def make_engine(adapter: AdapterBase, spec: ModelSpec, outbox: Outbox, keepalive: float = 5.0) -> Engine:
    """The engine of the adapter's kind; events are flushed to Redis after each of its steps."""
    engine_class = ENGINES[adapter.kind]
    return engine_class(adapter, slots=spec.slots, on_step_end=outbox.flush, keepalive=keepalive)  # type: ignore[arg-type]


def pool_slots(spec: ModelSpec) -> int:
    """Task threads a model needs: its slots, or one for adapters that run one request at a time."""
    try:
        return ENGINES[adapter_for(spec).kind].pool_slots(spec)
    except ModelLoadError:
        return spec.slots  # reported when the worker loads its models
