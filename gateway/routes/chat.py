"""POST /v1/chat/completions"""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import HttpLabelsDep, RelayDep, SettingsDep
from gateway.generation import respond
from gateway.openai_types import CreateChatCompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: CreateChatCompletionRequest, request: Request, relay: RelayDep,
                                 settings: SettingsDep, labels: HttpLabelsDep) -> Response:  # fmt: skip
    labels.model = relay.registry.metric_label(body.model)
    return await respond(relay, body.generation(settings), request.is_disconnected)
