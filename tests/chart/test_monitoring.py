"""Issue 17 (chart part): the PodMonitor and PrometheusRule, validated
against the prometheus-operator CRD schemas bundled in schemas/, and every
alert expression checked as PromQL (and by promtool where installed)."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python
import pytest
from conftest import CHART_DIR, KUBE_VERSIONS, NAMESPACE, ROOT, container, pod_spec, promql_problems, render, validation_errors

FULLNAME = "demo-etcd-elector"
ON = {"monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
SELECTOR = f'namespace="{NAMESPACE}", job="{NAMESPACE}/{FULLNAME}"'


def rules(out) -> dict[str, dict[str, Any]]:
    (group,) = out.one("PrometheusRule", FULLNAME)["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"]}


def test_nothing_by_default(chart: helm_python.Chart) -> None:
    out = render(chart, kube_version="1.31.0")
    assert out.kinds("PodMonitor") == [] and out.kinds("PrometheusRule") == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_pod_monitor_scrapes_the_elector_port_of_every_app_pod(chart: helm_python.Chart, kube_version: str) -> None:
    out = render(chart, ON, kube_version=kube_version)
    assert validation_errors(out.docs, kube_version) == []
    monitor = out.one("PodMonitor", FULLNAME)
    deployment = out.one("Deployment", FULLNAME)
    assert monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    elector = container(pod_spec(deployment), "etcd-elector")
    (port,) = elector["ports"]
    assert (endpoint["port"], port["containerPort"]) == (port["name"], 4040)


def test_pod_monitor_takes_labels_and_timing(chart: helm_python.Chart) -> None:
    values = {"monitoring": {"podMonitor": {"enabled": True, "labels": {"release": "kps"},
                                            "interval": "15s", "scrapeTimeout": "5s"}}}
    monitor = render(chart, values, kube_version="1.31.0").one("PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"
    assert monitor["spec"]["podMetricsEndpoints"][0]["scrapeTimeout"] == "5s"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_alerts_on_the_elector_metrics(chart: helm_python.Chart, kube_version: str, tmp_path: Path) -> None:
    out = render(chart, {**ON, "elector": {"ttl": 15}}, kube_version=kube_version)
    assert validation_errors(out.docs, kube_version) == []
    found = rules(out)
    assert set(found) == {"EtcdElectorNoLeader", "EtcdElectorMultipleLeaders",
                          "EtcdElectorLeaderFlapping", "EtcdElectorEtcdErrors"}
    no_leader = found["EtcdElectorNoLeader"]
    assert no_leader["expr"] == f"(max(elector_is_leader{{{SELECTOR}}}) or vector(0)) == 0"
    assert no_leader["for"] == "30s"  # two TTLs
    assert found["EtcdElectorMultipleLeaders"]["expr"] == f"sum(elector_is_leader{{{SELECTOR}}}) > 1"
    assert found["EtcdElectorLeaderFlapping"]["expr"] == (
        f"sum(increase(elector_leader_transitions_total{{{SELECTOR}}}[15m])) > 10")
    assert found["EtcdElectorEtcdErrors"]["expr"] == (
        f"sum by (op) (rate(elector_etcd_errors_total{{{SELECTOR}}}[5m])) > 0")
    assert {r["labels"]["severity"] for r in found.values()} == {"critical", "warning"}
    assert promql_problems(out.one("PrometheusRule")["spec"]["groups"], tmp_path) == []


def test_alert_settings(chart: helm_python.Chart, tmp_path: Path) -> None:
    values = {"monitoring": {"prometheusRule": {
        "enabled": True, "selector": 'job="electors", cluster="eu1"', "alertLabels": {"team": "payments"},
        "labels": {"role": "alert-rules"}, "multipleLeadersFor": "2m",
        "flapping": {"window": "1h", "maxTransitions": 20}, "etcdErrors": {"ratePerSecond": 0.5, "for": "15m"}}}}
    out = render(chart, values, kube_version="1.31.0")
    found = rules(out)
    assert out.kinds("PodMonitor") == []
    assert out.one("PrometheusRule")["metadata"]["labels"]["role"] == "alert-rules"
    assert found["EtcdElectorMultipleLeaders"]["expr"] == 'sum(elector_is_leader{job="electors", cluster="eu1"}) > 1'
    assert found["EtcdElectorMultipleLeaders"]["for"] == "2m"
    assert "[1h])) > 20" in found["EtcdElectorLeaderFlapping"]["expr"]
    assert found["EtcdElectorEtcdErrors"]["expr"].endswith("> 0.5")
    assert found["EtcdElectorEtcdErrors"]["for"] == "15m"
    assert all(r["labels"]["team"] == "payments" for r in found.values())
    assert promql_problems(out.one("PrometheusRule")["spec"]["groups"], tmp_path) == []


def test_rules_need_the_pod_monitor_or_a_selector(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmRenderError, match="monitoring.prometheusRule needs monitoring.podMonitor"):
        render(chart, {"monitoring": {"prometheusRule": {"enabled": True}}}, kube_version="1.31.0")


def test_no_leader_alert_only_with_replicas(chart: helm_python.Chart) -> None:
    assert "EtcdElectorNoLeader" not in rules(render(chart, {**ON, "replicaCount": 0}, kube_version="1.31.0"))


def test_an_alert_fires_when_the_leaders_app_is_unhealthy(chart: helm_python.Chart, tmp_path) -> None:
    assert "EtcdElectorLeaderAppUnhealthy" not in rules(render(chart, ON, kube_version="1.31.0"))
    values = {**ON, "elector": {"appHealth": "http://127.0.0.1:8080/ready"}}
    out = render(chart, values, kube_version="1.31.0")
    rule = rules(out)["EtcdElectorLeaderAppUnhealthy"]
    assert "elector_is_leader{" in rule["expr"] and "elector_app_healthy{" in rule["expr"]
    assert rule["labels"]["severity"] == "critical"
    assert promql_problems(out.one("PrometheusRule")["spec"]["groups"], tmp_path) == []


def test_alerts_use_metrics_the_elector_exports() -> None:
    # Read-only look at the registry: prometheus-client adds the prefix and "_total".
    source = (ROOT / "src" / "metrics.rs").read_text()
    assert 'Registry::with_prefix("elector")' in source
    for name in ("is_leader", "leader_transitions", "etcd_errors", "app_healthy"):
        assert re.search(rf'register\(\s*"{name}"', source), name
    assert "pub op: &'static str" in source


def test_bundled_crd_schemas_refuse_what_the_api_server_would(chart: helm_python.Chart) -> None:
    out = render(chart, ON, kube_version="1.31.0")
    monitor, rule = out.one("PodMonitor"), out.one("PrometheusRule")
    bad_monitor = copy.deepcopy(monitor)
    bad_monitor["spec"]["podMetricsEndpoints"][0]["portName"] = "elector"
    bad_rule = copy.deepcopy(rule)
    del bad_rule["spec"]["groups"][0]["rules"][0]["expr"]
    bad_meta = copy.deepcopy(rule)
    bad_meta["metadata"]["lables"] = {}
    for bad, needle in ((bad_monitor, "portName"), (bad_rule, "'expr' is a required property"),
                        (bad_meta, "lables")):
        errors = validation_errors([bad], "1.31.0")
        assert any(needle in e for e in errors), errors


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (apt-get install prometheus); expressions are still parsed")
def test_promtool_checks_the_rendered_rules(chart: helm_python.Chart, tmp_path: Path) -> None:
    groups = render(chart, ON, kube_version="1.31.0").one("PrometheusRule")["spec"]["groups"]
    broken = copy.deepcopy(groups)
    broken[0]["rules"][0]["annotations"]["description"] = "{{ $value "
    assert any("promtool" in p for p in promql_problems(broken, tmp_path))
    assert promql_problems(groups, tmp_path) == []
