"""Issue 16: the bundled etcd's NetworkPolicy, optional TLS from a Secret,
and the initial cluster state."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
from conftest import (
    CHART_DIR,
    KUBE_VERSIONS,
    NAMESPACE,
    FIXTURES,
    container,
    env_of,
    load_values,
    pod_spec,
    render,
    validation_errors,
)

FULLNAME = "demo-etcd-elector"
STS = f"{FULLNAME}-etcd"
TLS = {"etcd": {"bundled": {"tls": {"enabled": True, "existingSecret": "etcd-server-tls"}}}}


def etcd(out) -> dict[str, Any]:
    return container(pod_spec(out.one("StatefulSet", STS)), "etcd")


def elector(out) -> dict[str, Any]:
    return container(pod_spec(out.one("Deployment", FULLNAME)), "etcd-elector")


def labels_of(doc: dict[str, Any]) -> dict[str, str]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return doc["spec"]["template"]["metadata"]["labels"]


def admits(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    return peer["podSelector"]["matchLabels"].items() <= labels.items()


# --- NetworkPolicy -------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_network_policy_admits_only_this_release_and_the_peers(chart: helm_python.Chart, kube_version: str) -> None:
    values = {"cronjob": {"enabled": True, "command": ["/bin/true"]}}
    out = render(chart, values, kube_version=kube_version)
    assert validation_errors(out.docs, kube_version) == []
    policy = out.one("NetworkPolicy", STS)
    sts = out.one("StatefulSet", STS)
    assert policy["spec"]["podSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    client, peer = policy["spec"]["ingress"]
    assert client["ports"] == [{"port": 2379, "protocol": "TCP"}]
    assert peer["ports"] == [{"port": 2380, "protocol": "TCP"}]
    (client_from,) = client["from"]
    (peer_from,) = peer["from"]
    assert "namespaceSelector" not in client_from and "namespaceSelector" not in peer_from
    # The app pods and the CronJob's pods reach the client port; the members the peer port.
    for doc in (out.one("Deployment", FULLNAME), out.one("CronJob")):
        assert admits(client_from, labels_of(doc)), doc["kind"]
        assert not admits(peer_from, labels_of(doc)), doc["kind"]
    assert admits(peer_from, labels_of(sts))
    # Another release's pods in the namespace do not.
    other = render(chart, kube_version=kube_version, name="other").one("Deployment")
    assert not admits(client_from, labels_of(other))


def test_network_policy_can_be_off_or_extended(chart: helm_python.Chart) -> None:
    off = render(chart, {"etcd": {"bundled": {"networkPolicy": {"enabled": False}}}}, kube_version="1.31.0")
    assert off.kinds("NetworkPolicy") == []
    scrape = {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
              "ports": [{"port": 2381, "protocol": "TCP"}]}
    out = render(chart, {"etcd": {"bundled": {"networkPolicy": {"extraIngress": [scrape]}}}}, kube_version="1.31.0")
    assert out.one("NetworkPolicy")["spec"]["ingress"][-1] == scrape
    assert validation_errors(out.docs, "1.31.0") == []


def test_no_network_policy_for_an_external_etcd(chart: helm_python.Chart) -> None:
    out = render(chart, load_values(FIXTURES / "values" / "external-etcd.yaml"), kube_version="1.31.0")
    assert out.kinds("NetworkPolicy") == []


# --- TLS ----------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_bundled_etcd_serves_tls_from_a_secret(chart: helm_python.Chart, kube_version: str) -> None:
    out = render(chart, TLS, kube_version=kube_version)
    assert validation_errors(out.docs, kube_version) == []
    env = env_of(etcd(out))
    host = f"$(ETCD_NAME).{STS}-headless.{NAMESPACE}.svc.cluster.local"
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "https://0.0.0.0:2379"
    assert env["ETCD_LISTEN_PEER_URLS"] == "https://0.0.0.0:2380"
    assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"https://{host}:2379"
    assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"https://{host}:2380"
    assert env["ETCD_INITIAL_CLUSTER"].count("=https://") == 3
    assert env["ETCD_LISTEN_METRICS_URLS"] == "http://0.0.0.0:2381"  # the kubelet's probes
    for key, file in (("CERT_FILE", "tls.crt"), ("KEY_FILE", "tls.key"), ("TRUSTED_CA_FILE", "ca.crt")):
        assert env[f"ETCD_{key}"] == f"/etc/etcd/tls/{file}"
        assert env[f"ETCD_PEER_{key}"] == f"/etc/etcd/tls/{file}"
    assert env["ETCD_CLIENT_CERT_AUTH"] == "true" and env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    spec = pod_spec(out.one("StatefulSet", STS))
    (volume,) = spec["volumes"]
    assert volume["secret"]["secretName"] == "etcd-server-tls"
    assert {"name": volume["name"], "mountPath": "/etc/etcd/tls", "readOnly": True} in etcd(out)["volumeMounts"]
    # The elector follows: https URLs, the CA and a client certificate.
    e = env_of(elector(out))
    assert all(u.startswith("https://") for u in e["ELECTOR_ENDPOINTS"].split(","))
    assert e["ELECTOR_ETCD_CACERT"] == "/etc/etcd-elector/tls/ca.crt"
    assert e["ELECTOR_ETCD_CERT"] == "/etc/etcd-elector/tls/tls.crt"
    assert e["ELECTOR_ETCD_KEY"] == "/etc/etcd-elector/tls/tls.key"
    app_volumes = {v["name"]: v for v in pod_spec(out.one("Deployment", FULLNAME))["volumes"]}
    assert app_volumes["etcd-elector-tls"]["secret"]["secretName"] == "etcd-server-tls"


def test_elector_can_use_its_own_client_certificate(chart: helm_python.Chart) -> None:
    values = {"etcd": {**TLS["etcd"], "tls": {"enabled": True, "existingSecret": "elector-client-tls"}},
              "cronjob": {"enabled": True, "command": ["/bin/true"]}}
    out = render(chart, values, kube_version="1.31.0")
    assert validation_errors(out.docs, "1.31.0") == []
    for doc in (out.one("Deployment", FULLNAME), out.one("CronJob")):
        volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
        assert volumes["etcd-elector-tls"]["secret"]["secretName"] == "elector-client-tls"
    assert pod_spec(out.one("StatefulSet"))["volumes"][0]["secret"]["secretName"] == "etcd-server-tls"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"etcd": {"bundled": {"tls": {"enabled": True}}}}, "etcd.bundled.tls.enabled needs etcd.bundled.tls.existingSecret"),
        ({"etcd": {"endpoints": ["https://e:2379"], **TLS["etcd"]}}, "etcd.bundled.tls applies to the bundled etcd"),
        ({"etcd": {"tls": {"enabled": True, "existingSecret": "s"}}}, "needs etcd.bundled.tls.enabled"),
        ({"etcd": {"auth": {"enabled": True, "username": "u", "existingSecret": "s"}}}, "the bundled etcd has no auth"),
    ],
)
def test_inconsistent_tls_values_fail_clearly(chart: helm_python.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(chart, values, kube_version="1.31.0")


# --- initial cluster state --------------------------------------------------------------


def test_initial_cluster_state_is_new_unless_told(chart: helm_python.Chart) -> None:
    assert env_of(etcd(render(chart, kube_version="1.31.0")))["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    out = render(chart, {"etcd": {"bundled": {"initialClusterState": "existing"}}}, kube_version="1.31.0")
    assert env_of(etcd(out))["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    with pytest.raises(helm_python.HelmValuesError, match="/etcd/bundled/initialClusterState"):
        chart.validate_schema(chart.merge_values({"etcd": {"bundled": {"initialClusterState": "join"}}}))


def test_readme_says_how_to_replace_a_lost_member() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    section = readme[readme.index("### Replacing a lost etcd member"):]
    section = section[: section.index("\n## ")]
    for step in ("etcdctl member remove", "etcdctl member add", "initialClusterState=existing",
                 "kubectl delete pvc", "distroless"):
        assert step in section, step
