"""POST /v1/chat/completions"""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import RelayDep, SettingsDep, metric_label
from gateway.generation import Reply, respond
from gateway.openai_types import CreateChatCompletionRequest
from gateway.render import Format

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: CreateChatCompletionRequest, request: Request, relay: RelayDep, settings: SettingsDep
) -> Response:
    request.state.model = metric_label(relay, body.model)
    body.check_limits(settings)
    jobs = body.to_jobs(settings.queue_timeout)
    reply = Reply(Format.CHAT, body.stream, body.include_usage, logprobs=bool(body.logprobs), n=body.n,
                  tool_names=body.offered_tools)  # fmt: skip
    return await respond(relay, jobs, reply, request.is_disconnected)
