"""The engine of models that run in a server the worker owns (llama.cpp's, vLLM's): the worker
keeps the queue's side of the contract (prompts, templates and tools, limits, the event protocol,
cancellation, keep-alives, slots and heartbeats) and the server decodes, with its own continuous
batching, in OpenAI's completions protocol: the prompt goes as token ids (so what the worker
counted, checked and templated is exactly what runs), the reply streams back as text pieces
with their logprobs when asked.

Each request streams on its own connection, read by one of `slots` threads; a cancelled request's
connection is closed (both servers then stop decoding it).  When the server dies, the requests
inside it end with an `engine_lost` error (a 503) and the supervisor starts it again
(workers/sidecar.py); requests arriving meanwhile wait for it.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from adapters import ModelAdapter, UnsupportedParameter
from protocol import (
    GENERATES,
    ErrorCode,
    GenerateJob,
    ModelCard,
    ModelSpec,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from protocol.features import first_unsupported
from workers.contract import EngineBase, FinishReason, Sink
from workers.engine_kinds import SIDECARS, SidecarKind
from workers.intake import Intake
from workers.logprobs import echo_text
from workers.sidecar import Sidecar

log = logging.getLogger(__name__)

READY_WAIT = 120.0  # seconds a request waits for a restarting server before it is failed


@dataclass(eq=False)
class SidecarRequest:
    job: GenerateJob
    prompt_ids: list[int]
    params: SamplingParams
    limit: int
    stops: tuple[str, ...]
    sink: Sink
    cancelled: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the reader and the keep-alive ticker
    last_sent: float = field(default_factory=time.monotonic)
    connection: http.client.HTTPConnection | None = None

    def send(self, event: Callable[..., None], *args: Any) -> None:
        with self.lock:
            event(*args)
            self.last_sent = time.monotonic()


class EngineLost(Exception):
    """The server stopped answering in the middle of a request."""


class SidecarEngine(EngineBase):
    capabilities = GENERATES

    def __init__(self, adapter: ModelAdapter, spec: ModelSpec, command: Callable[[int], list[str]],
                 on_step_end: Callable[[], None] = lambda: None, keepalive: float = 5.0,
                 ready_timeout: float = 600.0) -> None:  # fmt: skip
        self.adapter = adapter
        self.kind: SidecarKind = SIDECARS[spec.engine]
        self.slots = self.kind.slots(spec)
        self.unsupported = self.kind.unsupported
        self._intake = Intake(adapter, kv_budget=None, scores_prompts=False)
        chosen = spec.defaults.model_dump(exclude_none=True, exclude={"max_tokens"})
        self._defaults = {**adapter.default_sampling(), **chosen}
        self._on_step_end = on_step_end
        self._keepalive = keepalive
        self._running: set[SidecarRequest] = set()
        self._lock = threading.Lock()
        self._closing = False
        self.generated_tokens = 0
        self.lost_requests = 0
        self.sidecar = Sidecar(f"{self.kind.name} server of {spec.name}", command, ready_timeout=ready_timeout,
                               on_exit=self._server_exited)  # fmt: skip
        self.sidecar.start()
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix=f"{self.kind.name}-{spec.name}")
        self._ticker = threading.Thread(target=self._tick, name=f"keepalive-{spec.name}", daemon=True)
        self._ticker.start()

    @staticmethod
    def pool_slots(spec: ModelSpec) -> int:
        return SIDECARS[spec.engine].slots(spec)

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - len(self._running)) if self.sidecar.ready else 0

    def stats(self) -> dict[str, int]:
        return {"running": len(self._running), "slots": self.slots, "tokens": self.generated_tokens,
                "engine_restarts": self.sidecar.restarts, "engine_lost_requests": self.lost_requests}  # fmt: skip

    def card(self) -> ModelCard:
        return ModelCard(capabilities=self.capabilities, max_model_len=self.adapter.context_length,
                         engine=self.kind.name, unsupported=self.unsupported)  # fmt: skip

    def prompt_ids(self, job: GenerateJob) -> list[int]:
        if (refused := first_unsupported(job, self.unsupported)) is not None:
            raise UnsupportedParameter(refused[1], self.adapter.spec.name, f"is not supported by the {self.kind.name} "
                                       "engine of model")  # fmt: skip
        return self._intake.prompt_ids(job)

    def submit_job(self, job: GenerateJob, prompt_ids: list[int], sink: Sink) -> SidecarRequest:
        params = job.params.resolved(**self._defaults)
        extra = self.adapter.chat_stops if job.messages is not None else ()
        stops = params.stop + tuple(s for s in extra if s not in params.stop)
        request = SidecarRequest(job, prompt_ids, params, self._intake.limit(params, len(prompt_ids)), stops, sink)
        with self._lock:
            if self._closing:
                raise RuntimeError("the engine is shut down")
            self._running.add(request)
        self._pool.submit(self._serve, request)
        return request

    def cancel(self, request: SidecarRequest) -> None:
        request.cancelled = True
        if (connection := request.connection) is not None and (sock := connection.sock) is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader; the server sees the connection go and stops
            except OSError:
                pass  # already closed by the reader

    def close(self) -> None:
        with self._lock:
            self._closing = True
            running = list(self._running)
        for request in running:
            self.cancel(request)
        self._pool.shutdown(wait=True, cancel_futures=False)
        self.sidecar.close()

    def _server_exited(self, rc: int) -> None:
        log.error("the %s server of %s exited with %s while serving %d requests", self.kind.name,
                  self.adapter.spec.name, rc, len(self._running))  # fmt: skip

    def _serve(self, request: SidecarRequest) -> None:
        try:
            self._run(request)
        except Exception:
            log.exception("request %s failed", request.job.request_id)
            if not request.finished.is_set():
                request.send(request.sink.error, "internal_error", "the engine failed on this request; see the worker log")
        finally:
            with self._lock:
                self._running.discard(request)
            request.finished.set()
            self._on_step_end()

    def _run(self, request: SidecarRequest) -> None:
        sink, job = request.sink, request.job
        if request.cancelled:
            return request.send(sink.error, "cancelled", "the client cancelled the request")
        if (echo := echo_text(job, self.adapter, request.prompt_ids)) is not None:
            request.send(sink.prompt, echo, None)
        if request.limit <= 0:  # max_tokens 0: nothing to generate
            return request.send(sink.done, "length", Usage(prompt_tokens=len(request.prompt_ids), completion_tokens=0))
        if not self.sidecar.wait_ready(READY_WAIT):
            return self._lost(request, f"the {self.kind.name} server is not running (restarting)")
        try:
            finish, completion, cumulative = self._stream(request)
        except (http.client.HTTPException, EngineLost, OSError) as exc:
            if request.cancelled:
                return request.send(sink.error, "cancelled", "the client cancelled the request")
            return self._lost(request, f"the {self.kind.name} server stopped answering ({type(exc).__name__}: {exc})")
        except _Refused as refused:
            return request.send(sink.error, refused.code, refused.message, refused.param)
        if request.cancelled:
            return request.send(sink.error, "cancelled", "the client cancelled the request")
        self.generated_tokens += completion
        usage = Usage(prompt_tokens=len(request.prompt_ids), completion_tokens=completion)
        request.send(sink.done, finish, usage, cumulative)

    def _lost(self, request: SidecarRequest, why: str) -> None:
        self.lost_requests += 1
        request.send(request.sink.error, "engine_lost", f"{why}; retry the request")

    def _stream(self, request: SidecarRequest) -> tuple[FinishReason, int, float | None]:
        """Relay one completion's stream to the request's sink: (finish reason, tokens, their summed logprob)."""
        params = request.params
        wanted = params.logprobs  # alternatives the client asked for
        cumulative = 0.0 if params.cumulative_logprob else None
        finish: FinishReason | None = None
        counted, reported = 0, None
        with self._open(request) as response:
            if response.status != 200:
                raise _Refused.from_reply(response)
            for chunk in _chunks(response):
                if request.cancelled:
                    break
                if "error" in chunk:
                    raise _Refused("internal_error", f"the {self.kind.name} server failed: {_message(chunk)}")
                for choice in chunk.get("choices") or []:
                    entries = _logprobs(choice.get("logprobs"), wanted or 0)
                    counted += len(entries) or bool(choice.get("text"))
                    if cumulative is not None:
                        cumulative += sum(e.logprob for e in entries)
                    text = choice.get("text") or ""
                    if text or (entries and wanted is not None):
                        request.send(request.sink.token, text, entries if wanted is not None else None)
                    if choice.get("finish_reason") in ("stop", "length"):
                        finish = choice["finish_reason"]
                if isinstance(usage := chunk.get("usage"), dict):
                    reported = usage.get("completion_tokens")
                self._on_step_end()
        if finish is None and not request.cancelled:
            raise EngineLost("the stream ended without a finish reason")
        return finish or "stop", reported if isinstance(reported, int) else counted, cumulative

    @contextmanager
    def _open(self, request: SidecarRequest) -> Iterator[http.client.HTTPResponse]:
        """POST the request's completion on a connection of its own (closed after it: llama.cpp's
        server closes kept-alive connections after a few requests, and one reused just as it closes
        fails the request).  http.client, not httpx: reading a token costs ~130 against ~190 µs of
        CPU, which on a small CPU is taken from the engine's own threads."""
        address = urlsplit(self.sidecar.url)
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
        request.connection = connection
        try:
            connection.request("POST", "/v1/completions", json.dumps(self._body(request)).encode(),
                               {"Content-Type": "application/json"})  # fmt: skip
            assert connection.sock is not None
            connection.sock.settimeout(None)  # a prefill, or a wait for a slot, may take long
            if request.cancelled:  # cancelled while connecting: cancel() found no socket to shut
                raise EngineLost("cancelled")
            yield connection.getresponse()
        finally:
            connection.close()

    def _body(self, request: SidecarRequest) -> dict[str, Any]:
        params = request.params
        body: dict[str, Any] = {
            "model": self.adapter.spec.name,
            "prompt": request.prompt_ids,
            "max_tokens": request.limit,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0 if params.greedy else params.temperature,
            "top_p": 1.0 if params.greedy else params.top_p,
        }
        if request.stops:
            body["stop"] = list(request.stops)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.top_k is not None:
            body["top_k"] = params.top_k
        if params.presence_penalty:
            body["presence_penalty"] = params.presence_penalty
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        if params.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
        if params.logprobs is not None or params.cumulative_logprob:
            body["logprobs"] = max(1, params.logprobs or 0)  # 0 would give none, not the chosen token's
        return body

    def _tick(self) -> None:
        """Keep-alives for requests the server has been silent about (a long prefill, a full server)."""
        while not self._closing:
            time.sleep(min(1.0, self._keepalive / 2))
            now, sent = time.monotonic(), False
            for request in list(self._running):
                if not request.finished.is_set() and now - request.last_sent >= self._keepalive:
                    request.send(request.sink.keepalive)
                    sent = True
            if sent:
                self._on_step_end()


