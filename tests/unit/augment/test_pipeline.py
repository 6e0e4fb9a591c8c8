"""Augmentation pipelines: what goes into the config hash, and so into partition keys."""

from __future__ import annotations

from imageml_core.manifest.keys import AugmentKey
from imageml_core.stages.augment.pipeline import load_pipeline


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
