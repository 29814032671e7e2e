"""POST /v1/chat/completions"""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import RelayDep, SettingsDep
from gateway.generation import respond
from gateway.openai_types import CreateChatCompletionRequest
from gateway.render import Format

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: CreateChatCompletionRequest, request: Request, relay: RelayDep, settings: SettingsDep
) -> Response:
    body.check_limits(settings)
    job = body.to_job(settings.queue_timeout)
    return await respond(relay, job, Format.CHAT, body.stream, body.include_usage, request.is_disconnected)
