"""`helm lint --strict` is clean for the chart, with and without example values."""

from __future__ import annotations

import helm_python
import pytest
from conftest import CHART_DIR, FIXTURES, KUBE_VERSIONS, load_values

VALUE_FILES = sorted((FIXTURES / "values").glob("*.yaml"))


def problems(report: dict) -> list[str]:
    """Lint errors and every finding of warning severity or worse."""
    found = list(report["errors"])
    found += [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return found


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_chart_lints_clean_in_strict_mode(kube_version: str) -> None:
    report = helm_python.lint(CHART_DIR, strict=True, kube_version=f"v{kube_version}")
    assert report["total_charts_linted"] == 1
    assert problems(report) == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=lambda p: p.stem)
def test_chart_lints_clean_with_example_values(values_file, kube_version: str) -> None:
    report = helm_python.lint(
        CHART_DIR, load_values(values_file), strict=True, kube_version=f"v{kube_version}"
    )
    assert problems(report) == []


def test_lint_reports_values_the_schema_refuses() -> None:
    report = helm_python.lint(CHART_DIR, {"elector": {"ttl": 0}}, strict=True, kube_version="v1.31.0")
    assert any("/elector/ttl" in p for p in problems(report)), report
