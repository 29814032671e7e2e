"""POST /v1/completions, and GET /v1/completions/{id}/events: resume a kept stream."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.completion_request import CreateCompletionRequest
from gateway.deps import HttpLabelsDep, KeeperDep, RelayDep, SettingsDep
from gateway.generation import respond, resume_kept
from gateway.keep import DETACH_GRACE_HEADER, detach_grace
from gateway.routes.chat import GraceHeader, LastEventId, StartingAfter

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CreateCompletionRequest, request: Request, relay: RelayDep, settings: SettingsDep,
                            labels: HttpLabelsDep, keeper: KeeperDep, grace: GraceHeader = None) -> Response:  # fmt: skip
    labels.model = relay.registry.metric_label(body.model)
    generation = await body.generation_off_loop(settings, detach_grace(grace))
    return await respond(relay, generation, request.is_disconnected, keeper)


@router.get("/v1/completions/{completion_id}/events", response_model=None)
async def resume_completion(completion_id: str, relay: RelayDep, keeper: KeeperDep, last_event_id: LastEventId = None,
                            starting_after: StartingAfter = None) -> Response:  # fmt: skip
    missing = (f"No kept completion '{completion_id}' (only requests with an {DETACH_GRACE_HEADER} header can "
               "be resumed, until they expire).")  # fmt: skip
    return await resume_kept(relay, keeper, "text_completion", completion_id, last_event_id, starting_after, missing)
