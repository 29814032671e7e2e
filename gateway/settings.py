"""Gateway settings, from the environment (prefix QUEUECHAT_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from gateway.tenants import Tenant, parse_keys
from protocol.settings import QueueSettings


class GatewaySettings(QueueSettings):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    queue_timeout: float = Field(
        300.0, gt=0, description="longest wait for a worker to start a request; also the task expiry"
    )
    idle_timeout: float = Field(60.0, gt=0, description="longest silence from a worker mid-request")

    redis_max_connections: int = Field(
        6, ge=2, description="connections to Redis, shared by all requests: one subscribes to every request's "
        "events, the others run commands (Celery's task sends use up to `broker_pool_limit` more)"
    )
    broker_connections: int = Field(1, ge=1, description="connections that send tasks (Celery's broker_pool_limit)")
    stream_buffer_bytes: int = Field(
        1 << 20, ge=4096, description="events waiting for a slow client beyond which its stream is stopped"
    )

    sweep_interval: float = Field(5.0, gt=0, description="seconds between checks of kept jobs whose worker may have died")

    show_prompts: bool = Field(False, description="put the start of each prompt in task arguments (Flower, logs)")

    # Security and limits
    api_keys: str = Field("", description="comma-separated API keys; empty: no key needed")
    api_keys_file: Path | None = Field(None, description="a file with one API key per line")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    max_queue: int = Field(256, ge=1, description="requests waiting per model beyond which 429")
    max_tokens_limit: int = Field(4096, ge=1, description="largest max_tokens a request may ask for")
    max_messages: int = Field(512, ge=1)
    max_prompt_chars: int = Field(200_000, ge=1, description="total characters of messages or prompt")
    header_timeout: float = Field(10.0, gt=0, description="seconds a client has to send a request's headers")
    body_timeout: float = Field(30.0, gt=0, description="seconds a client has to send a request's body")
    max_connections: int = Field(4096, ge=1, description="open connections beyond which requests get 503")

    # Files (uploads for the Batch API, and batch results)
    files_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "queuechat" / "files",
                            description="where files are kept (the local backend)")  # fmt: skip
    files_s3_bucket: str | None = Field(None, description="keep files in this S3-compatible bucket instead")
    files_s3_prefix: str = Field("queuechat/files/", description="the objects' key prefix in that bucket")
    files_s3_endpoint: str | None = Field(None, description="the object store's URL (MinIO, Ceph...); AWS when unset")
    max_upload_bytes: int = Field(200 << 20, ge=1024, description="largest file POST /v1/files accepts")
    upload_timeout: float = Field(600.0, gt=0, description="seconds a client has to send an upload's body")

    batch_inflight: int = Field(4, ge=1, description="batch lines queued or running per model, over all batches "
                                "(keep it under the model's slots: the rest stay free for interactive requests)")
    batch_lease: float = Field(15.0, gt=0, description="seconds after which another gateway takes over a batch "
                               "whose runner stopped")

    def tenants(self) -> list[Tenant]:
        """Every accepted API key with its attributes (see gateway/tenants.py); empty: the API is open."""
        lines = [k.strip() for k in self.api_keys.split(",")]
        if self.api_keys_file is not None:
            lines += self.api_keys_file.read_text().splitlines()
        return parse_keys(lines)

    def keys(self) -> list[str]:
        """Every accepted API key (environment and file); empty means the API is open."""
        return [tenant.key for tenant in self.tenants()]
