"""Builds the FastAPI app: connections live on app.state for the app's lifetime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery import Celery
from fastapi import FastAPI

from gateway.batch_runner import BatchRunner
from gateway.batches import BatchStore
from gateway.errors import install_error_handlers
from gateway.files import Files
from gateway.jobs import JobStore
from gateway.keep import Detacher
from gateway.metrics import HttpMetricsMiddleware, Metrics
from gateway.registry import Registry
from gateway.relay import Relay
from gateway.routes import (
    batches,
    chat,
    completions,
    embeddings,
    files,
    health,
    models,
    page,
    responses,
    scoring,
    stored_chat,
    tokenize,
)
from gateway.routes import metrics as metrics_route
from gateway.security import GuardMiddleware
from gateway.settings import GatewaySettings
from gateway.storage import LocalStorage, S3Storage, Storage
from gateway.tenants import FairShare
from protocol.models_file import load_models_file
from protocol.redis_clients import async_client

log = logging.getLogger(__name__)


def file_storage(settings: GatewaySettings) -> Storage:
    if settings.files_s3_bucket:
        return S3Storage(settings.files_s3_bucket, settings.files_s3_prefix, settings.files_s3_endpoint)
    return LocalStorage(settings.files_dir)


async def sweep_forever(store: JobStore, files: Files, interval: float) -> None:
    """Settle kept jobs whose worker died, even when nobody reads them, and drop the content of
    expired files (every gateway does this; both are idempotent)."""
    while True:
        await asyncio.sleep(interval)
        try:
            if ended := await store.sweep():
                log.warning("ended %d kept job(s) whose worker stopped or that never started", ended)
            if gone := await files.sweep():
                log.info("deleted %d expired file(s)", gone)
        except Exception as exc:  # noqa: BLE001  (Redis or the storage away, say: try again next round)
            log.warning("sweeping kept jobs and files failed: %s", exc)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    tenants = settings.tenants()
    known_models = load_models_file(settings.models_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A few connections, shared by every request: one holds the gateway's subscriptions
        # (gateway/subscriber.py), the others run commands; when all are busy, a command waits
        # a little for one instead of failing.
        # A Redis that cannot be reached fails a connection attempt in 5 s, not the OS's minutes.
        # Plain or through Sentinel (QUEUECHAT_REDIS_SENTINELS), as every process: one factory.
        redis = async_client(settings, max_connections=settings.redis_max_connections, timeout=10,
                             socket_connect_timeout=5)  # fmt: skip
        celery = Celery("queuechat-gateway", set_as_current=False)  # sends tasks by name; runs none
        celery.conf.update(settings.celery_conf(), broker_pool_limit=settings.broker_connections)
        registry = Registry(redis, known_models, settings.heartbeat_ttl)
        app.state.redis = redis
        app.state.relay = Relay(redis, celery, registry, settings.queue_timeout, settings.idle_timeout,
                                max_queue=settings.max_queue, metrics=metrics, show_prompts=settings.show_prompts,
                                fair=FairShare(redis, tenants) if tenants else None,
                                buffer_bytes=settings.stream_buffer_bytes)  # fmt: skip
        metrics.watch_subscriber(app.state.relay.subscriber)
        keeper = app.state.keeper = Detacher(JobStore(redis, registry, settings.result_ttl, metrics))
        app.state.files = Files(redis, file_storage(settings), settings.max_upload_bytes)
        app.state.batches = BatchStore(redis, settings.result_ttl)
        runner = BatchRunner(app.state.batches, app.state.files, app.state.relay, keeper.store, settings)
        loops = [asyncio.create_task(sweep_forever(keeper.store, app.state.files, settings.sweep_interval)),
                 asyncio.create_task(runner.run_forever())]  # fmt: skip
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
            await keeper.close()
            await asyncio.gather(*loops, return_exceptions=True)
            await app.state.relay.aclose()  # its subscriber connection
            await redis.aclose()  # and its pool (and its connections to the Sentinels)
            celery.close()

    metrics = Metrics()
    app = FastAPI(title="QueueChat", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    uploads = {"/v1/files": (settings.max_upload_bytes + 65536, settings.upload_timeout)}  # + the multipart framing
    app.add_middleware(GuardMiddleware, keys=tenants, max_body_bytes=settings.max_body_bytes,
                       body_timeout=settings.body_timeout, uploads=uploads)  # fmt: skip
    for module in (chat, stored_chat, completions, responses, files, batches, embeddings, scoring, tokenize, models,
                   health, metrics_route, page):  # fmt: skip
        app.include_router(module.router)
    return app
