"""Shared fixtures for the packaging tests (issue 7).

Charts are loaded, linted and rendered by Helm's own engine (the Helm v4 Go
SDK, bound by the `helm-python-sdk` package, imported as `helm_python`); the
rendered documents are checked against the Kubernetes OpenAPI schemas by
`kubernetes-validate --strict`. Nothing here renders a template by itself.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from helm_python import _native
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "etcd-elector"
DEPLOY_DIR = ROOT / "deploy"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The oldest and a current Kubernetes version: 1.28 has no native sidecars
# (beta from 1.29), 1.31 has them.
KUBE_VERSIONS = ("1.28.0", "1.31.0")
RELEASE = "demo"
NAMESPACE = "elector"


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return data or {}


@dataclass
class Rendered:
    """The output of one render: template path -> manifest text, parsed."""

    files: dict[str, str]

    @property
    def notes(self) -> str:
        return next((text for name, text in self.files.items() if name.endswith("NOTES.txt")), "")

    @property
    def docs(self) -> list[dict[str, Any]]:
        docs = []
        for name, text in sorted(self.files.items()):
            if name.endswith("NOTES.txt"):
                continue
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return docs

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.kinds(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


def render(
    chart: helm_python.Chart,
    values: dict[str, Any] | None = None,
    *,
    kube_version: str,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """Render a chart the way `helm template --kube-version` does.

    `Chart.render()` has no kube_version parameter, but the native
    `helm_render` it calls takes one in its options object (the same field
    `helm template --kube-version` sets), so this calls it directly.
    Values are checked against values.schema.json as on install.
    """
    options = {
        "name": name,
        "namespace": namespace,
        "kube_version": f"v{kube_version}",
        "is_install": True,
    }
    payload = _native.call_string(
        "helm_render",
        chart._raw(),
        None if values is None else json.dumps(values),
        json.dumps(options),
    )
    return Rendered(json.loads(payload))


# OpenAPI schemas of the prometheus-operator custom resources the chart can
# render, as their CRDs define them (see schemas/README.md for the source).
SCHEMAS = Path(__file__).resolve().parent / "schemas"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.monitoring.coreos.com.v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com.v1.json",
}


def strict(schema: Any) -> Any:
    """A copy of a CRD schema that refuses unknown fields, as
    `kubectl apply --validate=strict` (the API server's field validation)
    does: every object with declared properties and no additionalProperties
    or x-kubernetes-preserve-unknown-fields gets additionalProperties false."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        out.get("properties")
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_errors(doc: dict[str, Any], kube_version: str) -> list[str]:
    """Errors of a custom resource against its bundled CRD schema (strict);
    its metadata is checked as Kubernetes ObjectMeta by kubernetes-validate."""
    import jsonschema

    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]).read_text())
    schema["properties"]["metadata"] = {"type": "object"}
    what = f"{doc['kind']}/{doc['metadata'].get('name')}"
    errors = [
        f"{what}: {'.'.join(str(p) for p in err.absolute_path)}: {err.message}"
        for err in jsonschema.Draft7Validator(strict(schema)).iter_errors(doc)
    ]
    errors += validation_errors(
        [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}], kube_version
    )
    return errors


def validation_errors(docs: list[dict[str, Any]], kube_version: str) -> list[str]:
    """Every way the documents fail `kubernetes-validate --strict` for a version.

    A kind or apiVersion the schemas do not know is an error too (the CLI
    only warns), so a typo in apiVersion cannot pass unnoticed. The
    prometheus-operator resources are checked against their bundled CRD
    schemas instead (kubernetes-validate knows only built-in kinds).
    """
    errors = []
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if (doc.get("apiVersion"), doc.get("kind")) in CRD_SCHEMAS:
            errors += crd_errors(doc, kube_version)
            continue
        try:
            kv.validate(doc, kube_version, strict=True)
        except kv.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            errors.append(f"{what} (k8s {kube_version}): {path}: {err.message}")
        except kv.SchemaNotFoundError as err:
            errors.append(f"{what} (k8s {kube_version}): {err.message}")
    return errors


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod spec inside a Pod, a workload or a CronJob."""
    kind = doc["kind"]
    if kind == "Pod":
        return doc["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in all_containers(spec) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name}, found {len(found)}"
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    """Container env as name -> value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of the embedding fixture chart with its dependency built.

    The fixture's Chart.yaml names this repository's chart by a file://
    path relative to the fixture; the copy points at the same chart by
    absolute path, and Helm's own `dependency update` packages it into
    charts/, as a user of the chart would do.
    """
    work = tmp_path_factory.mktemp("embedder") / "embedder"
    shutil.copytree(FIXTURES / "embedder", work)
    chart_yaml = work / "Chart.yaml"
    meta = yaml.safe_load(chart_yaml.read_text())
    (dep,) = meta["dependencies"]
    assert (FIXTURES / "embedder" / dep["repository"].removeprefix("file://")).resolve() == CHART_DIR
    dep["repository"] = f"file://{CHART_DIR}"
    chart_yaml.write_text(yaml.safe_dump(meta, sort_keys=False))
    helm_python.dependency_update(work, skip_refresh=True)
    return work


@pytest.fixture(scope="session")
def embedder(embedder_dir: Path) -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(embedder_dir) as loaded:
        yield loaded


def promql_problems(groups: list[dict[str, Any]], tmp_dir: Path) -> list[str]:
    """What is wrong with Prometheus rule groups: every expression must parse
    as PromQL (the `promql-parser` package), and, where `promtool` is on PATH
    (Debian's `prometheus` package ships it), `promtool check rules` must
    accept the groups as a rule file, templates included."""
    import subprocess

    import promql_parser

    problems = []
    for group in groups:
        for rule in group["rules"]:
            try:
                promql_parser.parse(str(rule["expr"]))
            except Exception as err:  # the parser raises ValueError on bad PromQL
                problems.append(f"{rule.get('alert') or rule.get('record')}: {err}")
    promtool = shutil.which("promtool")
    if promtool:
        rules_file = tmp_dir / "rules.yaml"
        rules_file.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
        if check.returncode != 0:
            problems.append(f"promtool check rules: {check.stdout}{check.stderr}")
    return problems
