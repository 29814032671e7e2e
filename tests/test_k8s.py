"""deploy/k8s cannot be applied here (no cluster): check every manifest against the JSON schema of
its kind (Kubernetes 1.30, KEDA, Prometheus Operator; vendored in tests/k8s_schemas), then that
the manifests agree with each other and with the code: commands that name real modules, worker
queues that are models of models.yaml, KEDA triggers on exactly those queues' Redis lists,
references to objects that exist, Service ports that are container ports, QUEUECHAT_ variables
that are real settings."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from protocol.models_file import load_models_file
from tests.test_deploy import _arg_after  # the same command lines as compose.yaml
from workers.sizing import CPU_SLOTS

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "k8s_schemas"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
NAMESPACE = KUSTOMIZATION["namespace"]
SCHEMA_OF = {
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("apps/v1", "StatefulSet"): "statefulset-apps-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1.json",
    ("v1", "Namespace"): "namespace-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscaler-autoscaling-v2.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}
DOCS = [(name, doc) for name in KUSTOMIZATION["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text()) if doc is not None]  # fmt: skip


def _all(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCS if doc["kind"] == kind}


def _containers(kinds: tuple[str, ...] = ("Deployment", "StatefulSet")) -> Iterator[tuple[dict, dict]]:
    for kind in kinds:
        for workload in _all(kind).values():
            for container in workload["spec"]["template"]["spec"]["containers"]:
                yield workload, container


def _env(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _port(container: dict, port: int | str) -> int:
    """A container port by number or name."""
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if isinstance(port, str):
        assert port in named, f"no port named {port} in {container['name']}"
        return named[port]
    assert port in named.values(), f"{port} is not a port of {container['name']}"
    return port


def _first_container(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]["containers"][0]


WORKERS = {name: d for name, d in _all("Deployment").items()
           if _first_container(d)["command"][:4] == ["celery", "-A", "workers", "worker"]}  # fmt: skip
MODELS = load_models_file(REPO / "models.yaml")


def test_the_kustomization_lists_every_manifest_here() -> None:
    here = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(KUSTOMIZATION["resources"]) == here
    assert KUSTOMIZATION["kind"] == "Kustomization"
    assert {image["name"] for image in KUSTOMIZATION["images"]} == {
        c["image"].split(":")[0] for _, c in _containers() if c["image"].startswith("queuechat")}


@pytest.mark.parametrize(("file", "doc"), DOCS, ids=[f"{d['kind']}/{d['metadata']['name']}" for _, d in DOCS])
def test_every_manifest_is_valid_against_the_schema_of_its_kind(file: str, doc: dict) -> None:
    key = (doc["apiVersion"], doc["kind"])
    assert key in SCHEMA_OF, f"{file}: no vendored schema for {key}"
    schema = json.loads((SCHEMAS / SCHEMA_OF[key]).read_text())
    jsonschema.Draft7Validator(schema).validate(doc)
    assert "namespace" not in doc["metadata"], "the kustomization sets the namespace"


def test_the_schemas_reject_what_kubernetes_would() -> None:
    """The check above can fail: a misspelt field or a wrong type is an error."""
    deployment = json.loads((SCHEMAS / "deployment-apps-v1.json").read_text())
    good = _all("Deployment")["gateway"]
    typo = json.loads(json.dumps(good))
    typo["spec"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    wrong_type = json.loads(json.dumps(good))
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(deployment).validate(bad)
    scaled = json.loads((SCHEMAS / "scaledobject-keda-v1alpha1.json").read_text())
    so = json.loads(json.dumps(_all("ScaledObject")["worker-chatglm"]))
    so["spec"]["triggers"][0]["metadata"]["listLength"] = 8  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(scaled).validate(so)


def test_names_are_unique_per_kind() -> None:
    seen = [(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCS]
    assert len(seen) == len(set(seen))


def test_one_worker_deployment_per_model_and_its_queues_are_models_of_the_models_file() -> None:
    served: list[str] = []
    for name, deployment in WORKERS.items():
        command = _first_container(deployment)["command"]
        queues = _arg_after(command, "-Q").split(",")
        assert all(MODELS.get(q) is not None for q in queues), queues
        assert _arg_after(command, "-n") == f"{queues[0]}@%h"
        served += queues
    assert sorted(served) == sorted(MODELS.names), "every model of models.yaml has exactly one worker"
    from celery import Celery
    from celery.app.utils import find_app

    assert isinstance(find_app("workers"), Celery)  # what `celery -A workers` loads


def test_the_worker_probes_ping_the_node_their_command_names() -> None:
    for deployment in WORKERS.values():
        container = _first_container(deployment)
        node = _arg_after(container["command"], "-n").replace("%h", "$HOSTNAME")
        for probe in ("startupProbe", "livenessProbe"):
            assert f'inspect ping -d "{node}"' in " ".join(container[probe]["exec"]["command"]), probe


def test_only_the_chatglm_worker_asks_for_a_gpu_and_it_mounts_its_weights_where_models_yaml_points() -> None:
    for name, deployment in WORKERS.items():
        pod = deployment["spec"]["template"]["spec"]
        limits = pod["containers"][0]["resources"].get("limits", {})
        assert ("nvidia.com/gpu" in limits) is (name == "worker-chatglm"), name
    pod = WORKERS["worker-chatglm"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    relative = yaml.safe_load((REPO / "models.yaml").read_text())["models"]["chatglm"]["path"]
    weights = f"/app/{relative}"  # paths are relative to the models file, /app/models.yaml in the image
    assert weights in mounts
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[weights])
    assert volume["persistentVolumeClaim"]["claimName"] in _all("PersistentVolumeClaim")


def _kombu_lists(queue: str) -> set[str]:
    """The Redis lists Celery's transport keeps for `queue`, one per priority step."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    return {queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS}


