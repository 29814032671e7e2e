"""A Redis Sentinel deployment of real processes for tests, all on 127.0.0.1 free ports: a master,
its replica (`--replicaof`), both with a password, and three Sentinels (`redis-server <conf>
--sentinel`, each with a writable config file of its own, and a password of their own too)
that fail over after one second of silence.

    with SentinelGroup(tmp_path) as group:
        env = stack_env(UNREACHABLE_URL, models_file, **group.env())
        group.master.stop(signal.SIGKILL)
        group.wait_promoted(timeout=30)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import redis

from queuechat.launcher import LOCAL, redis_command
from tests.integration.processes import Process, free_port, wait_for

MASTER_NAME = "queuechat-test"
PASSWORD = "data-node-secret"  # requirepass/masterauth of master and replica
SENTINEL_PASSWORD = "sentinel-secret"  # the Sentinels' own
# Port 1: a process that used redis_url's address instead of asking the Sentinels reaches nothing.
UNREACHABLE_URL = f"redis://{LOCAL}:1/0"


class DataNode(Process):
    """redis-server with a password, in a folder of its own; a replica of `replica_of` if given."""

    def __init__(self, workdir: Path, replica_of: int | None = None) -> None:
        self.port = free_port()
        folder = workdir / f"redis-{self.port}"
        folder.mkdir()
        argv = redis_command(self.port, folder, password=PASSWORD) + ["--masterauth", PASSWORD]
        argv += ["--replicaof", LOCAL, str(replica_of)] if replica_of else []
        super().__init__(argv, folder / "redis.log", name=f"redis-{self.port}")
        self.client = redis.Redis(host=LOCAL, port=self.port, password=PASSWORD, socket_timeout=2,
                                  socket_connect_timeout=2)  # fmt: skip

    def describe(self) -> str:
        return f"{self.name} (up, and in sync if a replica)"

    def is_ready(self) -> bool:
        info = self.client.info("replication")
        return info["role"] == "master" or info.get("master_link_status") == "up"


class SentinelNode(Process):
    """A Sentinel watching the master at `master_port`: down after 1 s of silence, quorum 2."""

    def __init__(self, workdir: Path, master_port: int) -> None:
        self.port = free_port()
        folder = workdir / f"sentinel-{self.port}"
        folder.mkdir()
        conf = folder / "sentinel.conf"  # Sentinel rewrites it as it learns: it must be writable
        conf.write_text("\n".join([
            f"port {self.port}", f"bind {LOCAL}", f"dir {folder}", f"requirepass {SENTINEL_PASSWORD}",
            f"sentinel monitor {MASTER_NAME} {LOCAL} {master_port} 2",
            f"sentinel auth-pass {MASTER_NAME} {PASSWORD}",
            f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
            f"sentinel failover-timeout {MASTER_NAME} 6000",
            f"sentinel parallel-syncs {MASTER_NAME} 1", "",
        ]))  # fmt: skip
        argv = [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"]
        super().__init__(argv, folder / "sentinel.log", name=f"sentinel-{self.port}")
        self.client = redis.Redis(host=LOCAL, port=self.port, password=SENTINEL_PASSWORD, socket_timeout=2,
                                  socket_connect_timeout=2)  # fmt: skip

    def describe(self) -> str:
        return f"{self.name} to see the replica and the other two Sentinels"

    def is_ready(self) -> bool:
        state = self.client.sentinel_master(MASTER_NAME)
        return state["num-slaves"] >= 1 and state["num-other-sentinels"] >= 2

    def master_port(self) -> int:
        _host, port = self.client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)


class SentinelGroup:
    """Master, replica and three Sentinels, started and ready at construction; all stopped by
    `stop()` (or leaving the `with`), whatever failed on the way."""

    def __init__(self, workdir: Path, timeout: float = 40) -> None:
        self.processes: list[Process] = []
        try:
            self.master = self._add(DataNode(workdir))
            self.master.ready(10)
            self.replica = self._add(DataNode(workdir, replica_of=self.master.port))
            self.replica.wait_ready(15)
            self.sentinels = [self._add(SentinelNode(workdir, self.master.port)) for _ in range(3)]
            for sentinel in self.sentinels:  # they find each other through the master (hello, every 2 s)
                sentinel.wait_ready(timeout, watch=self.processes)
        except BaseException:
            self.stop()
            raise

    def _add(self, proc: Process) -> Process:
        self.processes.append(proc)
        return proc

    def env(self) -> dict[str, str]:
        """The only way QueueChat's processes are told where Redis is (with UNREACHABLE_URL)."""
        return {"QUEUECHAT_REDIS_SENTINELS": ",".join(f"{LOCAL}:{s.port}" for s in self.sentinels),
                "QUEUECHAT_REDIS_MASTER": MASTER_NAME, "QUEUECHAT_REDIS_PASSWORD": PASSWORD,
                "QUEUECHAT_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}  # fmt: skip

    def wait_promoted(self, timeout: float) -> None:
        """Until every Sentinel names the replica as the master, and the replica says so too."""

        def promoted() -> bool:
            return (all(s.master_port() == self.replica.port for s in self.sentinels)
                    and self.replica.client.info("replication")["role"] == "master")  # fmt: skip

        wait_for(promoted, "the Sentinels to promote the replica", timeout, *self.sentinels)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def __enter__(self) -> SentinelGroup:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
