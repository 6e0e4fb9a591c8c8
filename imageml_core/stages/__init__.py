"""The pipeline's stages, one package each: ``ingest``, ``augment``, ``normalize`` (and,
as they land, ``train`` and ``infer``).

A stage package holds that stage's logic only. It talks to the previous stage through the
typed manifest documents in :mod:`imageml_core.manifest.documents`, never by importing
another stage's package (``tests/unit/test_layering.py`` enforces it).
"""
