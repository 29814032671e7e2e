"""POST /v1/completions"""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import RelayDep, SettingsDep
from gateway.generation import respond
from gateway.openai_types import CreateCompletionRequest
from gateway.render import Format

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CreateCompletionRequest, request: Request, relay: RelayDep, settings: SettingsDep
) -> Response:
    body.check_limits(settings)
    job = body.to_job(settings.queue_timeout)
    return await respond(relay, job, Format.TEXT, body.stream, body.include_usage, request.is_disconnected)
