"""compose.yaml and the Dockerfile cannot be run here (no Docker engine): check that they are
consistent with the code — services, ports, commands that name real modules, queues that name
real models, files the Dockerfile copies."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from protocol.models_file import load_models_file

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def _arg_after(command: list[str], flag: str) -> str:
    for i, arg in enumerate(command):
        if arg == flag:
            return command[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {command}")


def _models_file_for(service: dict) -> Path:
    in_container = service["environment"]["QUEUECHAT_MODELS_FILE"]
    assert in_container.startswith("/app/")
    return REPO / in_container.removeprefix("/app/")


def test_compose_has_the_four_services_and_a_gpu_profile() -> None:
    assert {"redis", "gateway", "worker", "flower"} <= set(SERVICES)
    gpu = [name for name, s in SERVICES.items() if "gpu" in s.get("profiles", [])]
    assert gpu == ["worker-chatglm"]
    assert not any(s.get("profiles") for n, s in SERVICES.items() if n != "worker-chatglm")


def test_every_app_service_reaches_the_compose_redis() -> None:
    redis_port = 6379
    for name in ("gateway", "worker", "flower", "worker-chatglm"):
        url = SERVICES[name]["environment"]["QUEUECHAT_REDIS_URL"]
        assert url == f"redis://redis:{redis_port}/0", name
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in SERVICES["redis"]


@pytest.mark.parametrize(("service", "flag"), [("gateway", "--port"), ("flower", "--port")])
def test_published_port_matches_the_port_the_command_listens_on(service: str, flag: str) -> None:
    command = SERVICES[service]["command"]
    port = _arg_after(command, flag)
    published = [p.split(":") for p in SERVICES[service]["ports"]]
    assert [port, port] in published
    assert _arg_after(command, "--host" if service == "gateway" else "--address") == "0.0.0.0"


def test_gateway_command_runs_the_gateway_module() -> None:
    command = SERVICES["gateway"]["command"]
    assert command[:3] == ["python", "-m", "gateway"]
    assert importlib.util.find_spec("gateway.__main__") is not None
    health = " ".join(SERVICES["gateway"]["healthcheck"]["test"])
    assert f":{_arg_after(command, '--port')}/health" in health


@pytest.mark.parametrize("service", ["worker", "worker-chatglm"])
def test_celery_commands_name_the_workers_app(service: str) -> None:
    command = SERVICES[service]["command"]
    assert command[:3] == ["celery", "-A", "workers"]
    from celery import Celery
    from celery.app.utils import find_app

    assert isinstance(find_app(command[2]), Celery)  # how `celery -A workers` finds the app


@pytest.mark.parametrize(("service", "queues"),
                         [("worker", "smollm2-135m,all-minilm-l6-v2"), ("worker-chatglm", "chatglm")])  # fmt: skip
def test_worker_queues_are_models_of_the_models_file(service: str, queues: str) -> None:
    command = SERVICES[service]["command"]
    assert _arg_after(command, "-Q") == queues
    for queue in queues.split(","):
        assert load_models_file(_models_file_for(SERVICES[service])).get(queue) is not None


def test_gpu_worker_mounts_its_weights_where_the_models_file_points_and_reserves_a_gpu() -> None:
    service = SERVICES["worker-chatglm"]
    spec = load_models_file(_models_file_for(service)).get("chatglm")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
    in_container = "/app/" + spec.path.relative_to(REPO).as_posix()
    assert in_container in mounts
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_redis_keeps_an_append_only_file_in_a_named_volume() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert _arg_after(command, "--appendonly") == "yes" and _arg_after(command, "--appendfsync") == "everysec"
    data_dir = _arg_after(command, "--dir") if "--dir" in command else "/data"  # the image's working folder
    volumes = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}
    assert data_dir in volumes and volumes[data_dir] in COMPOSE["volumes"], "the file must outlive the container"


def test_named_volumes_are_declared() -> None:
    used = {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert used <= set(COMPOSE.get("volumes", {}))


def test_dockerfile_copies_files_that_exist_and_fetches_the_default_model() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    assert "scripts/fetch_models.py" in dockerfile
    assert re.search(r"^USER \w+", dockerfile, re.M), "the image does not run as root"


def test_flower_asks_for_basic_auth_taken_from_the_environment() -> None:
    auth = _arg_after(SERVICES["flower"]["command"], "--basic-auth")
    assert auth.startswith("${FLOWER_BASIC_AUTH") and ":?" in auth, "required, and interpolated by compose"
    assert "FLOWER_BASIC_AUTH" not in (REPO / "Dockerfile").read_text()


def test_flower_runs_through_the_queuechat_command_with_a_healthcheck_on_its_port() -> None:
    command = SERVICES["flower"]["command"]
    assert command[:2] == ["queuechat", "flower"]
    from queuechat.cli import parser

    assert parser().parse_known_args(command[1:])[0].command == "flower"
    port = _arg_after(command, "--port")
    assert f":{port}/healthcheck" in " ".join(SERVICES["flower"]["healthcheck"]["test"])


def test_the_worker_healthcheck_pings_the_node_its_command_names() -> None:
    service = SERVICES["worker"]
    node = _arg_after(service["command"], "-n").replace("%h", "$$HOSTNAME")
    assert f"-d {node}" in " ".join(service["healthcheck"]["test"])


def test_the_image_copies_every_package_the_project_installs() -> None:
    import tomllib

    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    dockerfile = (REPO / "Dockerfile").read_text()
    for top in {p.split(".")[0] for p in packages}:
        assert f"COPY {top} ./{top}" in dockerfile, top
