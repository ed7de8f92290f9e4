"""Issue 16: with the longest release name Helm allows (53 characters), every
name the chart renders, and every name Kubernetes derives from it, fits the
API server's limits, not only the OpenAPI schema (which has no length limits)."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import pytest
from conftest import KUBE_VERSIONS, pod_spec, render, validation_errors

RELEASES = [
    "orders-reporting-service-production-eu-west-1-blue-01",  # fullname "<release>-etcd-elector" truncated
    "team-payments-etcd-elector-production-europe-west1-aa",  # contains the chart name: fullname = release
]
EVERYTHING = {
    "cronjob": {"enabled": True, "command": ["/bin/true"]},
    "metrics": {"service": {"enabled": True}},
    "podDisruptionBudget": {"enabled": True},
    "monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# The longest suffixes controllers add: a ControllerRevision hash (up to 10
# characters) for StatefulSet pods' controller-revision-hash label, and the
# scheduled time in Unix minutes for the Jobs of a CronJob, which the API
# server's 52-character limit on CronJob names leaves 10 digits for.
REVISION_HASH = "-" + "x" * 10
JOB_SUFFIX = "-" + "9" * 10


def name_problems(doc: dict[str, Any]) -> list[str]:
    kind, name = doc["kind"], doc["metadata"]["name"]
    what = f"{kind} {name!r} ({len(name)})"
    problems = []
    if not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        problems.append(f"{what}: not a DNS-1123 subdomain of at most 253")
    if kind == "Service" and (len(name) > 63 or not DNS1035_LABEL.match(name)):
        problems.append(f"{what}: a Service name is a DNS-1035 label of at most 63")
    if kind == "StatefulSet":
        # The API server's own check (ValidateStatefulSetName) and what its pods need.
        if len(name) > 52:
            problems.append(f"{what}: over 52, so controller-revision-hash exceeds 63 and no pod is created")
        last_pod = f"{name}-{doc['spec']['replicas'] - 1}"
        if len(last_pod) > 63 or not DNS1123_LABEL.match(last_pod):
            problems.append(f"{what}: pod {last_pod} is not a DNS label")
        if len(name + REVISION_HASH) > 63:
            problems.append(f"{what}: revision label {name + REVISION_HASH} over 63")
        for claim in doc["spec"].get("volumeClaimTemplates", []):
            pvc = f"{claim['metadata']['name']}-{last_pod}"
            if len(pvc) > 253:
                problems.append(f"{what}: PVC {pvc} over 253")
    if kind == "CronJob" and (len(name) > 52 or len(name + JOB_SUFFIX) > 63):
        problems.append(f"{what}: a CronJob name is at most 52 (its Jobs' names are label values)")
    if kind == "Pod" and (len(name) > 63 or not DNS1123_LABEL.match(name)):
        problems.append(f"{what}: a Pod's hostname is its name, a DNS label of at most 63")
    if kind == "Deployment" and len(name + REVISION_HASH) > 253:
        problems.append(f"{what}: ReplicaSet names over 253")
    return problems


def label_maps(doc: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    maps = [("metadata.labels", doc["metadata"].get("labels", {}))]
    spec = doc.get("spec", {})
    if isinstance(spec.get("selector"), dict):
        selector = spec["selector"]
        maps.append(("spec.selector", selector.get("matchLabels", selector)))
    if doc["kind"] in {"Deployment", "StatefulSet"}:
        maps.append(("pod template", spec["template"]["metadata"]["labels"]))
    if doc["kind"] == "CronJob":
        maps.append(("job template", spec["jobTemplate"]["metadata"]["labels"]))
        maps.append(("pod template", spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]))
    if doc["kind"] == "PodMonitor":
        maps.append(("spec.selector", spec["selector"]["matchLabels"]))
    for key in ("podSelector",):
        if key in spec:
            maps.append((f"spec.{key}", spec[key].get("matchLabels", {})))
    for rule in spec.get("ingress", []):
        for peer in rule.get("from", []):
            maps.append(("ingress from", peer.get("podSelector", {}).get("matchLabels", {})))
    if doc["kind"] in {"Deployment", "StatefulSet", "CronJob", "Pod"}:
        for c in pod_spec(doc).get("topologySpreadConstraints", []):
            maps.append(("spread", c.get("labelSelector", {}).get("matchLabels", {})))
    return maps


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_name_fits_with_the_longest_release_name(chart: helm_python.Chart, release: str, kube_version: str) -> None:
    assert len(release) == 53
    out = render(chart, EVERYTHING, kube_version=kube_version, name=release)
    assert validation_errors(out.docs, kube_version) == []
    kinds = {d["kind"] for d in out.docs}
    assert {"Deployment", "StatefulSet", "CronJob", "Pod", "Service"} <= kinds
    problems = [p for doc in out.docs for p in name_problems(doc)]
    for doc in out.docs:
        for where, labels in label_maps(doc):
            for key, value in labels.items():
                if len(str(value)) > 63 or not LABEL_VALUE.match(str(value)):
                    problems.append(f"{doc['kind']} {doc['metadata']['name']} {where}: {key}={value!r}")
    assert problems == []


@pytest.mark.parametrize("release", RELEASES)
def test_truncated_names_stay_distinct(chart: helm_python.Chart, release: str) -> None:
    out = render(chart, EVERYTHING, kube_version="1.31.0", name=release)
    services = [s["metadata"]["name"] for s in out.kinds("Service")]
    assert len(services) == len(set(services)) == 5  # app, metrics, test, etcd, etcd-headless
    sts = out.one("StatefulSet")
    assert sts["spec"]["serviceName"] in services
    assert sts["metadata"]["name"].endswith("-etcd")


def test_name_checks_catch_the_old_limits() -> None:
    # What the chart rendered before: a 59-character StatefulSet, a 63-character CronJob.
    sts = {"kind": "StatefulSet", "metadata": {"name": "a" * 55 + "-etcd"}, "spec": {"replicas": 3}}
    cron = {"kind": "CronJob", "metadata": {"name": "a" * 63}, "spec": {}}
    assert name_problems(sts) and name_problems(cron)
