"""Issue 16: probe timings that a slow answer cannot flip, the leader file,
and the default spread of the application pods."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
import yaml
from conftest import CHART_DIR, DEPLOY_DIR, KUBE_VERSIONS, container, env_of, pod_spec, render, validation_errors

FULLNAME = "demo-etcd-elector"


def spec_of(out) -> dict[str, Any]:
    return pod_spec(out.one("Deployment", FULLNAME))


def deploy_elector() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY_DIR / "app.yaml").read_text()) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return container(pod_spec(deployment), "etcd-elector")


# --- probes -----------------------------------------------------------------------


def assert_probes_tolerate_a_slow_leader(elector: dict[str, Any]) -> None:
    ready, live, start = elector["readinessProbe"], elector["livenessProbe"], elector["startupProbe"]
    # Readiness still follows a handoff quickly...
    assert ready["periodSeconds"] == 1 and ready.get("successThreshold", 1) == 1
    # ...but one slow answer (up to 3 s) or one failed probe alone never makes the leader unready.
    assert ready["timeoutSeconds"] >= 3
    assert ready["failureThreshold"] >= 2
    # and a 503 takes a pod out within a few seconds.
    assert ready["failureThreshold"] * ready["periodSeconds"] <= 3
    # A liveness restart ends the leadership: a minute without answers first.
    assert live["timeoutSeconds"] >= 5
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    assert start["timeoutSeconds"] >= 3
    assert start["periodSeconds"] * start["failureThreshold"] >= 120


@pytest.mark.parametrize("mode", ["leader", "healthy"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_chart_probes_tolerate_a_slow_leader(chart: helm_python.Chart, mode: str, kube_version: str) -> None:
    out = render(chart, {"elector": {"readiness": mode}}, kube_version=kube_version)
    assert_probes_tolerate_a_slow_leader(container(spec_of(out), "etcd-elector"))


def test_plain_manifest_probes_tolerate_a_slow_leader() -> None:
    assert_probes_tolerate_a_slow_leader(deploy_elector())


def test_probe_timings_are_explained_in_values() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    block = text[text.index("Timing of the readiness probe"):text.index("readinessProbe:\n    periodSeconds")]
    assert "slow" in block and "503" in block and "intended" in block


# --- the leader file ----------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_leader_file_is_shared_by_the_elector_and_the_app(chart: helm_python.Chart, native: bool, kube_version: str) -> None:
    values = {"leaderFile": {"enabled": True, "path": "/run/leader/now.json"},
              "elector": {"nativeSidecar": native},
              "volumes": [{"name": "tmp", "emptyDir": {}}],
              "app": {"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}], "env": [{"name": "X", "value": "1"}]}}
    out = render(chart, values, kube_version=kube_version)
    assert validation_errors(out.docs, kube_version) == []
    spec = spec_of(out)
    volumes = {v["name"]: v for v in spec["volumes"]}
    elector, app = container(spec, "etcd-elector"), container(spec, "app")
    for c, read_only in ((elector, False), (app, True)):
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/run/leader"]
        assert "emptyDir" in volumes[mount["name"]]
        assert mount["readOnly"] is read_only
        assert env_of(c)["ELECTOR_LEADER_FILE"] == "/run/leader/now.json"
    # The user's own volumes, mounts and env stay.
    assert "tmp" in volumes and {"name": "tmp", "mountPath": "/tmp"} in app["volumeMounts"]
    assert env_of(app)["X"] == "1"


def test_no_leader_file_by_default(chart: helm_python.Chart) -> None:
    spec = spec_of(render(chart, kube_version="1.31.0"))
    for c in spec.get("initContainers", []) + spec["containers"]:
        assert "ELECTOR_LEADER_FILE" not in env_of(c)
    assert "volumes" not in spec


@pytest.mark.parametrize("path", ["leader.json", "/leader.json", "/run/leader/"])
def test_leader_file_path_needs_a_directory_of_its_own(chart: helm_python.Chart, path: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="/leaderFile/path"):
        chart.validate_schema(chart.merge_values({"leaderFile": {"enabled": True, "path": path}}))


# --- spreading ----------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_app_pods_spread_over_nodes_softly_by_default(chart: helm_python.Chart, kube_version: str) -> None:
    out = render(chart, kube_version=kube_version)
    selector = out.one("Deployment", FULLNAME)["spec"]["selector"]["matchLabels"]
    (constraint,) = spec_of(out)["topologySpreadConstraints"]
    assert constraint == {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "matchLabelKeys": ["pod-template-hash"],
        "labelSelector": {"matchLabels": selector},
    }


def test_spreading_is_overridable(chart: helm_python.Chart) -> None:
    zones = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
              "labelSelector": {"matchLabels": {"team": "x"}}}]
    out = render(chart, {"topologySpreadConstraints": zones}, kube_version="1.31.0")
    assert spec_of(out)["topologySpreadConstraints"] == zones
    assert "topologySpreadConstraints" not in spec_of(render(chart, {"topologySpreadConstraints": []},
                                                             kube_version="1.31.0"))


def test_plain_manifest_spreads_app_pods() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY_DIR / "app.yaml").read_text()) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (constraint,) = pod_spec(deployment)["topologySpreadConstraints"]
    assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
    assert constraint["topologyKey"] == "kubernetes.io/hostname"
    assert constraint["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
