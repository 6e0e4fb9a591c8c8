"""Settings from the environment (imageml_core.settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageml_core.settings import ConfigError, Settings
from imageml_core.uris import S3Uri


def test_defaults_from_empty_env(tmp_path: Path) -> None:
    s = Settings.from_env({}, home=tmp_path)
    assert s.s3_endpoint_url is None
    assert s.aws_region == "us-east-1"
    assert s.aws_access_key_id is None
    assert s.aws_secret_access_key is None
    assert s.raw_uri == S3Uri("imageml", "raw")
    assert s.bronze_uri == S3Uri("imageml", "bronze")
    assert s.augmented_uri == S3Uri("imageml", "augmented")
    assert s.normalized_uri == S3Uri("imageml", "silver")
    assert s.training_uri == S3Uri("imageml", "gold")
    assert s.inference_input_uri == S3Uri("imageml", "inference-input")
    assert s.hitl_uri == S3Uri("imageml", "hitl")
    assert s.final_output_uri is None
    assert s.stage_input_prefix is None
    assert s.stage_output_prefix is None
    assert s.nvme_root == tmp_path / "nvme"
    assert s.nvme_min_gb == 0.0
    assert s.manifest_db_url == f"sqlite:///{tmp_path / 'manifest.db'}"
    assert s.normalize_sizes == "1080p,720p,800x600"
    assert s.dataset_name == "imageml"
    assert s.ingest_batch_max_objects == 256
    assert s.ingest_batch_max_mb == 2048
    assert s.raw_full_scan_every_ticks == 60
    assert s.s3_max_concurrency == 16
    assert s.max_image_pixels == 178956970
    assert s.mlflow_tracking_uri is None


def test_imageml_home_from_env_supplies_local_defaults(tmp_path: Path) -> None:
    s = Settings.from_env({"IMAGEML_HOME": str(tmp_path / "h")})
    assert s.nvme_root == tmp_path / "h" / "nvme"
    assert s.manifest_db_url == f"sqlite:///{tmp_path / 'h' / 'manifest.db'}"


def test_values_from_env(tmp_path: Path) -> None:
    env = {
        "S3_ENDPOINT_URL": "http://127.0.0.1:8333",
        "AWS_REGION": "eu-west-1",
        "RAW_URI": "http://127.0.0.1:8333/lake/raw",
        "BRONZE_URI": "https://lake.s3.eu-west-1.amazonaws.com/bronze",
        "FINAL_OUTPUT_URI": "s3://results/final",
        "NVME_MIN_GB": " 12.5 ",
        "INGEST_BATCH_MAX_OBJECTS": "10",
        "DATASET_NAME": "cats",
        "MANIFEST_DB_URL": "postgresql://u@db/manifest",
    }
    s = Settings.from_env(env, home=tmp_path)
    assert s.s3_endpoint_url == "http://127.0.0.1:8333"
    assert s.aws_region == "eu-west-1"
    assert s.raw_uri == S3Uri("lake", "raw")
    assert s.bronze_uri == S3Uri("lake", "bronze")
    assert s.final_output_uri == S3Uri("results", "final")
    assert s.nvme_min_gb == 12.5
    assert s.ingest_batch_max_objects == 10
    assert s.dataset_name == "cats"
    assert s.manifest_db_url == "postgresql://u@db/manifest"


def test_aws_default_region_fallback(tmp_path: Path) -> None:
    s = Settings.from_env({"AWS_DEFAULT_REGION": "ap-south-1"}, home=tmp_path)
    assert s.aws_region == "ap-south-1"


def test_blank_values_mean_default(tmp_path: Path) -> None:
    s = Settings.from_env({"RAW_URI": "   ", "NVME_MIN_GB": ""}, home=tmp_path)
    assert s.raw_uri == S3Uri("imageml", "raw")
    assert s.nvme_min_gb == 0.0


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RAW_URI", "ftp://imageml/raw"),
        ("RAW_URI", "s3://Bad_Bucket/raw"),
        ("BRONZE_URI", "http://random.example.com/x"),
        ("FINAL_OUTPUT_URI", "not a uri"),
        ("STAGE_INPUT_PREFIX", "s3://ab/x"),
    ],
)
def test_bad_uri_names_the_variable(tmp_path: Path, var: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({var: value}, home=tmp_path)
    assert str(exc.value).startswith(f"{var}:")
    # The offending value is in the message too.
    assert value.split("/")[-1] in str(exc.value) or value in str(exc.value)


def test_bad_number_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"NVME_MIN_GB": "lots"}, home=tmp_path)
    assert "NVME_MIN_GB" in str(exc.value)
    assert "'lots'" in str(exc.value)
    with pytest.raises(ConfigError, match="NVME_MIN_GB"):
        Settings.from_env({"NVME_MIN_GB": "-1"}, home=tmp_path)
    with pytest.raises(ConfigError, match="INGEST_BATCH_MAX_OBJECTS"):
        Settings.from_env({"INGEST_BATCH_MAX_OBJECTS": "2.5"}, home=tmp_path)
    with pytest.raises(ConfigError, match="S3_MAX_CONCURRENCY"):
        Settings.from_env({"S3_MAX_CONCURRENCY": "0"}, home=tmp_path)


def test_normalize_chroma_setting(tmp_path: Path) -> None:
    assert Settings.from_env({}, home=tmp_path).normalize_chroma == "420"
    assert Settings.from_env({"NORMALIZE_CHROMA": "444"}, home=tmp_path).normalize_chroma == "444"
    with pytest.raises(ConfigError, match=r"NORMALIZE_CHROMA='422': expected 420 or 444"):
        Settings.from_env({"NORMALIZE_CHROMA": "422"}, home=tmp_path)


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("BRONZE_URI", "s3://imageml/raw/bronze"),
        ("NORMALIZED_URI", "s3://imageml/raw"),
        ("HITL_URI", "s3://imageml"),  # contains RAW_URI
        ("FINAL_OUTPUT_URI", "s3://imageml/raw/final"),
    ],
)
def test_output_overlapping_raw_is_refused(tmp_path: Path, var: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({var: value}, home=tmp_path)
    message = str(exc.value)
    assert "RAW_URI" in message
    assert var in message


def test_output_next_to_raw_with_shared_string_prefix_is_fine(tmp_path: Path) -> None:
    s = Settings.from_env({"BRONZE_URI": "s3://imageml/raw-bronze"}, home=tmp_path)
    assert s.bronze_uri == S3Uri("imageml", "raw-bronze")


def test_stage_prefixes_may_lie_under_raw(tmp_path: Path) -> None:
    s = Settings.from_env({"STAGE_INPUT_PREFIX": "s3://imageml/raw/sub"}, home=tmp_path)
    assert s.stage_input_prefix == S3Uri("imageml", "raw/sub")


def test_with_overrides_validates(tmp_path: Path) -> None:
    s = Settings.from_env({}, home=tmp_path)
    assert s.with_overrides(dataset_name="dogs").dataset_name == "dogs"
    with pytest.raises(ConfigError, match="RAW_URI"):
        s.with_overrides(bronze_uri=S3Uri("imageml", "raw/b"))


def test_to_env_round_trips_defaults(tmp_path: Path) -> None:
    s = Settings.from_env({}, home=tmp_path)
    env = s.to_env()
    assert env["RAW_URI"] == "s3://imageml/raw"
    assert env["NORMALIZED_URI"] == "s3://imageml/silver"
    assert env["NVME_ROOT"] == str(tmp_path / "nvme")
    assert "S3_ENDPOINT_URL" not in env  # None values are left out
    assert all(isinstance(v, str) for v in env.values())
    assert Settings.from_env(env, home=tmp_path / "elsewhere") == s


def test_to_env_round_trips_everything_set(tmp_path: Path) -> None:
    env = {
        "S3_ENDPOINT_URL": "http://127.0.0.1:8333",
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "RAW_URI": "http://127.0.0.1:8333/lake/raw",
        "BRONZE_URI": "s3://lake/bronze",
        "AUGMENTED_URI": "s3://lake/aug",
        "NORMALIZED_URI": "s3://lake/silver",
        "TRAINING_URI": "s3://lake/gold",
        "INFERENCE_INPUT_URI": "s3://lake/infer-in",
        "HITL_URI": "s3://lake/hitl",
        "FINAL_OUTPUT_URI": "s3://results/final",
        "NVME_ROOT": str(tmp_path / "scratch"),
        "NVME_MIN_GB": "7.25",
        "STAGE_INPUT_PREFIX": "s3://lake/stage/in",
        "STAGE_OUTPUT_PREFIX": "s3://lake/stage/out",
        "NORMALIZE_SIZES": "720p",
        "MANIFEST_DB_URL": "postgresql://u@db/m",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_REGISTRY_URI": "http://mlflow:5001",
        "DATASET_NAME": "cats",
        "INGEST_BATCH_MAX_OBJECTS": "12",
        "INGEST_BATCH_MAX_MB": "34",
        "RAW_FULL_SCAN_EVERY_TICKS": "0",
        "S3_MAX_CONCURRENCY": "3",
        "MAX_IMAGE_PIXELS": "1000",
    }
    s = Settings.from_env(env, home=tmp_path)
    out = s.to_env()
    # Every variable comes back; URIs in canonical s3:// form.
    assert set(env) <= set(out)
    assert out["RAW_URI"] == "s3://lake/raw"
    assert out["FINAL_OUTPUT_URI"] == "s3://results/final"
    assert out["STAGE_OUTPUT_PREFIX"] == "s3://lake/stage/out"
    assert out["MLFLOW_REGISTRY_URI"] == "http://mlflow:5001"
    again = Settings.from_env(out, home=tmp_path / "other-home")
    assert again == s
    assert again.to_env() == out
