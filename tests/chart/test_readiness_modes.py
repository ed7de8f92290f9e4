"""Issue 16: the two readiness modes, the strategy each implies, the
revision passed to the elector, and what lands on which Service."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
import yaml
from conftest import (
    CHART_DIR,
    KUBE_VERSIONS,
    container,
    env_of,
    pod_spec,
    render,
    validation_errors,
)

FULLNAME = "demo-etcd-elector"
HEALTHY = {"elector": {"readiness": "healthy"}}


def deployment(out) -> dict[str, Any]:
    return out.one("Deployment", FULLNAME)


def elector(out) -> dict[str, Any]:
    return container(pod_spec(deployment(out)), "etcd-elector")


# --- readiness modes ---------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_leader_mode_is_the_default_ready_only_while_leading(chart: helm_python.Chart, kube_version: str) -> None:
    out = render(chart, kube_version=kube_version)
    assert elector(out)["readinessProbe"]["httpGet"] == {"path": "/leader", "port": 4040}
    assert deployment(out)["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "100%"},
    }
    assert deployment(out)["metadata"]["labels"]["etcd-elector/readiness"] == "leader"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_healthy_mode_is_ready_while_the_elector_runs_and_rolls_classically(
    chart: helm_python.Chart, kube_version: str
) -> None:
    values = {**HEALTHY, "app": {"readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}}}
    out = render(chart, values, kube_version=kube_version)
    assert validation_errors(out.docs, kube_version) == []
    assert elector(out)["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 4040}
    # The application's own probe stands.
    app = container(pod_spec(deployment(out)), "app")
    assert app["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert deployment(out)["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert deployment(out)["metadata"]["labels"]["etcd-elector/readiness"] == "healthy"


def test_readiness_mode_is_an_enum(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="/elector/readiness"):
        chart.validate_schema(chart.merge_values({"elector": {"readiness": "ready"}}))


def test_pod_disruption_budget_follows_the_mode(chart: helm_python.Chart) -> None:
    on = {"podDisruptionBudget": {"enabled": True}}
    leader = render(chart, on, kube_version="1.31.0").one("PodDisruptionBudget", FULLNAME)["spec"]
    assert leader["minAvailable"] == 0 and leader["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    healthy = render(chart, {**on, **HEALTHY}, kube_version="1.31.0").one("PodDisruptionBudget", FULLNAME)["spec"]
    assert healthy["maxUnavailable"] == 1 and "minAvailable" not in healthy


# --- strategy ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["leader", "healthy"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_recreate_renders_without_rolling_update(chart: helm_python.Chart, mode: str, kube_version: str) -> None:
    values = {"elector": {"readiness": mode}, "strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 2}}}
    out = render(chart, values, kube_version=kube_version)
    assert deployment(out)["spec"]["strategy"] == {"type": "Recreate"}
    assert validation_errors(out.docs, kube_version) == []


def test_rolling_update_keys_left_out_take_the_mode_default(chart: helm_python.Chart) -> None:
    out = render(chart, {"strategy": {"rollingUpdate": {"maxSurge": 0}}}, kube_version="1.31.0")
    assert deployment(out)["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": "100%"}
    out = render(chart, {**HEALTHY, "strategy": {"rollingUpdate": {"maxUnavailable": "50%"}}}, kube_version="1.31.0")
    assert deployment(out)["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": "50%"}


# --- ELECTOR_REVISION ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["leader", "healthy"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_revision_comes_from_the_pod_template_hash(chart: helm_python.Chart, mode: str, kube_version: str) -> None:
    out = render(chart, {"elector": {"readiness": mode}}, kube_version=kube_version)
    assert env_of(elector(out))["ELECTOR_REVISION"] == {
        "fieldRef": {"fieldPath": "metadata.labels['pod-template-hash']"}
    }


def test_revision_label_for_a_statefulset_and_off(chart: helm_python.Chart) -> None:
    out = render(chart, {"elector": {"revisionLabel": "controller-revision-hash"}}, kube_version="1.31.0")
    assert env_of(elector(out))["ELECTOR_REVISION"] == {
        "fieldRef": {"fieldPath": "metadata.labels['controller-revision-hash']"}
    }
    out = render(chart, {"elector": {"revisionLabel": ""}}, kube_version="1.31.0")
    assert "ELECTOR_REVISION" not in env_of(elector(out))


# --- ELECTOR_HANDOFF_WAIT --------------------------------------------------------


def test_handoff_wait_follows_the_mode_unless_set(chart: helm_python.Chart) -> None:
    # Leader mode stops every old pod while the new ones start: wait for one to register.
    out = render(chart, {}, kube_version="1.31.0")
    assert env_of(elector(out))["ELECTOR_HANDOFF_WAIT"] == "2"
    # Healthy mode starts a new pod (registered) before an old one stops: no wait.
    out = render(chart, HEALTHY, kube_version="1.31.0")
    assert env_of(elector(out))["ELECTOR_HANDOFF_WAIT"] == "0"
    out = render(chart, {"elector": {"readiness": "healthy", "handoffWait": 1.5}}, kube_version="1.31.0")
    assert env_of(elector(out))["ELECTOR_HANDOFF_WAIT"] == "1.5"


# --- ELECTOR_APP_HEALTH ----------------------------------------------------------


def test_app_health_is_passed_only_when_set(chart: helm_python.Chart) -> None:
    env = env_of(elector(render(chart, {}, kube_version="1.31.0")))
    assert "ELECTOR_APP_HEALTH" not in env
    values = {"elector": {"appHealth": "http://127.0.0.1:8080/ready", "appUnhealthyAfter": 5}}
    env = env_of(elector(render(chart, values, kube_version="1.31.0")))
    assert env["ELECTOR_APP_HEALTH"] == "http://127.0.0.1:8080/ready"
    assert env["ELECTOR_APP_UNHEALTHY_AFTER"] == "5"
    with pytest.raises(helm_python.HelmValuesError, match="appHealth"):
        render(chart, {"elector": {"appHealth": "ftp://x/ready"}}, kube_version="1.31.0")


# --- labels of pod templates ---------------------------------------------------


def pod_templates(out) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for doc in out.docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            found.append((doc["kind"], doc["spec"]["template"]["metadata"]["labels"]))
        elif doc["kind"] == "CronJob":
            job = doc["spec"]["jobTemplate"]
            found.append(("CronJob job", job["metadata"]["labels"]))
            found.append(("CronJob pod", job["spec"]["template"]["metadata"]["labels"]))
    return found


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_no_chart_version_in_pod_templates_or_selectors(chart: helm_python.Chart, kube_version: str) -> None:
    out = render(chart, {"cronjob": {"enabled": True, "command": ["/bin/true"]}}, kube_version=kube_version)
    templates = pod_templates(out)
    assert {kind for kind, _ in templates} == {"Deployment", "StatefulSet", "CronJob job", "CronJob pod"}
    for kind, labels in templates:
        assert "helm.sh/chart" not in labels, kind
        assert "app.kubernetes.io/version" not in labels, kind
    for doc in out.docs:
        selector = doc.get("spec", {}).get("selector", {})
        assert "helm.sh/chart" not in selector.get("matchLabels", selector), doc["kind"]
    # The objects themselves still carry the chart label.
    assert deployment(out)["metadata"]["labels"]["helm.sh/chart"].startswith("etcd-elector-")


# --- Services: the application's port only; never the admin port ------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_application_service_carries_only_the_application_port(chart: helm_python.Chart, kube_version: str) -> None:
    out = render(chart, {"service": {"type": "LoadBalancer"}}, kube_version=kube_version)
    service = out.one("Service", FULLNAME)
    assert service["spec"]["type"] == "LoadBalancer"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_metrics_service_reaches_every_pod_on_the_elector_port(chart: helm_python.Chart, kube_version: str) -> None:
    out = render(chart, {"metrics": {"service": {"enabled": True}}, "service": {"type": "NodePort"}},
                 kube_version=kube_version)
    assert validation_errors(out.docs, kube_version) == []
    metrics = out.one("Service", f"{FULLNAME}-metrics")
    assert metrics["spec"]["type"] == "ClusterIP"
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    assert metrics["spec"]["selector"] == deployment(out)["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [(4040, 4040)]
    default = render(chart, kube_version=kube_version)
    assert not [s for s in default.kinds("Service") if s["metadata"]["name"].endswith("-metrics")]


ALL_ON = {
    "metrics": {"service": {"enabled": True}},
    "monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "cronjob": {"enabled": True, "command": ["/bin/true"]},
    "podDisruptionBudget": {"enabled": True},
}


@pytest.mark.parametrize("admin", ["127.0.0.1:4041", "0.0.0.0:4041", "[::1]:4041"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_admin_port_is_on_no_service(chart: helm_python.Chart, admin: str, kube_version: str) -> None:
    out = render(chart, {**ALL_ON, "elector": {"adminListen": admin}}, kube_version=kube_version)
    services = out.kinds("Service")
    assert len(services) >= 4  # app, metrics, test, 2 etcd
    for service in services:
        for port in service["spec"]["ports"]:
            assert 4041 not in (port["port"], port.get("targetPort")), service["metadata"]["name"]
    # Nor does any container declare it as a port a Service could name.
    for doc in out.docs:
        if doc["kind"] in {"Deployment", "CronJob", "Pod", "StatefulSet"}:
            for c in pod_spec(doc).get("initContainers", []) + pod_spec(doc)["containers"]:
                assert 4041 not in [p["containerPort"] for p in c.get("ports", [])]


# --- Chart.yaml -----------------------------------------------------------------


def test_chart_metadata_for_artifact_hub(chart: helm_python.Chart) -> None:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert meta["home"].startswith("https://")
    assert meta["sources"] and all(s.startswith("https://") for s in meta["sources"])
    assert meta["maintainers"] and all(m["name"] for m in meta["maintainers"])
    notes = meta["annotations"]
    assert notes["artifacthub.io/license"] == "Apache-2.0"
    assert all(link["url"].startswith("https://") for link in yaml.safe_load(notes["artifacthub.io/links"]))
    for change in yaml.safe_load(notes["artifacthub.io/changes"]):
        assert change["kind"] in {"added", "changed", "deprecated", "removed", "fixed", "security"}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_artifact_hub_images_are_the_images_rendered_by_default(chart: helm_python.Chart, kube_version: str) -> None:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    listed = {i["image"] for i in yaml.safe_load(meta["annotations"]["artifacthub.io/images"])}
    out = render(chart, kube_version=kube_version)
    rendered = {c["image"] for doc in out.docs if doc["kind"] in {"Deployment", "StatefulSet", "Pod"}
                for c in pod_spec(doc).get("initContainers", []) + pod_spec(doc)["containers"]}
    assert listed == rendered


# --- the unpublished default image ----------------------------------------------------


def test_notes_and_readme_say_the_default_image_must_be_built(chart: helm_python.Chart) -> None:
    notes = render(chart, kube_version="1.31.0").notes
    assert "not\npublished" in notes or "not published" in notes
    assert "docker build -t REGISTRY/etcd-elector:0.1.0 ." in notes
    assert "docker buildx build --platform linux/amd64,linux/arm64" in notes
    custom = render(chart, {"elector": {"image": {"repository": "registry.example.com/etcd-elector",
                                                  "tag": "0.1.0", "pullPolicy": "IfNotPresent"}}},
                    kube_version="1.31.0").notes
    assert "docker build" not in custom
    readme = (CHART_DIR / "README.md").read_text()
    assert "docker buildx build --platform linux/amd64,linux/arm64" in readme
    assert "not published" in readme


@pytest.mark.parametrize("max_unavailable", [0, 1, 2, "50%", "99%"])
def test_leader_mode_refuses_a_rollout_that_would_deadlock(chart: helm_python.Chart, max_unavailable: Any) -> None:
    values = {"strategy": {"rollingUpdate": {"maxUnavailable": max_unavailable}}}
    with pytest.raises(helm_python.HelmRenderError, match="only the leader is ever Ready, so this rollout would deadlock"):
        render(chart, values, kube_version="1.31.0")


@pytest.mark.parametrize(
    "values",
    [
        {"strategy": {"rollingUpdate": {"maxUnavailable": 3}}},
        {"strategy": {"rollingUpdate": {"maxUnavailable": "100%"}}},
        {"strategy": {"type": "Recreate", "rollingUpdate": {"maxUnavailable": 0}}},
        {"elector": {"readiness": "healthy"}, "strategy": {"rollingUpdate": {"maxUnavailable": 0}}},
        {"replicaCount": 1, "strategy": {"rollingUpdate": {"maxUnavailable": 1}}},
    ],
)
def test_strategies_that_complete_are_accepted(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    render(chart, values, kube_version="1.31.0")


def test_both_modes_are_explained_for_every_tool_that_counts_ready_pods() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    section = readme[readme.index("## Readiness modes and rollouts"):]
    section = section[: section.index("\n## ")]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert table[0].split("|")[2:4] == [" `leader` (default) ", " `healthy` "]
    rows = " ".join(line.split("|")[1] for line in table)
    for topic in ("default `strategy`", "a rollout", "`kubectl rollout status`", "Argo CD", "Flux",
                  "PodDisruptionBudget", "the app's Service reaches"):
        assert topic in rows, topic
    values = (CHART_DIR / "values.yaml").read_text()
    comment = values[values.index("What the sidecar's readiness probe asks"):values.index("  readiness: leader")]
    for topic in ("rollout", "kubectl rollout status", "Argo CD", "Flux", "PodDisruptionBudget"):
        assert topic in comment, topic
