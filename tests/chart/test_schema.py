"""values.schema.json accepts the chart's own values and refuses bad ones."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from conftest import CHART_DIR, FIXTURES, load_values

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def test_values_yaml_passes_the_schema(chart: helm_python.Chart) -> None:
    chart.validate_schema(load_values(CHART_DIR / "values.yaml"))
    chart.validate_schema(chart.values)


@pytest.mark.parametrize("values_file", sorted((FIXTURES / "values").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_values_pass_the_schema(chart: helm_python.Chart, values_file: Path) -> None:
    chart.validate_schema(chart.merge_values(load_values(values_file)))


@pytest.mark.parametrize(
    ("values_file", "message"),
    [
        ("wrong-type.yaml", "/replicaCount"),
        ("misspelt-key.yaml", "'tll' not allowed"),
        ("ttl-out-of-range.yaml", "/elector/ttl"),
    ],
)
def test_bad_value_files_are_refused(chart: helm_python.Chart, values_file: str, message: str) -> None:
    values = chart.merge_values(load_values(FIXTURES / "bad-values" / values_file))
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        chart.validate_schema(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"elector": {"ttl": 3601}}, "/elector/ttl"),
        ({"elector": {"ttl": "10"}}, "/elector/ttl"),
        ({"cronjob": {"ttl": 1}}, "/cronjob/ttl"),
        ({"elector": {"nativeSidecar": "yes"}}, "/elector/nativeSidecar"),
        ({"elector": {"logFormat": "xml"}}, "/elector/logFormat"),
        ({"elector": {"securityContext": {"readOnlyRootFileSystem": True}}}, "readOnlyRootFileSystem"),
        ({"etcd": {"endpoints": ["etcd:2379"]}}, "/etcd/endpoints/0"),
        ({"etcd": {"endpoints": "http://etcd:2379"}}, "/etcd/endpoints"),
        ({"etcd": {"bundled": {"replicas": 2}}}, "/etcd/bundled/replicas"),
        ({"etcd": {"endpoints": ["https://e:2379"], "tls": {"enabled": True}}}, "/etcd/tls/existingSecret"),
        ({"etcd": {"endpoints": ["https://e:2379"], "auth": {"enabled": True, "existingSecret": "s"}}}, "/etcd/auth/username"),
        ({"cronjob": {"enabled": True}}, "/cronjob/command"),
        ({"app": {"env": [{"name": "PORT", "value": 8080}]}}, "/app/env/0/value"),
        ({"strategy": {"rollingUpdate": {"maxUnavailable": "all"}}}, "/strategy/rollingUpdate/maxUnavailable"),
        ({"podDisruptionBudget": {"enabled": True, "minAvailable": 1}}, "'minAvailable' not allowed"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"bogus": True}, "'bogus' not allowed"),
        ({"elector": {"protocol": "raft"}}, "/elector/protocol"),
        ({"elector": {"adminListen": "4041"}}, "/elector/adminListen"),
    ],
)
def test_bad_values_are_refused_with_the_offending_key(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        chart.validate_schema(chart.merge_values(values))


@pytest.mark.parametrize("ttl", [2, 10, 3600])
def test_ttl_range_is_two_to_3600_seconds(chart: helm_python.Chart, ttl: int) -> None:
    chart.validate_schema(chart.merge_values({"elector": {"ttl": ttl}, "cronjob": {"ttl": ttl}}))


@pytest.mark.parametrize("mode", ["auto", True, False])
def test_native_sidecar_accepts_auto_true_and_false(chart: helm_python.Chart, mode: Any) -> None:
    chart.validate_schema(chart.merge_values({"elector": {"nativeSidecar": mode}}))


def test_bad_values_are_refused_at_install_time(chart: helm_python.Chart) -> None:
    # Rendering (what install and template do) checks the schema first.
    from conftest import render

    with pytest.raises(helm_python.HelmValuesError, match=re.escape("/elector/ttl")):
        render(chart, {"elector": {"ttl": 5000}}, kube_version="1.31.0")


def object_nodes(node: Any, path: str = "#") -> list[tuple[str, dict]]:
    found = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path, node))
        for key, child in node.items():
            found += object_nodes(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += object_nodes(child, f"{path}/{i}")
    return found


def test_every_object_in_the_schema_refuses_unknown_keys() -> None:
    nodes = object_nodes(SCHEMA)
    assert len(nodes) > 30
    open_nodes = [path for path, node in nodes if node.get("additionalProperties") is not False]
    # if/then branches only narrow properties already declared by their object.
    open_nodes = [p for p in open_nodes if not re.search(r"/(if|then)$", p)]
    assert open_nodes == []


# --- values.yaml documents every key ---------------------------------------


def resolve(schema: dict) -> dict:
    ref = schema.get("$ref")
    if ref:
        return SCHEMA["definitions"][ref.rsplit("/", 1)[1]]
    return schema


def is_group(schema: dict) -> bool:
    """A mapping of the chart's own keys (as opposed to a Kubernetes object
    such as a securityContext, which is one documented value)."""
    if "$ref" in schema:
        return schema["$ref"] == "#/definitions/image"
    return "properties" in schema


def leaf_keys(node: yaml.MappingNode, schema: dict, prefix: str = "") -> list[tuple[str, int]]:
    """(dotted path, line) of every documented value in values.yaml."""
    found = []
    for key_node, value_node in node.value:
        key = key_node.value
        sub = schema["properties"][key]
        path = f"{prefix}{key}"
        if is_group(sub) and isinstance(value_node, yaml.MappingNode):
            found += leaf_keys(value_node, resolve(sub), path + ".")
        else:
            found.append((path, key_node.start_mark.line))
    return found


VALUES_TEXT = (CHART_DIR / "values.yaml").read_text()
LEAVES = leaf_keys(yaml.compose(VALUES_TEXT), SCHEMA)


def test_values_yaml_comments_every_key() -> None:
    lines = VALUES_TEXT.splitlines()
    uncommented = [path for path, line in LEAVES if not lines[line - 1].lstrip().startswith("#")]
    assert uncommented == []


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    missing = [path for path, _ in LEAVES if f"`{path}`" not in readme]
    assert missing == []
