"""Prometheus metrics (GET /metrics) and the one log line per request.

Per request (gateway side): HTTP outcomes by endpoint/model/status, queue wait, time to first
token, inter-token latency, tokens, requests in flight, errors by code.  Per model (read from
Redis at scrape time): queue depth, live workers, free and total slots, and each worker's engine
counters from its heartbeat (requests in its batch, tokens generated).  One registry per app.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol import (
    UNFINISHED_KEY,
    DoneEvent,
    EmbeddingsEvent,
    ErrorEvent,
    Event,
    ScoresEvent,
    StartEvent,
    TokenEvent,
    slots_key,
    stats_key,
)

request_log = logging.getLogger("queuechat.requests")

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = Counter("queuechat_http_requests", "HTTP requests by endpoint, model and status",
                            ["endpoint", "model", "status"], registry=r)  # fmt: skip
        self.queue_wait = Histogram("queuechat_queue_wait_seconds", "From queuing to a worker starting the request",
                                    ["model"], buckets=_LATENCY, registry=r)  # fmt: skip
        self.ttft = Histogram("queuechat_time_to_first_token_seconds", "From queuing to the first token",
                              ["model"], buckets=_LATENCY, registry=r)  # fmt: skip
        self.itl = Histogram("queuechat_inter_token_latency_seconds", "Between consecutive token events",
                             ["model"], buckets=_ITL, registry=r)  # fmt: skip
        self.tokens = Counter("queuechat_generated_tokens", "Completion tokens of finished requests", ["model"], registry=r)
        self.prompt_tokens = Counter("queuechat_prompt_tokens", "Prompt tokens of started requests", ["model"], registry=r)
        self.active = Gauge("queuechat_active_requests", "Requests queued or streaming through this gateway",
                            ["model"], registry=r)  # fmt: skip
        self.outcomes = Counter("queuechat_request_outcomes", "How requests ended: stop, length, embeddings, scores, an error "
                                "code, or client_left", ["model", "outcome"], registry=r)  # fmt: skip
        self.key_wait = Histogram("queuechat_key_queue_wait_seconds", "Queue wait of each API key's requests "
                                  "(keys named in the keys file)", ["key"], buckets=_LATENCY, registry=r)  # fmt: skip
        self.key_tokens = Counter("queuechat_key_generated_tokens", "Completion tokens per API key", ["key"], registry=r)
        self.queued = Counter("queuechat_queued_requests", "Requests queued by class (interactive / batch keys, "
                              "batch_api lines) and the priority list they went to (0 first, 9 last)",
                              ["class", "priority"], registry=r)  # fmt: skip
        self.class_wait = Histogram("queuechat_class_queue_wait_seconds", "Queue wait by priority class of the "
                                    "request's API key", ["class"], buckets=_LATENCY, registry=r)  # fmt: skip
        self.kept = Counter("queuechat_kept_jobs", "Jobs kept past their connection, by how: stored, background "
                            "or detach (a grace period)", ["model", "how"], registry=r)  # fmt: skip
        self.subscribed = Gauge("queuechat_subscribed_channels", "Request channels this gateway's one subscriber "
                                "connection listens to (a stream, queued or running, each)", registry=r)  # fmt: skip
        self._cluster = _ClusterCollector()
        r.register(self._cluster)
        self._subscriber = _SubscriberCollector()
        r.register(self._subscriber)

    def watch_subscriber(self, subscriber: Any) -> None:
        """Export the state of the gateway's subscriber (gateway/subscriber.py) at each scrape."""
        self.subscribed.set_function(lambda: subscriber.channels)
        self._subscriber.subscriber = subscriber

    async def refresh(self, redis: Redis, live: dict[str, list[str]], failed: dict[str, dict[str, str]] | None = None) -> None:
        """Read the per-model state of every model in `live` (model -> live workers) for the next
        scrape; `failed`: model -> {worker: reason} for models that failed to load."""
        self._cluster.failed = failed or {}
        pipe = redis.pipeline(transaction=False)
        names = list(live)
        for model in names:
            pipe.llen(model)
            pipe.hgetall(slots_key(model))
            pipe.hgetall(stats_key(model))
        pipe.zcard(UNFINISHED_KEY)
        *replies, self._cluster.unfinished = await pipe.execute()
        snapshot = {}
        for i, model in enumerate(names):
            depth, slots, stats = replies[3 * i : 3 * i + 3]
            workers = set(live.get(model, []))
            snapshot[model] = (depth, workers, _decode(slots, workers), _decode(stats, workers, json.loads))
        self._cluster.snapshot = snapshot

    def trace(self, model: str, request_id: str, key: str | None = None, klass: str | None = None) -> RequestTrace:
        return RequestTrace(self, model, request_id, key, klass)


