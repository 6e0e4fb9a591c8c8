"""DESIGN.md section 3: stage logic has no Dagster import; imports flow one way; stage
packages never import each other; demo tooling stays out of what stage images ship."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ROOT / "imageml_core" / "stages"


def _modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module an import in ``path`` names (``a.b.c``), resolved to absolute names:
    ``import``, ``from ... import`` (relative ones too), and ``importlib.import_module``
    with a literal name, also inside functions."""
    names: set[str] = set()
    package = list(path.relative_to(root).parts[:-1])  # relative imports resolve from here
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if module:
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
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
        assert (ROOT / "perf" / stage).is_dir(), stage


def test_the_layering_rule_sees_every_form_of_a_cross_stage_import(tmp_path: Path) -> None:
    """The rule's own parser catches absolute, relative and importlib imports, also
    inside a function (a file where a stage module would be, in a copy of the layout)."""
    module = tmp_path / "imageml_core" / "stages" / "augment" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import importlib\n"
        "def f():\n"
        "    from imageml_core.stages.ingest.batch import ingest_batch\n"
        "    importlib.import_module('imageml_core.stages.normalize.batch')\n"
        "import imageml_core.stages.normalize.image\n"
        "from ..normalize.partition import normalize_partition\n"
        "from . import transform\n"
    )
    found = _modules(module, root=tmp_path)
    assert {
        "imageml_core.stages.ingest.batch",
        "imageml_core.stages.normalize.batch",
        "imageml_core.stages.normalize.image",
        "imageml_core.stages.normalize.partition",
        "imageml_core.stages.augment.transform",
    } <= found
