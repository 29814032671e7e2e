"""Starting and stopping QueueChat's processes: the one place that writes their command lines.

Each class starts one child process, in its own process group, with its output in a log file (or
this terminal), and knows when it is ready:

    RedisServer     `redis-server --port <free> --save ""` (throwaway,   ready: it answers PING
                    or append-only in `persistent_dir`)
    WorkerProcess   `celery -A workers worker -Q <models> -n <name>`     ready: its heartbeat is in Redis
    GatewayProcess  `python -m gateway --port <free>`                    ready: GET /health is 200
    FlowerProcess   `queuechat flower --port <p> --address 127.0.0.1`    ready: GET /healthcheck is 200

`Stack` starts a set in order and stops it in reverse; added as Redis, Flower, workers, gateway,
they stop as gateway, workers, Flower, Redis.  Stopping sends SIGTERM to the process group, then
SIGKILL after a timeout.  A stack is a context manager, and stops everything it holds even when
starting (or waiting for) a later process fails:

    with Stack() as stack:
        server = stack.add(RedisServer(log_path=logs / "redis.log"))
        env = stack_env(server.url, models_file)
        stack.add(WorkerProcess(["smollm2-135m"], env, log_path=logs / "worker.log"), wait=False)
        gateway = stack.add(GatewayProcess(env, log_path=logs / "gateway.log"))
        stack.wait_ready(timeout=300)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import httpx
import redis

from protocol import live_workers_key
from protocol.redis_clients import sync_client
from protocol.settings import QueueSettings
from queuechat.process import LOCAL, REPO, P, Process, free_port, wait_for

__all__ = [
    "BIN", "LOCAL", "REPO", "Process", "free_port", "wait_for", "stack_env", "redis_settings", "redis_answers",
    "redis_command", "worker_args", "worker_command", "gateway_command", "flower_command",
    "RedisServer", "WorkerProcess", "GatewayProcess", "FlowerProcess", "Stack",
]  # fmt: skip

BIN = Path(sys.executable).parent  # the virtual environment's scripts: celery, queuechat


def stack_env(redis_url: str, models_file: Path | str | None = None, base: Mapping[str, str] | None = None,
              **extra: str) -> dict[str, str]:  # fmt: skip
    """The environment of every process of one stack: `base` (default: this one's) with the
    QueueChat settings they must agree on; REDIS_URL is dropped so only QUEUECHAT_REDIS_URL counts."""
    env = dict(os.environ if base is None else base)
    env.pop("REDIS_URL", None)
    env.update(QUEUECHAT_REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    if models_file is not None:
        env["QUEUECHAT_MODELS_FILE"] = str(models_file)
    env.update(extra)
    return env


_REDIS_FIELDS = ("redis_url", "redis_sentinels", "redis_master", "redis_password", "redis_sentinel_password")


def redis_settings(env: Mapping[str, str]) -> QueueSettings:
    """Where a child process with environment `env` finds Redis (this process's environment does
    not count): QUEUECHAT_REDIS_URL (or REDIS_URL), QUEUECHAT_REDIS_SENTINELS and the rest."""
    values = {name: env[f"QUEUECHAT_{name.upper()}"] for name in _REDIS_FIELDS if f"QUEUECHAT_{name.upper()}" in env}
    if "redis_url" not in values and "REDIS_URL" in env:
        values["redis_url"] = env["REDIS_URL"]
    defaults = {name: QueueSettings.model_fields[name].default for name in _REDIS_FIELDS}
    return QueueSettings(**{**defaults, **values})


def redis_answers(target: str | QueueSettings) -> bool:
    """Whether the Redis at `target` (a URL, or the settings: plain or through Sentinel) answers PING."""
    settings = redis_settings({"QUEUECHAT_REDIS_URL": target}) if isinstance(target, str) else target
    client = sync_client(settings, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# ---- command lines ---------------------------------------------------------------------------


def redis_command(port: int, workdir: Path | None = None, persistent_dir: Path | None = None, *,
                  bind: str = LOCAL, password: str | None = None) -> list[str]:  # fmt: skip
    """`redis-server` on `bind`:`port` (default 127.0.0.1), no RDB snapshots.  Without
    `persistent_dir` nothing outlives it (its files, if any, in `workdir`); with it, every write
    goes to an append-only file in that folder, fsynced every second, which the next server started
    there replays: queued tasks, kept jobs and batches survive a restart (at most the last second
    is lost on a crash).  With `password`, clients must AUTH."""
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", bind,
            "--save", ""]  # fmt: skip
    argv += ["--requirepass", password] if password else []
    if persistent_dir is not None:
        return argv + ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(persistent_dir)]
    return argv + ["--appendonly", "no"] + (["--dir", str(workdir)] if workdir is not None else [])


def worker_args(queues: Iterable[str], name: str | None = None, loglevel: str = "INFO",
                concurrency: int | None = None, extra: Iterable[str] = ()) -> list[str]:  # fmt: skip
    """`worker -Q a,b -n NAME --loglevel L [--concurrency N] ...`: what follows `celery -A workers`,
    and what `queuechat worker` hands to `app.worker_main`.  NAME defaults to `<first queue>@%h`."""
    queues = [q for q in queues if q]
    argv = ["worker", "-Q", ",".join(queues), "-n", name or f"{queues[0]}@%h", "--loglevel", loglevel]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return [*argv, *extra]


def worker_command(queues: Iterable[str], name: str | None = None, loglevel: str = "INFO",
                   concurrency: int | None = None, extra: Iterable[str] = ()) -> list[str]:  # fmt: skip
    """`celery -A workers worker ...`: the worker as a process of its own."""
    return [str(BIN / "celery"), "-A", "workers", *worker_args(queues, name, loglevel, concurrency, extra)]


def gateway_command(port: int, host: str | None = None, log_level: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "gateway"]
    argv += ["--host", host] if host else []
    argv += ["--port", str(port)]
    return argv + (["--log-level", log_level] if log_level else [])


def flower_command(port: int, address: str = LOCAL, program: list[str] | None = None) -> list[str]:
    """`queuechat flower` (or `program`, e.g. `celery -A workers flower`) on `address:port`."""
    return [*(program or [str(BIN / "queuechat"), "flower"]), f"--port={port}", f"--address={address}"]


# ---- processes -------------------------------------------------------------------------------


class RedisServer(Process):
    """`redis-server` on `bind:port` (default: 127.0.0.1, a free port); its files in `workdir`; with
    `password`, clients must AUTH (it is in `url`).  No persistence, unless `persistent_dir` is
    given: then an append-only file there (created if need be), which the next RedisServer started
    on that folder reloads.  `prefix`: see `Process`."""

    ready_timeout = 15.0

    def __init__(self, port: int | None = None, *, workdir: Path | None = None, log_path: Path | None = None,
                 env: Mapping[str, str] | None = None, persistent_dir: Path | None = None, bind: str = LOCAL,
                 password: str | None = None, prefix: Sequence[str] = ()) -> None:  # fmt: skip
        self.port = port or free_port()
        self.url = f"redis://{f':{password}@' if password else ''}{bind}:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        self.persistent_dir = persistent_dir
        if persistent_dir is not None:
            Path(persistent_dir).mkdir(parents=True, exist_ok=True)
        argv = redis_command(self.port, workdir, persistent_dir, bind=bind, password=password)
        super().__init__(argv, log_path, env, name="redis-server", prefix=prefix)

    def describe(self) -> str:
        return f"redis-server on port {self.port}"

    def is_ready(self) -> bool:
        return bool(self.client.ping())


class WorkerProcess(Process):
    """A Celery worker for `queues` (model names); ready once it heartbeats for all of them."""

    ready_timeout = 120.0

    def __init__(self, queues: Iterable[str], env: Mapping[str, str] | None = None, *, name: str | None = None,
                 loglevel: str = "INFO", concurrency: int | None = None, extra_args: Iterable[str] = (),
                 log_path: Path | None = None, prefix: Sequence[str] = ()) -> None:  # fmt: skip
        self.queues = [q for q in queues if q]
        argv = worker_command(self.queues, name, loglevel, concurrency, extra_args)
        super().__init__(argv, log_path, env, name=argv[argv.index("-n") + 1], prefix=prefix)
        self.redis_client: redis.Redis | None = None
        self._node_name = ""

    @property
    def node_name(self) -> str:
        """The name it heartbeats as: `name` with %h (and the like) expanded as Celery does."""
        if not self._node_name:
            from celery.utils.nodenames import default_nodename, host_format

            self._node_name = host_format(default_nodename(self.name))
        return self._node_name

    def describe(self) -> str:
        return f"worker {self.name} to announce {self.queues}"

    def is_ready(self) -> bool:
        if self.redis_client is None:
            self.redis_client = sync_client(redis_settings(os.environ if self.env is None else self.env))
        node = self.node_name
        return all(self.redis_client.zscore(live_workers_key(q), node) is not None for q in self.queues)

    def wait_live(self, redis_client: redis.Redis | None = None, timeout: float | None = None) -> WorkerProcess:
        """`wait_ready`, reading the heartbeats from `redis_client` (default: the worker's Redis)."""
        self.redis_client = redis_client or self.redis_client
        return self.wait_ready(timeout)


class GatewayProcess(Process):
    """`python -m gateway` on `port` (default: a free one); ready once GET /health answers 200."""

    def __init__(self, env: Mapping[str, str] | None = None, *, port: int | None = None, host: str | None = None,
                 log_level: str | None = None, log_path: Path | None = None,
                 prefix: Sequence[str] = ()) -> None:  # fmt: skip
        self.port = port or free_port()
        reach = LOCAL if host in (None, "", "0.0.0.0", "::") else host
        self.base_url = f"http://{f'[{reach}]' if ':' in reach else reach}:{self.port}"
        self.url = f"{self.base_url}/v1"
        argv = gateway_command(self.port, host, log_level)
        super().__init__(argv, log_path, env, name="gateway", prefix=prefix)

    def is_ready(self) -> bool:
        return httpx.get(f"{self.base_url}/health").status_code == 200


class FlowerProcess(Process):
    """Flower (`queuechat flower`, or `program`) on `address:port`; ready once /healthcheck answers.
    Its HTTP API answers without a password (FLOWER_UNAUTHENTICATED_API, unless `env` says otherwise):
    keep it on 127.0.0.1."""

    ready_timeout = 60.0

    def __init__(self, port: int | None = None, env: Mapping[str, str] | None = None, *, address: str = LOCAL,
                 log_path: Path | None = None, program: list[str] | None = None) -> None:  # fmt: skip
        self.port = port or free_port()
        self.base_url = f"http://{address}:{self.port}"
        env = {"FLOWER_UNAUTHENTICATED_API": "true", **(os.environ if env is None else env)}
        super().__init__(flower_command(self.port, address, program), log_path, env, name="flower")

    def is_ready(self) -> bool:
        return httpx.get(f"{self.base_url}/healthcheck").status_code == 200


class Stack:
    """Processes added in start order, stopped in reverse; all of them, whatever fails on the way."""

    def __init__(self, stop_timeout: float = 20) -> None:
        self.stop_timeout = stop_timeout
        self.processes: list[Process] = []
        self._exits = ExitStack()
        self._deadline = 0.0

    def add(self, proc: P, wait: bool = True, timeout: float | None = None) -> P:
        """Take `proc` (already started) into the stack; with `wait`, return once it is ready."""
        self.processes.append(proc)
        self._exits.callback(self._stop, proc)
        return proc.wait_ready(timeout, watch=self.processes) if wait else proc

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for every process in turn (within `timeout` seconds in all); fail if any exits."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for proc in self.processes:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            proc.wait_ready(left, watch=self.processes)

    def exited(self) -> Process | None:
        """The first process that has exited, if any."""
        return next((proc for proc in self.processes if proc.exited()), None)

    def _stop(self, proc: Process) -> None:
        proc.stop(timeout=max(1.0, self._deadline - time.monotonic()))

    def stop(self) -> None:
        """SIGTERM each (latest first), SIGKILL what is still up `stop_timeout` seconds after the start of this."""
        self._deadline = time.monotonic() + self.stop_timeout
        self._exits.close()
        self.processes.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