def test_each_worker_has_a_scaled_object_on_exactly_its_queues_lists() -> None:
    scaled = _all("ScaledObject")
    assert {so["spec"]["scaleTargetRef"]["name"] for so in scaled.values()} == set(WORKERS)
    for so in scaled.values():
        target = so["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment" and target["name"] in WORKERS
        command = _first_container(WORKERS[target["name"]])["command"]
        queues = _arg_after(command, "-Q").split(",")
        redis = [t for t in so["spec"]["triggers"] if t["type"] == "redis"]
        assert {t["metadata"]["listName"] for t in redis} == set().union(*map(_kombu_lists, queues))
        assert len(redis) == sum(len(_kombu_lists(q)) for q in queues)
        for trigger in redis:
            queue = trigger["metadata"]["listName"].split("\x06")[0]
            assert trigger["metadata"]["listLength"] == str(MODELS.get(queue).slots or CPU_SLOTS)  # CPU workers
            assert int(trigger["metadata"]["activationListLength"]) >= 0
        assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["maxReplicaCount"] >= 1


def test_the_redis_triggers_reach_the_redis_the_workers_use() -> None:
    service = _all("Service")["redis"]
    auth = _all("TriggerAuthentication")
    secrets = _all("Secret")
    for so in _all("ScaledObject").values():
        for trigger in (t for t in so["spec"]["triggers"] if t["type"] == "redis"):
            host, port = trigger["metadata"]["address"].rsplit(":", 1)
            assert host == f"redis.{NAMESPACE}.svc.cluster.local"  # resolvable from KEDA's namespace
            assert int(port) in [p["port"] for p in service["spec"]["ports"]]
            ref = auth[trigger["authenticationRef"]["name"]]
            for target in ref["spec"]["secretTargetRef"]:
                assert target["key"] in secrets[target["name"]]["stringData"]
            worker = _first_container(WORKERS[so["spec"]["scaleTargetRef"]["name"]])
            url = urlparse(_env(worker)["QUEUECHAT_REDIS_URL"]["value"])
            assert (url.hostname, url.port) == ("redis", int(port))
            assert trigger["metadata"]["databaseIndex"] == url.path.strip("/")


def test_the_prometheus_triggers_read_metrics_the_gateway_exports() -> None:
    from gateway.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    for so in _all("ScaledObject").values():
        worker = WORKERS[so["spec"]["scaleTargetRef"]["name"]]
        queues = _arg_after(_first_container(worker)["command"], "-Q").split(",")
        for trigger in (t for t in so["spec"]["triggers"] if t["type"] == "prometheus"):
            query = trigger["metadata"]["query"]
            names = set(re.findall(r"(queuechat_\w+?)(?:_total)?\{", query))
            assert names and names <= exported, query
            models = re.search(r'model=~?"([^"]+)"', query).group(1).split("|")
            assert set(models) <= set(queues), query


def test_services_select_a_workload_and_target_its_container_ports() -> None:
    for name, service in _all("Service").items():
        selector = service["spec"]["selector"]
        matched = [(w, c) for w, c in _containers()
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]  # fmt: skip
        assert len({w["metadata"]["name"] for w, _ in matched}) == 1, name
        for port in service["spec"]["ports"]:
            _port(matched[0][1], port.get("targetPort", port["port"]))
    assert _all("StatefulSet")["redis"]["spec"]["serviceName"] in _all("Service")


def test_the_gateway_runs_the_gateway_module_with_probes_on_health_and_scales_on_cpu() -> None:
    gateway = _first_container(_all("Deployment")["gateway"])
    command = gateway["command"]
    assert command[:3] == ["python", "-m", "gateway"] and _arg_after(command, "--host") == "0.0.0.0"
    port = int(_arg_after(command, "--port"))
    for probe in ("readinessProbe", "startupProbe"):
        assert gateway[probe]["httpGet"]["path"] == "/health"
        assert _port(gateway, gateway[probe]["httpGet"]["port"]) == port
    hpa = _all("HorizontalPodAutoscaler")["gateway"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert "cpu" in gateway["resources"]["requests"], "a CPU utilization target needs a CPU request"


def test_the_service_monitor_scrapes_the_gateways_metrics_port() -> None:
    from gateway.security import OPEN_PATHS

    monitor = _all("ServiceMonitor")["gateway"]["spec"]
    services = [s for s in _all("Service").values()
                if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]  # fmt: skip
    assert [s["metadata"]["name"] for s in services] == ["gateway"]
    for endpoint in monitor["endpoints"]:
        assert endpoint["port"] in [p["name"] for p in services[0]["spec"]["ports"]]
        assert endpoint["path"] == "/metrics" and endpoint["path"] in OPEN_PATHS  # scraped without a key


def test_flower_runs_through_the_queuechat_command_with_basic_auth_from_the_secret() -> None:
    flower = _first_container(_all("Deployment")["flower"])
    command = flower["command"]
    from queuechat.cli import parser

    assert command[:2] == ["queuechat", "flower"]
    assert parser().parse_known_args(command[1:])[0].command == "flower"
    assert _arg_after(command, "--basic-auth") == "$(FLOWER_BASIC_AUTH)"
    assert "secretKeyRef" in _env(flower)["FLOWER_BASIC_AUTH"]["valueFrom"]
    assert _port(flower, flower["readinessProbe"]["httpGet"]["port"]) == int(_arg_after(command, "--port"))
    assert flower["readinessProbe"]["httpGet"]["path"] == "/healthcheck"


def test_redis_keeps_an_append_only_file_on_a_persistent_volume() -> None:
    redis = _all("StatefulSet")["redis"]["spec"]
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert _arg_after(args, "--appendonly") == "yes" and _arg_after(args, "--appendfsync") == "everysec"
    mounts = {m["mountPath"]: m["name"] for m in redis["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[_arg_after(args, "--dir")] in [c["metadata"]["name"] for c in redis["volumeClaimTemplates"]]


def _settings_names() -> set[str]:
    from gateway.settings import GatewaySettings
    from workers.settings import WorkerSettings

    fields = {*GatewaySettings.model_fields, *WorkerSettings.model_fields}  # both extend QueueSettings
    return {f"QUEUECHAT_{field.upper()}" for field in fields}


def test_queuechat_variables_are_real_settings_and_every_reference_resolves() -> None:
    settings, config_maps, secrets = _settings_names(), _all("ConfigMap"), _all("Secret")
    for cm in config_maps.values():
        assert set(cm["data"]) <= settings, set(cm["data"]) - settings
    for secret in secrets.values():
        assert {k for k in secret["stringData"] if k.startswith("QUEUECHAT_")} <= settings
    assert config_maps["queuechat-settings"]["data"]["QUEUECHAT_MODELS_FILE"] == "/app/models.yaml"
    for workload, container in _containers():
        defined: list[str] = []
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source["secretRef"]
            assert ref["name"] in (config_maps if "configMapRef" in source else secrets)
        for entry in container.get("env", []):
            name = entry["name"]
            assert not name.startswith("QUEUECHAT_") or name in settings, name
            for ref, kind in (("secretKeyRef", secrets), ("configMapKeyRef", config_maps)):
                if ref in entry.get("valueFrom", {}):
                    key = entry["valueFrom"][ref]
                    source = kind[key["name"]]
                    assert key["key"] in {**source.get("data", {}), **source.get("stringData", {})}
            for used in re.findall(r"\$\((\w+)\)", entry.get("value", "")):
                assert used in defined, f"{name} uses $({used}) before it is defined"
            defined.append(name)
        for arg in container.get("command", []) + container.get("args", []):
            for used in re.findall(r"\$\((\w+)\)", arg):
                assert used in defined, f"{workload['metadata']['name']}: $({used}) is not in env"


def test_every_queuechat_container_reaches_the_same_redis() -> None:
    ours = [c for _, c in _containers() if c["image"].startswith("queuechat")]
    urls = {_env(c)["QUEUECHAT_REDIS_URL"]["value"] for c in ours}
    assert urls == {"redis://:$(REDIS_PASSWORD)@redis:6379/0"}
    assert "$(REDIS_PASSWORD)" in _first_container(_all("StatefulSet")["redis"])["args"]  # its requirepass


def test_every_claim_mounted_is_declared() -> None:
    claims = set(_all("PersistentVolumeClaim"))
    for workload, _ in _containers():
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (its built-in kustomize)")
def test_kustomize_builds_every_object_into_the_namespace() -> None:
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in objects) == sorted(
        (d["kind"], d["metadata"]["name"]) for _, d in DOCS)
    for doc in objects:
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == NAMESPACE
    scaled = [d for d in objects if d["kind"] == "ScaledObject"]
    lists = {t["metadata"].get("listName") for d in scaled for t in d["spec"]["triggers"]}
    assert "chatglm\x06\x169" in lists  # the priority lists' control characters survive the build
