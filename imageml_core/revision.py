"""The code's revision, for provenance (MLflow run tags, prediction provenance)."""

import functools
import os
import subprocess
from pathlib import Path


@functools.cache
def code_revision() -> str:
    """The git commit of the running code: ``IMAGEML_GIT_SHA`` (set in the stage images,
    which carry no ``.git``), else ``git rev-parse HEAD`` of this checkout, else
    ``unknown``. Cached per process."""
    if sha := os.environ.get("IMAGEML_GIT_SHA", "").strip():
        return sha
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
