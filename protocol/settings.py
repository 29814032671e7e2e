"""Settings every process must agree on, from the environment (prefix QUEUECHAT_).

Each role extends `QueueSettings` with its own: `gateway.settings.GatewaySettings`,
`workers.settings.WorkerSettings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_FILE = REPO_ROOT / "models.yaml"


class QueueSettings(BaseSettings):
    """What gateway and workers must agree on."""

    model_config = SettingsConfigDict(env_prefix="QUEUECHAT_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("redis_url", "QUEUECHAT_REDIS_URL", "REDIS_URL"),
    )
    # Redis Sentinel: when `redis_sentinels` is set, every process asks these Sentinels where the
    # master named `redis_master` is (at start and after each lost connection), and redis_url then
    # gives only the database number and the credentials.  See protocol/redis_clients.py.
    redis_sentinels: str = Field("", description="comma-separated host:port of the Redis Sentinels to ask "
                                 "for the master; empty: redis_url is the Redis itself")
    redis_master: str = Field("mymaster", min_length=1, description="the master's name in the Sentinels")
    redis_password: str | None = Field(None, description="the Redis password (the master's and replicas' "
                                       "requirepass); default: the one in redis_url")
    redis_sentinel_password: str | None = Field(None, description="the Sentinels' own password, if they have one")
    models_file: Path = DEFAULT_MODELS_FILE
    heartbeat_interval: float = Field(1.0, gt=0, description="seconds between worker heartbeats")
    heartbeat_ttl: float = Field(3.0, gt=0, description="a worker silent this long counts as dead")
    keepalive_interval: float = Field(5.0, gt=0, description="a request with nothing to send for this long gets "
                                      "a keep-alive event; keep it well under the gateway's idle_timeout")
    result_ttl: int = Field(3600, ge=1, le=86400, description="seconds a kept job (stored, background or "
                            "resumable) and its event log stay in Redis after its last event")

    @field_validator("redis_sentinels")
    @classmethod
    def _host_port_pairs(cls, value: str) -> str:
        parse_sentinels(value)
        return value.strip()

    @model_validator(mode="after")
    def _plain_redis_behind_sentinels(self) -> QueueSettings:
        if self.redis_sentinels and urlsplit(self.redis_url).scheme != "redis":
            raise ValueError("with QUEUECHAT_REDIS_SENTINELS, QUEUECHAT_REDIS_URL gives only the database and "
                             "the password, as redis://[:password@]any/<db> (TLS and sockets are not supported)")
        return self

    def sentinels(self) -> list[tuple[str, int]]:
        """The Sentinels' (host, port) pairs; empty when Redis is reached at redis_url directly."""
        return parse_sentinels(self.redis_sentinels)

    def redis_credentials(self) -> tuple[str | None, str | None]:
        """(username, password) of the data nodes: redis_password wins over redis_url's."""
        url = urlsplit(self.redis_url)
        username = unquote(url.username) if url.username else None
        password = unquote(url.password) if url.password else None
        return username, self.redis_password if self.redis_password is not None else password

    def redis_db(self) -> int:
        path = urlsplit(self.redis_url).path.strip("/")
        return int(path) if path.isdigit() else 0

    def direct_redis_url(self) -> str:
        """redis_url, with redis_password in it when that is set (no Sentinel)."""
        if self.redis_password is None:
            return self.redis_url
        url = urlsplit(self.redis_url)
        username, password = self.redis_credentials()
        host = url.netloc.rpartition("@")[2]
        auth = f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"
        return urlunsplit(url._replace(netloc=auth + host))

    def broker_url(self) -> str:
        """Celery's broker: redis_url, or kombu's `sentinel://[:password@]host:port/db;sentinel://...`
        (each carrying the master's credentials: kombu reads those of the first)."""
        if not self.redis_sentinels:
            return self.direct_redis_url()
        username, password = self.redis_credentials()
        auth = f"{quote(username or '', safe='')}:{quote(password, safe='')}@" if password is not None else ""
        db = self.redis_db()
        hosts = [(f"[{host}]" if ":" in host else host, port) for host, port in self.sentinels()]  # IPv6 in brackets
        return ";".join(f"sentinel://{auth}{host}:{port}/{db}" for host, port in hosts)

    def sentinel_kwargs(self) -> dict[str, Any]:
        """How to talk to the Sentinels themselves (redis-py's `sentinel_kwargs`): their password, and
        short timeouts, so that one Sentinel that is down costs a moment, not a request."""
        kwargs: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 2.0}
        if self.redis_sentinel_password:
            kwargs["password"] = self.redis_sentinel_password
        return kwargs

    def celery_conf(self) -> dict[str, Any]:
        """The Celery configuration of every QueueChat app: the workers' (which run tasks) and the
        gateway's (which sends them).  Plain settings; building an app is each role's business."""
        return {
            "broker_url": self.broker_url(),
            "task_serializer": "json",
            "accept_content": ["json"],
            "task_ignore_result": True,  # results travel on pub/sub, not through a result backend
            # A task is acknowledged when it ends, and a worker holds one unacknowledged task per
            # slot: the backlog stays in Redis, visible in Flower, until a worker has room.
            "task_acks_late": True,
            "worker_prefetch_multiplier": 1,
            # Threads, not prefork: models are loaded once in the worker's main process (CUDA does
            # not survive fork), and the consumer keeps heartbeating while a task generates.
            "worker_pool": "threads",
            # "auto" unless -c says otherwise: the worker sizes its pool to the served models'
            # batch slots at start-up (workers/lifecycle.py).
            "worker_concurrency": "auto",
            # No ack emulation in Redis: a task taken by a worker that dies is not restored and
            # generated twice (the gateway reports the dead worker instead: at most once), and the
            # worker survives a Redis restart (kombu 5.7 crashes restoring unacked tasks when the
            # connection is lost). Late acks still make the pool's size the prefetch limit.
            "broker_transport_options": self._transport_options(),
            "worker_send_task_events": True,  # for Flower
            "task_send_sent_event": True,
            "broker_connection_retry_on_startup": True,
            "worker_cancel_long_running_tasks_on_connection_loss": False,
        }

    def _transport_options(self) -> dict[str, Any]:
        if not self.redis_sentinels:
            return {"ack_emulation": False}
        # Through Sentinel: kombu asks them for the master on each (re)connection.  A master that
        # cannot be reached (a failover across a network) fails a connection attempt in 5 s, not
        # the OS's minutes; kombu's health checks already drop a BRPOP that stays unanswered.
        return {"ack_emulation": False, "master_name": self.redis_master, "sentinel_kwargs": self.sentinel_kwargs(),
                "socket_connect_timeout": 5.0}


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """"host:port,host:port" -> [(host, port), ...]; ValueError when a pair is not one."""
    nodes = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a Sentinel is host:port, not {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    return nodes