def _decode(raw: dict, workers: set[str], parse: Any = lambda v: v) -> dict[str, Any]:
    """Entries of live workers only (a dead worker's last report is not current)."""
    out = {}
    for key, value in raw.items():
        worker = key.decode() if isinstance(key, bytes) else key
        if worker in workers:
            out[worker] = parse(value.decode() if isinstance(value, bytes) else value)
    return out


class _ClusterCollector:
    """Per-model gauges from the last `Metrics.refresh` (read when /metrics is served)."""

    def __init__(self) -> None:
        self.snapshot: dict[str, tuple[int, set[str], dict[str, str], dict[str, dict]]] = {}
        self.failed: dict[str, dict[str, str]] = {}
        self.unfinished = 0

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("queuechat_queue_depth", "Tasks waiting in the model's Redis list", labels=["model"])
        live = GaugeMetricFamily("queuechat_live_workers", "Workers heartbeating for the model", labels=["model"])
        free = GaugeMetricFamily("queuechat_free_slots", "Batch slots free over the model's live workers", labels=["model"])
        total = GaugeMetricFamily("queuechat_slots", "Batch slots over the model's live workers", labels=["model"])
        running = GaugeMetricFamily("queuechat_worker_running_requests", "Requests in a worker's batch",
                                    labels=["model", "worker"])  # fmt: skip
        occupancy = GaugeMetricFamily("queuechat_worker_batch_occupancy", "Running requests / slots",
                                      labels=["model", "worker"])  # fmt: skip
        tokens = CounterMetricFamily("queuechat_worker_tokens", "Tokens a worker generated (embedding models: read) "
                                     "since it started", labels=["model", "worker"])  # fmt: skip
        gauges = {key: GaugeMetricFamily(name, text, labels=["model", "worker"])
                  for key, (name, text) in _WORKER_GAUGES.items()}  # fmt: skip
        for model, (queued, workers, slots, stats) in self.snapshot.items():
            depth.add_metric([model], queued)
            live.add_metric([model], len(workers))
            pairs = [tuple(int(x) for x in v.split("/")) for v in slots.values()]
            free.add_metric([model], sum(f for f, _ in pairs))
            total.add_metric([model], sum(t for _, t in pairs))
            for worker, s in stats.items():
                running.add_metric([model, worker], s.get("running", 0))
                occupancy.add_metric([model, worker], s.get("running", 0) / max(1, s.get("slots", 1)))
                tokens.add_metric([model, worker], s.get("tokens", 0))
                for key, gauge in gauges.items():
                    if key in s:
                        gauge.add_metric([model, worker], s[key])
        failed = GaugeMetricFamily("queuechat_model_load_failed", "1 for each model a live worker failed to load "
                                   "(the reason is in /v1/models and the worker's log)", labels=["model", "worker"])  # fmt: skip
        for model, workers in self.failed.items():
            for worker in workers:
                failed.add_metric([model, worker], 1)
        unfinished = GaugeMetricFamily("queuechat_kept_jobs_unfinished", "Kept jobs (background, stored, detached) "
                                       "not known to have finished, over every gateway")  # fmt: skip
        unfinished.add_metric([], self.unfinished)
        yield from (depth, live, free, total, running, occupancy, tokens, *gauges.values(), failed, unfinished)


class _SubscriberCollector:
    def __init__(self) -> None:
        self.subscriber: Any = None

    def collect(self) -> Iterable[Metric]:
        if self.subscriber is not None:
            yield CounterMetricFamily("queuechat_subscriber_connection_losses", "Times this gateway's subscriber "
                                      "connection was lost while requests listened on it (their streams then read "
                                      "their event log, or ended with queue_unavailable)",
                                      value=self.subscriber.reconnects)  # fmt: skip


