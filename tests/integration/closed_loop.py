"""Closed-loop load through several gateways with the official `openai` SDK, every call recorded.

Each client thread sends one chat request at a time, with a prompt of its own (so the echo of
each reply says whose it is), to the live gateways in turn.  The SDK retries as it does by default
(`max_retries`), and on a connection error the thread tries the next gateway and marks the one that
failed as down, as a load balancer would.  Every HTTP error response is read and kept (status,
body) by an httpx hook, retried or not.  `mark(name)` opens a phase; each call belongs to the
phase in which it started.  Bounded: `clients` threads, `per_client` calls each, `deadline` seconds.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import openai


def echo_of(prompt: str, max_tokens: int) -> str:
    """What the echo adapter answers to a one-message chat: the prompt's bytes over and over."""
    return (prompt * (max_tokens // max(1, len(prompt)) + 1))[:max_tokens]


def openai_shaped(body: object) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (isinstance(error, dict) and isinstance(error.get("message"), str)
            and isinstance(error.get("type"), str))  # fmt: skip


@dataclass
class Call:
    client: int
    prompt: str
    gateway: str  # the first gateway tried
    started: float
    ended: float = 0.0
    outcome: str = ""  # ok | status | connection | timeout | wrong
    detail: str = ""
    response_id: str = ""
    attempts: list[tuple[str, str, float]] = field(default_factory=list)  # (gateway, what happened, when)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class HttpError:
    gateway: str
    status: int
    body: object
    at: float


class Load:
    def __init__(self, gateways: list[str], model: str, max_tokens: int, *, clients: int, per_client: int,
                 deadline: float, timeout: float, max_retries: int = 2,
                 phase: str = "start") -> None:  # fmt: skip
        self.model, self.max_tokens, self.timeout, self.max_retries = model, max_tokens, timeout, max_retries
        self.clients, self.per_client = clients, per_client
        self.deadline = time.monotonic() + deadline
        self.tag = uuid.uuid4().hex[:4]
        self.calls: list[Call] = []
        self.http_errors: list[HttpError] = []
        self.marks: list[tuple[str, float]] = [(phase, time.monotonic())]
        self.down: dict[str, float] = {}  # gateway -> when a client first found it unreachable
        self._gateways = list(gateways)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True, name=f"load-{k}")
                         for k in range(clients)]  # fmt: skip

    # ---- control ----

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def mark(self, phase: str) -> float:
        now = time.monotonic()
        with self._lock:
            self.marks.append((phase, now))
        return now

    def add_gateway(self, base_url: str) -> None:
        with self._lock:
            self._gateways.append(base_url)

    def stop(self, wait: float) -> list[str]:
        """Stop sending; wait up to `wait` s for the calls in flight; returns the threads still running."""
        self._stop.set()
        until = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, until - time.monotonic()))
        return [thread.name for thread in self._threads if thread.is_alive()]

    # ---- results ----

    def phase_of(self, when: float) -> str:
        return [name for name, at in self.marks if at <= when][-1]

    def by_phase(self) -> dict[str, list[Call]]:
        phases: dict[str, list[Call]] = {name: [] for name, _ in self.marks}
        for call in self.done():
            phases[self.phase_of(call.started)].append(call)
        return phases

    def done(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def completions_between(self, start: float, end: float) -> int:
        return sum(1 for c in self.done() if c.outcome == "ok" and start <= c.ended < end)

    @staticmethod
    def summary(calls: list[Call]) -> dict[str, object]:
        outcomes = Counter(c.outcome if c.outcome != "status" else f"status {c.detail.split()[0]}"
                           for c in calls)  # fmt: skip
        refused = sum(1 for c in calls for _, what, _ in c.attempts if what == "connection")
        failed_over = sum(1 for c in calls if len({g for g, _, _ in c.attempts}) > 1)
        slowest = max((c.seconds for c in calls), default=0.0)
        return {"requests": len(calls), **dict(sorted(outcomes.items())), "connection_errors": refused,
                "failed_over": failed_over, "max_s": round(slowest, 2)}  # fmt: skip

    # ---- the clients ----

    def _live(self) -> list[str]:
        with self._lock:
            return [g for g in self._gateways if g not in self.down]

    def _hook(self, gateway: str) -> Callable[[httpx.Response], None]:
        def on_response(response: httpx.Response) -> None:
            if response.status_code >= 400:
                response.read()
                try:
                    body: object = response.json()
                except ValueError:
                    body = response.text
                with self._lock:
                    self.http_errors.append(HttpError(gateway, response.status_code, body, time.monotonic()))

        return on_response

    def _run(self, k: int) -> None:
        sdks: dict[str, openai.OpenAI] = {}

        def sdk(gateway: str) -> openai.OpenAI:
            if gateway not in sdks:
                hooks = {"response": [self._hook(gateway)]}
                http = httpx.Client(timeout=self.timeout, event_hooks=hooks)
                sdks[gateway] = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", http_client=http,
                                              timeout=self.timeout, max_retries=self.max_retries)  # fmt: skip
            return sdks[gateway]

        try:
            for i in range(self.per_client):
                live = self._live()
                if self._stop.is_set() or time.monotonic() > self.deadline or not live:
                    return
                self._one(k, f"{k:02d}.{i:04d}.{self.tag}", live[(k + i) % len(live)], sdk)
        finally:
            for client in sdks.values():
                client.close()

    def _one(self, k: int, prompt: str, first: str, sdk: Callable[[str], openai.OpenAI]) -> None:
        call = Call(k, prompt, first, time.monotonic())
        gateway: str | None = first
        while gateway is not None:
            try:
                messages = [{"role": "user", "content": prompt}]
                reply = sdk(gateway).chat.completions.create(model=self.model, max_tokens=self.max_tokens,
                                                             messages=messages)  # fmt: skip
            except openai.APITimeoutError:
                call.attempts.append((gateway, "timeout", time.monotonic()))
                call.outcome = "timeout"
            except openai.APIConnectionError as exc:
                call.attempts.append((gateway, "connection", time.monotonic()))
                call.outcome, call.detail = "connection", repr(exc.__cause__ or exc)
                with self._lock:
                    self.down.setdefault(gateway, time.monotonic())
                gateway = next((g for g in self._live() if g != gateway), None)  # what a balancer would do
                continue
            except openai.APIStatusError as exc:
                call.attempts.append((gateway, f"status {exc.status_code}", time.monotonic()))
                call.outcome, call.detail = "status", f"{exc.status_code} {json.dumps(exc.body)}"
            else:
                call.attempts.append((gateway, "ok", time.monotonic()))
                choice = reply.choices[0]
                call.response_id = reply.id
                tokens = reply.usage.completion_tokens if reply.usage is not None else None
                good = (choice.message.content == echo_of(prompt, self.max_tokens)
                        and choice.finish_reason == "length" and tokens == self.max_tokens)  # fmt: skip
                call.outcome = "ok" if good else "wrong"
                call.detail = "" if good else f"{choice.message.content!r} {choice.finish_reason} {tokens}"
            break
        call.ended = time.monotonic()
        with self._lock:
            self.calls.append(call)
