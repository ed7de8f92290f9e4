"""docs/argocd.md: the Argo CD health check runs in Lua 5.1 and judges
leader-mode and ordinary Deployments right; its alert overrides are valid."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, promql_problems
from lupa import lua51

DOC = (ROOT / "docs" / "argocd.md").read_text()
YAML_BLOCKS = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC, re.S)]


def health_script() -> str:
    (cm,) = [b for b in YAML_BLOCKS if "resource.customizations.health.apps_Deployment" in b.get("data", {})]
    return cm["data"]["resource.customizations.health.apps_Deployment"]


def lua_value(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: lua_value(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([lua_value(lua, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua_value(lua, obj)
    hs = lua.execute(health_script())
    return hs["status"], hs["message"] or ""


def deployment(mode: str | None, want: int, generation: int = 2, **status: Any) -> dict[str, Any]:
    labels = {"etcd-elector/readiness": mode} if mode else {"app": "web"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo", "generation": generation, "labels": labels},
        "spec": {"replicas": want},
        "status": {"observedGeneration": 2, **status},
    }


DONE = {"replicas": 3, "updatedReplicas": 3}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        # Leader mode: one available replica (the leader) after the rollout is healthy.
        (deployment("leader", 3, **DONE, availableReplicas=1, readyReplicas=1), "Healthy"),
        (deployment("leader", 3, **DONE), "Progressing"),  # no leader yet
        (deployment("leader", 3, replicas=5, updatedReplicas=3, availableReplicas=1), "Progressing"),  # old pods left
        (deployment("leader", 3, replicas=3, updatedReplicas=1, availableReplicas=1), "Progressing"),
        (deployment("leader", 3, generation=3, **DONE, availableReplicas=1), "Progressing"),
        (deployment("leader", 0, replicas=0, updatedReplicas=0), "Healthy"),
        # Healthy mode and every other Deployment: Argo CD's built-in rules.
        (deployment("healthy", 3, **DONE, availableReplicas=1), "Progressing"),
        (deployment("healthy", 3, **DONE, availableReplicas=3), "Healthy"),
        (deployment(None, 3, **DONE, availableReplicas=2), "Progressing"),
        (deployment(None, 3, **DONE, availableReplicas=3), "Healthy"),
        (deployment(None, 2, replicas=2, updatedReplicas=2, availableReplicas=2,
                    conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]),
         "Degraded"),
    ],
)
def test_argocd_health_check(obj: dict[str, Any], expected: str) -> None:
    assert health(obj)[0] == expected


def test_argocd_health_check_handles_missing_fields_and_pauses() -> None:
    bare = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "generation": 1}, "spec": {}}
    assert health(bare)[0] == "Progressing"
    paused = deployment("leader", 3, **DONE, availableReplicas=1)
    paused["spec"]["paused"] = True
    assert health(paused)[0] == "Suspended"


def test_the_chart_labels_its_deployment_with_the_mode_the_check_reads() -> None:
    template = (ROOT / "charts" / "etcd-elector" / "templates" / "deployment.yaml").read_text()
    assert "etcd-elector/readiness: {{ .Values.elector.readiness }}" in template
    assert 'labels["etcd-elector/readiness"] == "leader"' in health_script()


def test_alert_overrides_are_valid_rules(tmp_path: Path) -> None:
    rule_maps = [b["additionalPrometheusRulesMap"] for b in YAML_BLOCKS if "additionalPrometheusRulesMap" in b]
    groups = [g for m in rule_maps for v in m.values() for g in v["groups"]]
    alerts = {r["alert"] for g in groups for r in g["rules"]}
    assert {"KubeDeploymentReplicasMismatch", "EtcdElectorDeploymentHasNoReadyLeader"} <= alerts
    assert promql_problems(groups, tmp_path) == []
    (values,) = [b for b in YAML_BLOCKS if "defaultRules" in b]
    assert values["defaultRules"]["disabled"]["KubeDeploymentReplicasMismatch"] is True
    assert "deployments=[etcd-elector/readiness]" in values["kube-state-metrics"]["metricLabelsAllowlist"]
