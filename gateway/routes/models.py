"""GET /v1/models and /v1/models/{id}: models that a live worker serves right now, with what
each can do (`capabilities`), its context length (`max_model_len`), the engine that runs it and
what that engine cannot give (`engine`, `unsupported`), as their workers say;
and, with `status: failed` and the reason, models that a live worker failed to load."""

from fastapi import APIRouter
from fastapi.responses import Response

from gateway.deps import RegistryDep
from gateway.openai_responses import ListModelsResponse, Model
from gateway.registry import Registry
from protocol import ModelCard

router = APIRouter()

_CREATED = 1_700_000_000  # a fixed timestamp: models here have no creation date


def _model(registry: Registry, model: str, card: ModelCard | None) -> Model:
    entry = Model(id=model, object="model", created=_CREATED, owned_by=registry.owned_by(model), status="ready")
    if card is not None:
        entry.capabilities, entry.max_model_len = list(card.capabilities), card.max_model_len
        entry.engine, entry.unsupported = card.engine, list(card.unsupported) or None
    return entry


def _failed(registry: Registry, model: str, failures: dict[str, str]) -> Model:
    """A model no live worker serves because it failed to load: listed, unusable, with the reason."""
    worker, reason = sorted(failures.items())[0]
    return Model(id=model, object="model", created=_CREATED, owned_by=registry.owned_by(model), capabilities=[],
                 status="failed", status_reason=f"failed to load on worker {worker}: {reason}")  # fmt: skip


def _json(body: ListModelsResponse | Model) -> Response:
    return Response(body.to_json(), media_type="application/json")


@router.get("/v1/models")
async def list_models(registry: RegistryDep) -> Response:
    cards = await registry.cards(await registry.live_map())
    failed = {m: why for m, why in (await registry.failed_map()).items() if m not in cards}
    data = [_model(registry, m, card) for m, card in cards.items()] + [_failed(registry, m, w) for m, w in failed.items()]
    return _json(ListModelsResponse(object="list", data=data))


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, registry: RegistryDep) -> Response:
    await registry.require_live(model)
    cards = await registry.cards({model: await registry.live_workers(model)})
    return _json(_model(registry, model, cards.get(model)))
