"""Redis settings and the one client factory (protocol/redis_clients.py): plain URL or Sentinel,
for redis-py (sync and asyncio), Celery's broker, the launcher and Flower.  Nothing here
connects: clients connect on first use, and these tests only look at how they were built."""

from __future__ import annotations

import asyncio

import kombu
import pytest
import redis
import redis.asyncio
from pydantic import ValidationError

from protocol.redis_clients import (
    AsyncSentinelMaster,
    BlockingSentinelPool,
    SentinelMaster,
    async_client,
    describe,
    sync_client,
)
from protocol.settings import QueueSettings
from queuechat.launcher import redis_settings

SENTINELS = "127.0.0.1:26379, 127.0.0.1:26380,[::1]:26381"


def sentinel_settings(**extra: object) -> QueueSettings:
    values = {"redis_url": "redis://:url%2Fpw@127.0.0.1:1/3", "redis_sentinels": SENTINELS, "redis_master": "main",
              "redis_password": None, "redis_sentinel_password": None, **extra}  # fmt: skip
    return QueueSettings(**values)


def test_plain_settings_keep_the_broker_and_transport_options_as_they_were() -> None:
    settings = QueueSettings(redis_url="redis://127.0.0.1:6390/2", redis_sentinels="", redis_password=None)
    conf = settings.celery_conf()
    assert conf["broker_url"] == "redis://127.0.0.1:6390/2"
    assert conf["broker_transport_options"] == {"ack_emulation": False}
    assert settings.sentinels() == []


def test_redis_password_goes_into_the_plain_url() -> None:
    settings = QueueSettings(redis_url="redis://u@127.0.0.1:6390/2", redis_sentinels="", redis_password="p@ss:/")
    assert settings.redis_credentials() == ("u", "p@ss:/")
    assert settings.celery_conf()["broker_url"] == "redis://u:p%40ss%3A%2F@127.0.0.1:6390/2"
    pool = sync_client(settings).connection_pool
    assert (pool.connection_kwargs["username"], pool.connection_kwargs["password"]) == ("u", "p@ss:/")


def test_sentinels_parse_and_bad_ones_fail_at_start() -> None:
    assert sentinel_settings().sentinels() == [("127.0.0.1", 26379), ("127.0.0.1", 26380), ("::1", 26381)]
    for bad in ("127.0.0.1", "127.0.0.1:port", ":26379", "host:0"):
        with pytest.raises(ValidationError):
            sentinel_settings(redis_sentinels=bad)
    with pytest.raises(ValidationError, match="TLS and sockets are not supported"):
        sentinel_settings(redis_url="rediss://:pw@h/0")


def test_the_broker_goes_through_every_sentinel_with_the_masters_password() -> None:
    settings = sentinel_settings(redis_sentinel_password="s3")
    conf = settings.celery_conf()
    options = conf["broker_transport_options"]
    assert options["ack_emulation"] is False and options["master_name"] == "main"
    assert options["sentinel_kwargs"]["password"] == "s3"
    connection = kombu.Connection(conf["broker_url"], transport_options=options)  # parses; connects to nothing
    assert connection.transport_cls == "sentinel"
    assert [kombu.Connection(url).port for url in connection.alt] == [26379, 26380, 26381]
    assert (connection.password, connection.virtual_host) == ("url/pw", "3")
    assert settings.redis_db() == 3


def test_redis_password_wins_over_the_urls() -> None:
    settings = sentinel_settings(redis_password="env-pw")
    assert settings.broker_url().startswith("sentinel://:env-pw@127.0.0.1:26379/3;")
    assert sync_client(settings).connection_pool.connection_kwargs["password"] == "env-pw"


