"""POST /v1/completions"""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import RelayDep, SettingsDep, metric_label
from gateway.generation import Reply, respond
from gateway.openai_types import CreateCompletionRequest
from gateway.render import Format

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CreateCompletionRequest, request: Request, relay: RelayDep, settings: SettingsDep
) -> Response:
    request.state.model = metric_label(relay, body.model)
    body.check_limits(settings)
    jobs = body.to_jobs(settings.queue_timeout)
    prefixes = [p for p in body.prompts for _ in range(body.n)] if body.echo else ()
    reply = Reply(Format.TEXT, body.stream, body.include_usage, logprobs=body.logprobs is not None,
                  prefixes=prefixes, n=body.n)  # fmt: skip
    return await respond(relay, jobs, reply, request.is_disconnected)
