"""The one path both generation endpoints take: jobs -> relay -> first events -> stream or body."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from gateway.fanout import Choices
from gateway.tool_calls import ToolStreamFilter
from gateway.relay import ClientGone, Relay
from gateway.render import ChoiceState, Envelope, Format, collect, sse_stream
from protocol import GenerateJob


@dataclass(frozen=True)
class Reply:
    """How to present the jobs' output: one choice per job, in order."""

    fmt: Format
    stream: bool
    include_usage: bool = False
    logprobs: bool = False
    prefixes: Sequence[str] = ()  # completions with echo: each choice's prompt
    n: int = 1  # choices per prompt (usage counts a prompt once)
    tool_names: frozenset[str] = frozenset()  # tools offered: their calls are parsed out of the text

    def states(self, count: int) -> list[ChoiceState]:
        prefixes = list(self.prefixes) or [""] * count
        return [ChoiceState(index=i, prefix=prefixes[i], logprobs=self.logprobs,
                            tools=ToolStreamFilter(self.tool_names) if self.tool_names else None)
                for i in range(count)]  # fmt: skip


async def respond(relay: Relay, jobs: Sequence[GenerateJob], reply: Reply, client_gone: ClientGone | None = None) -> Response:
    """Queue the jobs and answer with SSE or JSON.

    The HTTP status is decided by the workers' first events (start or error), so a prompt that is
    too long gets a real 400 even when streaming was asked for.
    """
    choices = await Choices.open(relay, jobs, client_gone)
    response_id = jobs[0].request_id if len(jobs) == 1 else jobs[0].request_id.rsplit("-", 1)[0]
    env = Envelope(id=response_id, model=jobs[0].model, fmt=reply.fmt)
    states = reply.states(len(jobs))
    prompt_of = [i // reply.n for i in range(len(jobs))]
    headers = {"X-Request-Id": response_id}
    if reply.stream:
        choices.stop_watching_client()  # from here sse-starlette notices a client that leaves
        stream = sse_stream(choices, env, states, reply.include_usage, prompt_of)
        return EventSourceResponse(stream, sep="\n", headers=headers)
    return JSONResponse(await collect(choices, env, states, prompt_of), headers=headers)