def test_a_sync_client_asks_the_sentinels_for_the_master() -> None:
    client = sync_client(sentinel_settings(redis_sentinel_password="s3"), socket_timeout=3)
    try:
        assert isinstance(client, SentinelMaster)
        pool = client.connection_pool
        assert pool.service_name == "main" and pool.is_master
        assert {k: pool.connection_kwargs[k] for k in ("db", "password", "socket_timeout")} == {
            "db": 3, "password": "url/pw", "socket_timeout": 3}  # fmt: skip
        nodes = pool.sentinel_manager.sentinels
        assert [n.connection_pool.connection_kwargs["port"] for n in nodes] == [26379, 26380, 26381]
        assert all(n.connection_pool.connection_kwargs["password"] == "s3" for n in nodes)
    finally:
        client.close()


def test_the_gateways_client_through_sentinel_keeps_a_bounded_blocking_pool() -> None:
    async def build() -> None:
        client = async_client(sentinel_settings(), max_connections=17, timeout=4, socket_connect_timeout=5)
        try:
            assert isinstance(client, AsyncSentinelMaster)
            pool = client.connection_pool
            assert isinstance(pool, BlockingSentinelPool) and isinstance(pool, redis.asyncio.BlockingConnectionPool)
            assert (pool.max_connections, pool.timeout, pool.service_name) == (17, 4, "main")
            assert pool.connection_kwargs["socket_connect_timeout"] == 5
            assert len(pool.sentinel_manager.sentinels) == 3
        finally:
            await client.aclose()

    asyncio.run(build())


def test_the_gateways_plain_client_is_the_bounded_blocking_pool_it_was() -> None:
    async def build() -> None:
        settings = QueueSettings(redis_url="redis://127.0.0.1:6390/0", redis_sentinels="", redis_password=None)
        client = async_client(settings, max_connections=16, timeout=10)
        try:
            assert type(client) is redis.asyncio.Redis
            assert isinstance(client.connection_pool, redis.asyncio.BlockingConnectionPool)
            assert client.connection_pool.max_connections == 16
        finally:
            await client.aclose()

    asyncio.run(build())


def test_messages_name_where_redis_is_without_a_password() -> None:
    assert describe(QueueSettings(redis_url="redis://:secret@h:1/0", redis_sentinels="")) == "redis://h:1/0"
    assert "secret" not in describe(sentinel_settings(redis_password="secret"))


def test_the_launcher_reads_a_childs_environment_not_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUECHAT_REDIS_SENTINELS", "127.0.0.1:9")
    monkeypatch.setenv("QUEUECHAT_REDIS_PASSWORD", "mine")
    plain = redis_settings({"QUEUECHAT_REDIS_URL": "redis://127.0.0.1:7/0"})
    assert (plain.redis_sentinels, plain.redis_password, plain.redis_url) == ("", None, "redis://127.0.0.1:7/0")
    child = redis_settings({"REDIS_URL": "redis://x/1", "QUEUECHAT_REDIS_SENTINELS": SENTINELS,
                            "QUEUECHAT_REDIS_MASTER": "main"})  # fmt: skip
    assert (child.redis_db(), child.redis_master, len(child.sentinels())) == (1, "main", 3)
    assert isinstance(sync_client(child), SentinelMaster)
    assert type(sync_client(plain)) is redis.Redis


def test_flowers_broker_view_asks_every_sentinel(monkeypatch: pytest.MonkeyPatch) -> None:
    from flower.utils import broker

    from queuechat.flower import ask_every_sentinel

    monkeypatch.setattr(broker.RedisSentinel, "_get_redis_client", broker.RedisSentinel._get_redis_client)
    settings = sentinel_settings()
    ask_every_sentinel(settings)
    options = settings.celery_conf()["broker_transport_options"]
    first_only = kombu.Connection(settings.broker_url()).as_uri(include_password=True)  # what Flower passes
    view = broker.Broker(first_only, broker_options=options)
    assert isinstance(view.redis, AsyncSentinelMaster)
    assert len(view.redis.connection_pool.sentinel_manager.sentinels) == 3
    asyncio.run(view.redis.aclose())
