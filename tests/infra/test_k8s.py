"""infra/k8s manifests: valid against the Kubernetes schemas offline, and wired to real code."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # oldest minor we promise (HPA v2, PDB policy/v1, Job TTL)


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


DOCS = _docs()
BY_KIND: dict[str, dict[str, dict[str, Any]]] = {}
for _, _doc in DOCS:
    BY_KIND.setdefault(_doc["kind"], {})[_doc["metadata"]["name"]] = _doc


def _containers(kind: str, name: str) -> list[dict[str, Any]]:
    spec = BY_KIND[kind][name]["spec"]["template"]["spec"]
    return list(spec["containers"])


@pytest.mark.parametrize(
    "doc", [d for _, d in DOCS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS]
)
@pytest.mark.parametrize("version", [KUBERNETES_VERSION, "1.37.0"])
def test_manifest_validates_against_kubernetes_schema(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_validator_rejects_a_broken_manifest() -> None:
    broken = yaml.safe_load(yaml.safe_dump(BY_KIND["Deployment"]["ticketing-api"]))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = {"x": 1}
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


def test_expected_workloads_exist() -> None:
    assert set(BY_KIND["Deployment"]) == {"ticketing-api", "ticketing-worker", "ticketing-beat"}
    assert set(BY_KIND["Job"]) == {"ticketing-migrate"}
    assert set(BY_KIND["Service"]) == {"ticketing-api"}


def test_api_runs_the_local_router_with_probes_on_its_health_routes() -> None:
    (api,) = _containers("Deployment", "ticketing-api")
    assert api["command"][:2] == ["uvicorn", "local.app:app"]
    module, attr = api["command"][1].split(":")
    app = getattr(importlib.import_module(module), attr)
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert {"/health/live", "/health/ready"} <= set(app.openapi()["paths"])
    with TestClient(app) as client:  # liveness needs no database: it must answer 200
        assert client.get(api["livenessProbe"]["httpGet"]["path"]).status_code == 200
    port_names = {p["name"] for p in api["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert api[probe]["httpGet"]["port"] in port_names


def test_service_selects_the_api_pods() -> None:
    service = BY_KIND["Service"]["ticketing-api"]["spec"]
    labels = BY_KIND["Deployment"]["ticketing-api"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()


def test_worker_and_beat_run_the_celery_app_and_beat_is_single() -> None:
    (worker,) = _containers("Deployment", "ticketing-worker")
    (beat,) = _containers("Deployment", "ticketing-beat")
    assert worker["command"][:4] == ["celery", "-A", "functions.notify.worker", "worker"]
    assert "--beat" not in worker["command"] and "-B" not in worker["command"]
    assert beat["command"][:4] == ["celery", "-A", "functions.notify.worker", "beat"]
    assert BY_KIND["Deployment"]["ticketing-beat"]["spec"]["replicas"] == 1
    assert BY_KIND["Deployment"]["ticketing-beat"]["spec"]["strategy"]["type"] == "Recreate"
    assert "ticketing-beat" not in {
        h["spec"]["scaleTargetRef"]["name"] for h in BY_KIND["HorizontalPodAutoscaler"].values()
    }
    celery_app = importlib.import_module("functions.notify.worker").app
    assert type(celery_app).__name__ == "Celery"


def test_migration_job_runs_the_migrator() -> None:
    (job,) = _containers("Job", "ticketing-migrate")
    assert job["command"] == ["python", "-m", "shared.platform.migrate"]
    assert callable(importlib.import_module("shared.platform.migrate").main)


def test_every_scaled_deployment_has_an_hpa() -> None:
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in BY_KIND["HorizontalPodAutoscaler"].values()}
    assert targets == {"ticketing-api", "ticketing-worker"}


def test_containers_have_requests_and_config_from_configmap_and_secret() -> None:
    for kind, name in [("Deployment", n) for n in BY_KIND["Deployment"]] + [
        ("Job", "ticketing-migrate")
    ]:
        for container in _containers(kind, name):
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
            refs = container["envFrom"]
            assert {"configMapRef": {"name": "ticketing-config"}} in refs
            assert {"secretRef": {"name": "ticketing-secrets"}} in refs
    assert "ticketing-config" in BY_KIND["ConfigMap"]


def test_no_secret_value_is_applied_with_the_manifests() -> None:
    """`kubectl apply -k` must never overwrite the real Secret with a placeholder."""
    assert "Secret" not in BY_KIND
    for _, doc in DOCS:
        values = {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
        assert not {"JWT_SECRET", "DATABASE_URL", "REDIS_URL"} & set(values), doc["metadata"]["name"]


def test_config_keys_are_settings_fields() -> None:
    """A typo in a ConfigMap/Secret key would be silently ignored by pydantic-settings."""
    from shared.platform.settings import Settings

    fields = {f.upper() for f in Settings.model_fields}
    keys = set(BY_KIND["ConfigMap"]["ticketing-config"]["data"])
    assert keys <= fields, keys - fields


def test_api_leaves_the_client_ip_to_the_app() -> None:
    """uvicorn must not rewrite the peer from X-Forwarded-For: TRUSTED_PROXIES decides."""
    from shared.web.client_ip import trusted_networks

    (api,) = _containers("Deployment", "ticketing-api")
    assert "--no-proxy-headers" in api["command"]
    assert "--proxy-headers" not in api["command"] and "--forwarded-allow-ips" not in api["command"]
    config = BY_KIND["ConfigMap"]["ticketing-config"]["data"]
    assert "RATE_LIMIT_TRUSTED_PROXIES" not in config
    trusted_networks(config["TRUSTED_PROXIES"])  # raises on an entry that is not an address


def test_ses_sender_is_the_deployers_and_documented() -> None:
    """NOTIFY_CHANNEL=ses with a placeholder sender would dead-letter every mail."""
    from shared.platform.settings import ses_sender_problem

    config = BY_KIND["ConfigMap"]["ticketing-config"]["data"]
    assert config["NOTIFY_CHANNEL"] == "ses"
    assert "SES_SENDER" not in config or ses_sender_problem(config["SES_SENDER"]) is None
    assert "SES_SENDER" in (K8S / "config.yaml").read_text()  # the comment says to add it


def test_shipped_config_trusts_no_proxy() -> None:
    """Any trusted range shipped here would cover some cluster's other pods, which could
    then choose their own rate-limit key with X-Forwarded-For: the deployer sets the
    ingress controller's addresses in an overlay."""
    config = BY_KIND["ConfigMap"]["ticketing-config"]["data"]
    assert config["TRUSTED_PROXIES"] == ""


def test_api_serves_metrics_only_with_a_token_an_operator_created() -> None:
    (api,) = _containers("Deployment", "ticketing-api")
    (token,) = [e for e in api["env"] if e["name"] == "METRICS_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["optional"] is True  # absent: /metrics is off
    config = BY_KIND["ConfigMap"]["ticketing-config"]["data"]
    assert "Secret" not in BY_KIND  # no manifest ships a secret value, this one included
    assert not {"METRICS_TOKEN", "METRICS_TOKEN_FILE"} & set(config)  # no example value works
