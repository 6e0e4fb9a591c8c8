"""Wiring shared by every stage: the sensor that mirrors materialization metadata into the
manifest store."""

from collections.abc import Sequence

import dagster as dg

from imageml_assets.defs.mirror.sensor import build_mirror_sensor, mirror_materializations

__all__ = ["build_defs", "mirror_materializations"]


def build_defs(asset_keys: Sequence[dg.AssetKey]) -> dg.Definitions:
    """The mirror sensor for ``asset_keys`` (:func:`build_mirror_sensor`)."""
    return dg.Definitions(sensors=[build_mirror_sensor(list(asset_keys))])