class _Refused(Exception):
    """The server answered the request with an error: passed on to the client as one."""

    def __init__(self, code: ErrorCode, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    @classmethod
    def from_reply(cls, response: http.client.HTTPResponse) -> _Refused:
        raw = response.read()
        try:
            message = _message(json.loads(raw))
        except ValueError:
            message = raw[:500].decode(errors="replace")
        code: ErrorCode = "invalid_request" if 400 <= response.status < 500 else "internal_error"
        return cls(code, f"the engine refused the request ({response.status}): {message}")


def _message(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or body)[:500]


def _chunks(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, up to `[DONE]`."""
    for line in lines:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        if data:
            yield json.loads(data)


def _logprobs(raw: Any, top: int) -> tuple[TokenLogprob, ...]:
    """A choice's logprobs in either server's spelling: llama.cpp's (chat-style `content` entries
    with bytes) or vLLM's (OpenAI's legacy completions arrays); `top` alternatives kept."""
    if not isinstance(raw, dict):
        return ()
    if isinstance(raw.get("content"), list):
        return tuple(
            TokenLogprob(token=e["token"], logprob=e["logprob"], bytes=tuple(e.get("bytes") or e["token"].encode()),
                         top=tuple(_top(t["token"], t["logprob"], t.get("bytes")) for t in (e.get("top_logprobs") or [])[:top]))
            for e in raw["content"]
        )  # fmt: skip
    tokens, logprobs, tops = raw.get("tokens") or [], raw.get("token_logprobs") or [], raw.get("top_logprobs") or []
    entries = []
    for i, (token, logprob) in enumerate(zip(tokens, logprobs)):
        ranked = sorted((tops[i] or {}).items(), key=lambda kv: -kv[1]) if i < len(tops) else []
        entries.append(TokenLogprob(token=token, logprob=logprob, bytes=tuple(token.encode()),
                                    top=tuple(_top(t, lp) for t, lp in ranked[:top])))  # fmt: skip
    return tuple(entries)


def _top(token: str, logprob: float, raw_bytes: Any = None) -> TopLogprob:
    return TopLogprob(token=token, logprob=logprob, bytes=tuple(raw_bytes or token.encode()))
