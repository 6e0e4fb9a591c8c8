"""Dagster wiring per stage: ``defs/<stage>/`` holds that stage's assets, checks, sensors and
jobs, and exposes ``build_defs(settings) -> dg.Definitions``; ``definitions.py`` merges them."""
