"""Another chart embeds the sidecar in its own pods through the named templates."""

from __future__ import annotations

from pathlib import Path

import helm_python
import pytest
from conftest import (
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    container,
    env_of,
    pod_spec,
    render,
    validation_errors,
)

WORKER = f"{RELEASE}-worker"
SUBCHART_FULLNAME = f"{RELEASE}-etcd-elector"

TLS_AUTH = {
    "etcd-elector": {
        "etcd": {
            "endpoints": ["https://etcd.example:2379"],
            "tls": {"enabled": True, "existingSecret": "etcd-client-tls"},
            "auth": {"enabled": True, "username": "worker", "existingSecret": "etcd-pw"},
        }
    }
}


def test_embedding_chart_lints_clean(embedder_dir: Path) -> None:
    for version in KUBE_VERSIONS:
        report = helm_python.lint(embedder_dir, strict=True, with_subcharts=True, kube_version=f"v{version}")
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", [None, TLS_AUTH], ids=["bundled-etcd", "external-tls-auth"])
def test_embedded_sidecar_renders_valid_manifests(embedder: helm_python.Chart, values, kube_version: str) -> None:
    out = render(embedder, values, kube_version=kube_version)
    assert validation_errors(out.docs, kube_version) == []
    # The dependency's own Deployment, Service and test are off; its etcd is not.
    assert [d["metadata"]["name"] for d in out.kinds("Deployment")] == [WORKER]
    assert out.kinds("Pod") == []
    assert bool(out.kinds("StatefulSet")) == (values is None)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_embedded_sidecar_follows_the_cluster_version(embedder: helm_python.Chart, kube_version: str) -> None:
    spec = pod_spec(render(embedder, kube_version=kube_version).one("Deployment", WORKER))
    elector = container(spec, "etcd-elector")
    if kube_version >= "1.29":
        assert spec["initContainers"] == [elector]
        assert elector["restartPolicy"] == "Always"
    else:
        assert "initContainers" not in spec
        assert [c["name"] for c in spec["containers"]] == ["worker", "etcd-elector"]
        assert "restartPolicy" not in elector
    assert elector["readinessProbe"]["httpGet"]["path"] == "/leader"


def test_embedded_sidecar_uses_the_dependency_values_and_its_etcd(embedder: helm_python.Chart) -> None:
    out = render(embedder, kube_version="1.31.0")
    elector = container(pod_spec(out.one("Deployment", WORKER)), "etcd-elector")
    env = env_of(elector)
    # Set by the embedding chart under its `etcd-elector:` key.
    assert env["ELECTOR_KEY"] == "/elector/embedder/worker"
    assert env["ELECTOR_TTL"] == "15"
    # The dependency's defaults, name and appVersion, not the embedder's.
    assert elector["image"] == "ghcr.io/etcd-elector/etcd-elector:0.1.0"
    sts = out.one("StatefulSet", f"{SUBCHART_FULLNAME}-etcd")
    assert env["ELECTOR_ENDPOINTS"].split(",")[0] == (
        f"http://{sts['metadata']['name']}-0.{SUBCHART_FULLNAME}-etcd-headless.{NAMESPACE}.svc.cluster.local:2379"
    )


def test_embedded_sidecar_brings_its_secret_volumes(embedder: helm_python.Chart) -> None:
    spec = pod_spec(render(embedder, TLS_AUTH, kube_version="1.31.0").one("Deployment", WORKER))
    elector = container(spec, "etcd-elector")
    volumes = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"]}
    assert volumes == {"etcd-elector-tls": "etcd-client-tls", "etcd-elector-auth": "etcd-pw"}
    assert {m["name"] for m in elector["volumeMounts"]} == set(volumes)
    env = env_of(elector)
    assert env["ELECTOR_ETCD_USER"] == "worker"
    assert env["ELECTOR_ETCD_PASSWORD_FILE"] == "/etc/etcd-elector/auth/password"


def test_embedding_chart_values_are_checked_by_the_dependency_schema(embedder: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="tll"):
        render(embedder, {"etcd-elector": {"elector": {"tll": 3}}}, kube_version="1.31.0")


def test_embedding_pods_reach_the_bundled_etcd_through_its_network_policy(embedder: helm_python.Chart) -> None:
    out = render(embedder, kube_version="1.31.0")
    policy = out.one("NetworkPolicy", f"{SUBCHART_FULLNAME}-etcd")
    client_from = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    labels = out.one("Deployment", WORKER)["spec"]["template"]["metadata"]["labels"]
    assert client_from.items() <= labels.items()


def test_embedded_sidecar_brings_the_leader_file_volume(embedder: helm_python.Chart) -> None:
    values = {"etcd-elector": {"leaderFile": {"enabled": True}}}
    out = render(embedder, values, kube_version="1.31.0")
    assert validation_errors(out.docs, "1.31.0") == []
    spec = pod_spec(out.one("Deployment", WORKER))
    elector = container(spec, "etcd-elector")
    assert env_of(elector)["ELECTOR_LEADER_FILE"] == "/var/run/etcd-elector/leader.json"
    (mount,) = elector["volumeMounts"]
    assert mount["name"] in {v["name"] for v in spec["volumes"]}
