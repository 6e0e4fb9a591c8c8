"""`imageml demo` and `imageml lineage` as a user runs them: separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _imageml(*args: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAW_", "MANIFEST_", "S3_", "AWS_", "IMAGEML_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "imageml_cli.main", *args],
        cwd=cwd,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_demo_ingests_reports_and_stops_its_services(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    # The environment wins over the demo's training defaults: a short training here.
    result = _imageml(
        "demo", "--home", str(home), "--images", "6", cwd=tmp_path, TRAIN_MAX_MINUTES="0.2"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "ingest batch(es)" in out
    # 6 images + 5 in the ZIP registered; the two broken files quarantined with reasons.
    assert "1 ingest batch(es), 14 objects registered, 2 quarantined" in out
    # 11 images x 2 augmented copies; (11 originals + 22 copies) x 3 variants.
    assert "22 augmented images, 99 normalized variants" in out
    assert "not-an-image.jpg: not an image (unrecognised format)" in out
    assert "training dataset ds-" in out and " val images, s3://imageml/gold/datasets/" in out
    # A brief training, registered in the embedded MLflow server and made champion.
    assert "model imageml-detection version 1 (champion: no version held @champion)" in out
    assert "map_50 " in out and "model models:/imageml-detection@champion" in out
    assert "rerun launched 0 run(s)" in out
    assert "services stopped" in out
    # SeaweedFS and MLflow are gone: nothing runs with our data directories any more.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(home / "s3") not in ps and str(home / "mlflow") not in ps

    lineage = _imageml(
        "lineage",
        "--home",
        str(home),
        "--json",
        "s3://imageml/raw/synthetic/shapes-archive.zip",
        cwd=tmp_path,
    )
    assert lineage.returncode == 0, lineage.stderr
    chain = json.loads(lineage.stdout)
    assert chain["records"][0]["status"] == "ok"
    by_step = {}
    for edge in chain["downstream"]:
        by_step.setdefault(edge["step"], []).append(edge)
    # ZIP -> 5 members -> 10 augmented copies -> (5 + 10) x 3 size variants -> the shards
    # of the training variant (all 15 of its images, less copies of validation originals).
    shards = by_step.pop("training_shards")
    assert 5 <= len(shards) <= 15 and all(e["output_uri"].endswith(".tar") for e in shards)
    # ... and on to the model version trained on those shards.
    models = {e["output_uri"] for e in by_step.pop("train")}
    assert models == {"models:/imageml-detection/1"}
    assert {k: len(v) for k, v in by_step.items()} == {"ingest": 5, "augment": 10, "normalize": 45}
    assert all(
        e["output_uri"].startswith("s3://imageml/bronze/unzipped/") for e in by_step["ingest"]
    )
    assert all("/normalized/" in e["output_uri"] for e in by_step["normalize"])

    member = by_step["ingest"][0]["output_uri"]
    back = _imageml("lineage", "--home", str(home), member, cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    assert "<- s3://imageml/raw/synthetic/shapes-archive.zip" in back.stdout


def test_user_errors_are_one_clear_line(tmp_path: Path) -> None:
    unknown = _imageml("lineage", "--home", str(tmp_path), "s3://imageml/nothing.jpg", cwd=tmp_path)
    assert unknown.returncode == 1
    assert "is not in the manifest store" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad_stage = _imageml("run", "--until", "bogus", "--home", str(tmp_path), cwd=tmp_path)
    assert bad_stage.returncode == 2
    assert "stages available: ingest" in bad_stage.stderr
    bad_uri = _imageml("run", "--home", str(tmp_path), cwd=tmp_path, RAW_URI="ftp://bucket/raw")
    assert bad_uri.returncode == 1
    assert "Error: RAW_URI: 'ftp://bucket/raw': unsupported scheme 'ftp'" in bad_uri.stderr
    assert "Traceback" not in bad_uri.stderr
    overlap = _imageml(
        "run", "--home", str(tmp_path), cwd=tmp_path, BRONZE_URI="s3://imageml/raw/out"
    )
    assert overlap.returncode == 1 and "overlaps RAW_URI" in overlap.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AUGMENT_PIPELINE": "nope"}, "Error: AUGMENT_PIPELINE='nope': unknown augmentation"),
        (
            {"MANIFEST_DB_URL": "garbage"},
            "Error: MANIFEST_DB_URL: not a SQLAlchemy URL; expected postgresql+psycopg2://",
        ),
        (
            {"MANIFEST_DB_URL": "mysql://u:pw@db/m"},
            "Error: MANIFEST_DB_URL: the manifest store runs on PostgreSQL or SQLite, not mysql",
        ),
        (
            {"IMAGEML_EXECUTOR": "foo"},
            "Error: IMAGEML_EXECUTOR='foo': expected k8s, multiprocess or in_process",
        ),
    ],
)
def test_configuration_mistakes_name_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = _imageml("run", "--home", str(tmp_path), cwd=tmp_path, **env)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "pw@" not in result.stderr  # a password in the URL is never repeated
