"""The plain manifests in deploy/ are valid and consistent with each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import DEPLOY_DIR, KUBE_VERSIONS, container, env_of, pod_spec, validation_errors

MANIFESTS = sorted(DEPLOY_DIR.glob("*.yaml"))


def docs_of(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def test_the_expected_manifests_exist() -> None:
    assert [p.name for p in MANIFESTS] == ["app.yaml", "cronjob.yaml", "etcd.yaml"]
    assert (DEPLOY_DIR / "README.md").is_file()


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_strictly(manifest: Path, kube_version: str) -> None:
    docs = docs_of(manifest)
    assert docs
    assert validation_errors(docs, kube_version) == []


def test_etcd_is_a_three_member_statefulset_with_volumes() -> None:
    docs = docs_of(DEPLOY_DIR / "etcd.yaml")
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert names == {"etcd", "etcd-headless"}
    assert sts["spec"]["serviceName"] == "etcd-headless"


def elector_endpoints(c: dict[str, Any]) -> list[str]:
    return env_of(c)["ELECTOR_ENDPOINTS"].split(",")


def test_app_runs_the_elector_as_a_native_sidecar_and_reaches_the_etcd() -> None:
    docs = docs_of(DEPLOY_DIR / "app.yaml")
    deployment = one(docs, "Deployment")
    spec = pod_spec(deployment)
    elector = container(spec, "etcd-elector")
    assert spec["initContainers"] == [elector]
    assert elector["restartPolicy"] == "Always"
    assert elector["readinessProbe"]["httpGet"] == {"path": "/leader", "port": 4040}
    assert elector["readinessProbe"]["periodSeconds"] == 1
    assert spec["automountServiceAccountToken"] is False
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == "100%"
    service = one(docs, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    etcd = one(docs_of(DEPLOY_DIR / "etcd.yaml"), "StatefulSet")
    assert elector_endpoints(elector) == [
        f"http://{etcd['metadata']['name']}-{i}.{etcd['spec']['serviceName']}:2379" for i in range(3)
    ]


def test_cronjob_runs_its_command_with_run_try() -> None:
    cron = one(docs_of(DEPLOY_DIR / "cronjob.yaml"), "CronJob")
    spec = pod_spec(cron)
    job = container(spec, "job")
    assert job["args"][:3] == ["run", "--try", "--"]
    assert len(job["args"]) > 3
    env = env_of(job)
    assert env["ELECTOR_KEY"].startswith("/")
    assert int(env["ELECTOR_GRACE_PERIOD"]) < int(env["ELECTOR_TTL"])
    assert spec["automountServiceAccountToken"] is False
    app = container(pod_spec(one(docs_of(DEPLOY_DIR / "app.yaml"), "Deployment")), "etcd-elector")
    assert elector_endpoints(job) == elector_endpoints(app)


def test_app_service_carries_only_the_application_port() -> None:
    docs = docs_of(DEPLOY_DIR / "app.yaml")
    service = one(docs, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    admin = env_of(container(pod_spec(one(docs, "Deployment")), "etcd-elector")).get("ELECTOR_ADMIN_LISTEN", "127.0.0.1:4041")
    assert admin.startswith("127.0.0.1:")
    for path in MANIFESTS:
        for doc in docs_of(path):
            if doc["kind"] == "Service":
                assert 4041 not in [p["port"] for p in doc["spec"]["ports"]]
                assert 4041 not in [p["targetPort"] for p in doc["spec"]["ports"]]


def test_app_passes_the_pod_template_revision() -> None:
    elector = container(pod_spec(one(docs_of(DEPLOY_DIR / "app.yaml"), "Deployment")), "etcd-elector")
    assert env_of(elector)["ELECTOR_REVISION"] == {"fieldRef": {"fieldPath": "metadata.labels['pod-template-hash']"}}


def test_etcd_network_policy_admits_the_app_and_the_cronjob_only() -> None:
    etcd_docs = docs_of(DEPLOY_DIR / "etcd.yaml")
    policy = one(etcd_docs, "NetworkPolicy")
    sts = one(etcd_docs, "StatefulSet")
    assert policy["spec"]["podSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    client, peer = policy["spec"]["ingress"]
    assert [p["port"] for p in client["ports"]] == [2379] and [p["port"] for p in peer["ports"]] == [2380]
    clients = client["from"][0]["podSelector"]["matchLabels"]
    assert peer["from"][0]["podSelector"]["matchLabels"] == sts["spec"]["template"]["metadata"]["labels"]
    app = one(docs_of(DEPLOY_DIR / "app.yaml"), "Deployment")["spec"]["template"]["metadata"]["labels"]
    cron = one(docs_of(DEPLOY_DIR / "cronjob.yaml"), "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    for labels in (app, cron["metadata"]["labels"]):
        assert clients.items() <= labels.items()
    assert not clients.items() <= sts["spec"]["template"]["metadata"]["labels"].items()
