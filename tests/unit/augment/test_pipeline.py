"""Augmentation pipelines: what goes into the config hash, and so into partition keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imageml_core.manifest.keys import AugmentKey
from imageml_core.stages.augment.pipeline import PipelineConfigError, load_pipeline, read_pipeline


def test_more_copies_make_a_new_partition_not_a_published_one() -> None:
    """The augment partition is ``<batch>@<tag>``; with the copies outside the hash, raising
    AUGMENT_COPIES after a run found the old partition published and made no new copies."""
    one, three = load_pipeline("light", copies=1), load_pipeline("light", copies=3)
    assert one.tag != three.tag
    assert str(AugmentKey("batch-1", one.tag)) != str(AugmentKey("batch-1", three.tag))
    assert load_pipeline("light", copies=3).tag == three.tag  # and stays stable


def test_the_tag_is_name_and_eight_hash_characters() -> None:
    pipeline = load_pipeline("default", copies=2)
    assert pipeline.tag == f"default-{pipeline.config_hash[:8]}"
    assert len(pipeline.config_hash) == 64


def test_the_code_location_loads_without_importing_albumentations(tmp_path: Path) -> None:
    """Albumentations imports torch (~8 s here): only the augment step may pay that, not
    every CLI call, code-location load or sensor process."""
    code = (
        "import sys\n"
        "from imageml_assets.definitions import build_definitions\n"
        "from imageml_core.settings import Settings\n"
        f"build_definitions(Settings.from_env({{}}, home=__import__('pathlib').Path({str(tmp_path)!r})))\n"
        "print(sorted(m for m in ('albumentations', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stderr


def test_transforms_are_checked_when_the_pipeline_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("transforms:\n  - NoSuchTransform: {}\ncopies: 2\n")
    spec = read_pipeline(str(path))  # the file's structure is fine: it has a tag
    assert spec.tag.startswith("mine-") and spec.copies == 2
    with pytest.raises(PipelineConfigError, match="'NoSuchTransform' is not an Albumentations"):
        load_pipeline(str(path))
    path.write_text("transforms: [HorizontalFlip]\n")
    with pytest.raises(PipelineConfigError, match=r"transforms\[0\] must be one 'Name: \{args\}'"):
        read_pipeline(str(path))