# Heartbeat counters shown as they are (when the worker's engine reports them).
_WORKER_GAUGES = {
    "waiting": ("queuechat_worker_waiting_requests", "Requests a worker holds that wait for room in its batch"),
    "kv_tokens": ("queuechat_worker_kv_cache_tokens", "Token positions the batch's KV cache holds (rows x columns)"),
    "kv_budget_tokens": ("queuechat_worker_kv_cache_budget_tokens", "Most token positions the batch may hold"),
    "prefix_cache_bytes": ("queuechat_worker_prefix_cache_bytes", "Bytes the prefix cache holds"),
    "prefix_cache_limit_bytes": ("queuechat_worker_prefix_cache_limit_bytes", "The prefix cache's bound"),
    "grammar_cache_entries": ("queuechat_worker_grammar_cache_entries", "Compiled grammars a worker keeps (structured outputs)"),
    "engine_restarts": ("queuechat_worker_engine_restarts", "Times a worker started its engine server again after "
                        "it died (llama-cpp, vllm engines)"),
    "engine_lost_requests": ("queuechat_worker_engine_lost_requests", "Requests that ended because the worker's "
                             "engine server died under them"),
}


class RequestTrace:
    """Timings of one job's events; `close` records them and writes the request's log line."""

    def __init__(self, metrics: Metrics, model: str, request_id: str, key: str | None = None,
                 klass: str | None = None) -> None:  # fmt: skip
        self.metrics, self.model, self.request_id, self.key, self.klass = metrics, model, request_id, key, klass
        self.queued = time.monotonic()
        self.started: float | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.tokens = 0
        self.prompt_tokens = 0
        self.outcome = "client_left"
        metrics.active.labels(model).inc()

    def event(self, event: Event) -> None:
        now = time.monotonic()
        m, model = self.metrics, self.model
        if isinstance(event, StartEvent):
            self.started = now
            self.prompt_tokens = event.prompt_tokens
            m.queue_wait.labels(model).observe(now - self.queued)
            if self.key is not None:
                m.key_wait.labels(self.key).observe(now - self.queued)
            if self.klass is not None:
                m.class_wait.labels(self.klass).observe(now - self.queued)
        elif isinstance(event, TokenEvent) and event.text:
            if self.first is None:
                self.first = now
                m.ttft.labels(model).observe(now - self.queued)
            elif self.last is not None:
                m.itl.labels(model).observe(now - self.last)
            self.last = now
        elif isinstance(event, DoneEvent):
            self.tokens = event.usage.completion_tokens
            self.prompt_tokens = event.usage.prompt_tokens
            self.outcome = event.finish_reason
        elif isinstance(event, EmbeddingsEvent):
            self.prompt_tokens = event.prompt_tokens
            self.outcome = "embeddings"
        elif isinstance(event, ScoresEvent):
            self.prompt_tokens = event.prompt_tokens
            self.outcome = "scores"
        elif isinstance(event, ErrorEvent):
            self.outcome = event.code

    def fail(self, code: str | None) -> None:
        self.outcome = code or "error"

    def close(self) -> None:
        m, model = self.metrics, self.model
        m.active.labels(model).dec()
        m.outcomes.labels(model, self.outcome).inc()
        m.tokens.labels(model).inc(self.tokens)
        if self.key is not None:
            m.key_tokens.labels(self.key).inc(self.tokens)
        m.prompt_tokens.labels(model).inc(self.prompt_tokens)
        ms = lambda t: f"{(t - self.queued) * 1000:.0f}ms" if t is not None else "-"  # noqa: E731
        request_log.info(
            "request %s model=%s outcome=%s queue_wait=%s ttft=%s prompt_tokens=%d tokens=%d duration=%s",
            self.request_id, model, self.outcome, ms(self.started), ms(self.first), self.prompt_tokens,
            self.tokens, ms(time.monotonic()),
        )  # fmt: skip


class HttpLabels:
    """The labels one request is counted under besides its endpoint and status: the route that
    knows the model sets it (through `gateway.deps.HttpLabelsDep`)."""

    _KEY = "queuechat.http_labels"

    def __init__(self) -> None:
        self.model = ""

    @classmethod
    def of(cls, scope: Scope) -> HttpLabels:
        """The request's labels, created on first use (by the middleware, before the route runs)."""
        labels = scope.get(cls._KEY)
        if labels is None:
            labels = scope[cls._KEY] = cls()
        return labels


class HttpMetricsMiddleware:
    """Counts every /v1 response by endpoint, model (see HttpLabels) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        status, labels = 500, HttpLabels.of(scope)

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope.get("route")  # the matched route's template: ids never become label values
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.http.labels(endpoint, labels.model, str(status)).inc()
