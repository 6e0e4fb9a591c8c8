"""DESIGN.md section 3: stage logic has no Dagster import; imports flow one way; stage
packages never import each other; demo tooling stays out of what stage images ship."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ROOT / "imageml_core" / "stages"


def _modules(path: Path) -> set[str]:
    """Every absolute module an import statement in ``path`` names (``a.b.c``), including
    imports inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports(package: str) -> dict[str, set[str]]:
    """Top-level package names imported, per file of ``package``."""
    return {
        str(path.relative_to(ROOT)): {m.split(".")[0] for m in _modules(path)}
        for path in (ROOT / package).rglob("*.py")
    }


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
                "imageml_dev",
            }
        )
        for path, names in _imports("imageml_core").items()
    }
    assert {p: n for p, n in offenders.items() if n} == {}


def test_resources_do_not_import_assets_or_cli() -> None:
    offenders = {
        p: sorted(n & {"imageml_assets", "imageml_cli", "imageml_dev"})
        for p, n in _imports("imageml_resources").items()
    }
    assert {p: n for p, n in offenders.items() if n} == {}


def test_stage_packages_do_not_import_each_other() -> None:
    """A stage reads the previous stage's output through the typed documents in
    ``imageml_core.manifest.documents``, never by importing its package."""
    stages = sorted(p.name for p in STAGES.iterdir() if (p / "__init__.py").exists())
    assert {"ingest", "augment", "normalize"} <= set(stages)
    offenders: dict[str, list[str]] = {}
    for stage in stages:
        for path in (STAGES / stage).rglob("*.py"):
            others = sorted(
                m
                for m in _modules(path)
                if m.startswith("imageml_core.stages.")
                and m.split(".")[2] != stage
                and m.split(".")[2] in stages
            )
            if others:
                offenders[str(path.relative_to(ROOT))] = others
    assert offenders == {}


def test_shared_core_modules_do_not_import_stage_packages() -> None:
    """Shared modules (settings, storage, manifest, annotations, discovery) sit below the
    stages: a stage may use them, never the other way round."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _modules(path) if m.startswith("imageml_core.stages")
        )
        for path in (ROOT / "imageml_core").rglob("*.py")
        if STAGES not in path.parents
    }
    assert {p: n for p, n in offenders.items() if n} == {}


def test_every_stage_has_the_same_name_in_every_layer() -> None:
    """For each stage, its logic, its Dagster wiring, its tests and its benchmarks are
    found under the same name (DESIGN.md section 3)."""
    stages = sorted(p.name for p in STAGES.iterdir() if (p / "__init__.py").exists())
    for stage in stages:
        assert (ROOT / "imageml_assets" / "defs" / stage / "__init__.py").exists(), stage
        assert (ROOT / "tests" / "integration" / stage).is_dir(), stage
        assert (ROOT / "perf" / stage).is_dir() or stage == "ingest", stage


def test_the_layering_rule_sees_a_cross_stage_import(tmp_path: Path) -> None:
    """The rule's own parser catches both import forms, also inside a function."""
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n"
        "    from imageml_core.stages.augment.batch import augment_batch\n"
        "import imageml_core.stages.normalize.image\n"
    )
    assert {
        "imageml_core.stages.augment.batch",
        "imageml_core.stages.normalize.image",
    } <= _modules(module)
