"""DESIGN.md section 3: stage logic has no Dagster import; imports flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_stage_logic_imports_neither_dagster_nor_the_layers_above() -> None:
    offenders = {
        path: sorted(
            names
            & {
                "dagster",
                "dagster_k8s",
                "dagster_aws",
                "imageml_resources",
                "imageml_assets",
                "imageml_cli",
            }
        )
        for path, names in _imports("imageml_core").items()
    }
    assert {p: n for p, n in offenders.items() if n} == {}


def test_resources_do_not_import_assets_or_cli() -> None:
    offenders = {
        p: sorted(n & {"imageml_assets", "imageml_cli"})
        for p, n in _imports("imageml_resources").items()
    }
    assert {p: n for p, n in offenders.items() if n} == {}
