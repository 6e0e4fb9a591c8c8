"""Settings from the environment (imageml_core.settings)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

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


# --- pydantic-settings behaviour (issue 8) ---------------------------------------------


def test_explicit_mapping_ignores_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAW_URI", "s3://leaked/raw")
    monkeypatch.setenv("NVME_ROOT", str(tmp_path / "leaked"))
    monkeypatch.setenv("AWS_REGION", "leak-1")
    monkeypatch.setenv("IMAGEML_HOME", str(tmp_path / "leaked-home"))
    monkeypatch.setenv("NORMALIZE_QUALITY", "not even a number")  # would fail if read
    s = Settings.from_env({"DATASET_NAME": "cats"}, home=tmp_path)
    assert s.raw_uri == S3Uri("imageml", "raw")
    assert s.nvme_root == tmp_path / "nvme"
    assert s.aws_region == "us-east-1"
    assert s.normalize_quality == 90
    assert s.dataset_name == "cats"
    # IMAGEML_HOME comes from the mapping too, not from os.environ.
    s = Settings.from_env({})
    assert s.nvme_root == Path.cwd() / ".imageml" / "nvme"


def test_no_mapping_reads_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAW_URI", "s3://from-environ/raw")
    monkeypatch.setenv("IMAGEML_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("AUGMENT_COPIES", " 3 ")
    s = Settings.from_env()
    assert s.raw_uri == S3Uri("from-environ", "raw")
    assert s.nvme_root == tmp_path / "h" / "nvme"
    assert s.augment_copies == 3
    assert Settings() == s


def test_only_upper_case_variable_names_are_read(tmp_path: Path) -> None:
    s = Settings.from_env({"raw_uri": "s3://lower/raw", "Dataset_Name": "x"}, home=tmp_path)
    assert s.raw_uri == S3Uri("imageml", "raw")
    assert s.dataset_name == "imageml"


def test_dotenv_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("RAW_URI=s3://dotenv/raw\nDATASET_NAME=dotenv\n")
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({}, home=tmp_path)
    assert s.raw_uri == S3Uri("imageml", "raw")
    assert s.dataset_name == "imageml"


def test_values_are_not_decoded_as_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"RAW_URI": '{"bucket": "lake", "key": "raw"}'}, home=tmp_path)
    assert str(exc.value).startswith("RAW_URI:")
    s = Settings.from_env({"DATASET_NAME": '["a", "b"]'}, home=tmp_path)
    assert s.dataset_name == '["a", "b"]'


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("AUGMENT_COPIES", "0", "AUGMENT_COPIES='0' must be at least 1"),
        ("NORMALIZE_QUALITY", "101", "NORMALIZE_QUALITY='101': JPEG quality must be 1-100"),
        ("NORMALIZE_QUALITY", "0", "NORMALIZE_QUALITY='0': JPEG quality must be 1-100"),
        ("NORMALIZE_WORKERS", "-1", "NORMALIZE_WORKERS='-1' must be at least 0"),
        ("RAW_FULL_SCAN_EVERY_TICKS", "-5", "RAW_FULL_SCAN_EVERY_TICKS='-5' must be at least 0"),
        ("INGEST_BATCH_MAX_MB", "0", "INGEST_BATCH_MAX_MB='0' must be at least 1"),
        ("MAX_IMAGE_PIXELS", "many", "MAX_IMAGE_PIXELS='many' is not an integer"),
        ("INGEST_BATCH_MAX_OBJECTS", "2.5", "INGEST_BATCH_MAX_OBJECTS='2.5' is not an integer"),
        ("NVME_MIN_GB", "lots", "NVME_MIN_GB='lots' is not a float"),
        ("NVME_MIN_GB", "nan", "NVME_MIN_GB='nan' is not a float"),
        ("NVME_MIN_GB", "-1", "NVME_MIN_GB='-1' must be at least 0"),
        ("NORMALIZE_FIT", "stretch", "NORMALIZE_FIT='stretch': expected one of letterbox, crop"),
        ("NORMALIZE_SIZES", "bogus", "NORMALIZE_SIZES='bogus': size token 'bogus'"),
        (
            "NORMALIZE_SIZES",
            "720p,720P",
            "NORMALIZE_SIZES='720p,720P': size token '720p' is listed",
        ),
        ("NORMALIZE_CHROMA", "422", "NORMALIZE_CHROMA='422': expected 420 or 444"),
    ],
)
def test_invalid_values_raise_one_line_config_error(
    tmp_path: Path, var: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({var: value}, home=tmp_path)
    message = str(exc.value)
    assert not isinstance(exc.value, ValidationError)
    assert message.startswith(expected)
    assert "\n" not in message
    assert "pydantic" not in message.lower()
    assert "validation error" not in message.lower()


def test_several_invalid_values_are_named_in_one_line(tmp_path: Path) -> None:
    env = {"AUGMENT_COPIES": "0", "NORMALIZE_QUALITY": "101", "RAW_URI": "ftp://imageml/raw"}
    with pytest.raises(ConfigError) as exc:
        Settings.from_env(env, home=tmp_path)
    message = str(exc.value)
    assert "\n" not in message
    for var in env:
        assert var in message


def test_with_overrides_raises_config_error_only(tmp_path: Path) -> None:
    s = Settings.from_env({}, home=tmp_path)
    with pytest.raises(ConfigError, match=r"^NORMALIZE_QUALITY=101: JPEG quality must be 1-100$"):
        s.with_overrides(normalize_quality=101)
    with pytest.raises(ConfigError, match=r"^NORMALIZE_SIZES='7x': size token '7x'"):
        s.with_overrides(normalize_sizes="7x")
    with pytest.raises(ConfigError, match="NOT_A_SETTING"):
        s.with_overrides(not_a_setting=1)
    with pytest.raises(ConfigError, match=r"^AUGMENTED_URI: 'ftp://x/y'"):
        s.with_overrides(augmented_uri="ftp://x/y")
    # Strings are parsed like the environment's; the original is unchanged.
    moved = s.with_overrides(raw_uri="s3://lake/raw", augment_copies=2)
    assert moved.raw_uri == S3Uri("lake", "raw")
    assert moved.augment_copies == 2
    assert s.raw_uri == S3Uri("imageml", "raw")
    assert s.with_overrides() == s


def test_with_overrides_ignores_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Settings.from_env({}, home=tmp_path)
    monkeypatch.setenv("DATASET_NAME", "from-environ")
    monkeypatch.setenv("NORMALIZE_QUALITY", "oops")
    assert s.with_overrides(hitl_uri=S3Uri("imageml", "review")).dataset_name == "imageml"


def test_settings_are_frozen_and_hashable(tmp_path: Path) -> None:
    s = Settings.from_env({}, home=tmp_path)
    with pytest.raises((TypeError, ValueError, AttributeError)):
        s.dataset_name = "dogs"  # type: ignore[misc]
    assert s.dataset_name == "imageml"
    assert {s, Settings.from_env({}, home=tmp_path)} == {s}
    assert s != s.with_overrides(dataset_name="dogs")


def test_to_env_round_trips_stage_settings(tmp_path: Path) -> None:
    env = {
        "NORMALIZE_FIT": "crop",
        "NORMALIZE_QUALITY": "77",
        "NORMALIZE_CHROMA": "444",
        "NORMALIZE_WORKERS": "3",
        "AUGMENT_PIPELINE": "light",
        "AUGMENT_COPIES": "4",
        "RAW_EVENTS_QUEUE_URL": "http://sqs:9324/queue/raw",
        "SQS_ENDPOINT_URL": "http://sqs:9324",
    }
    s = Settings.from_env(env, home=tmp_path)
    out = s.to_env()
    assert {k: out[k] for k in env} == env
    assert "AUGMENT_COPIES" not in Settings.from_env({}, home=tmp_path).to_env()
    assert Settings.from_env(out, home=tmp_path / "other") == s


def test_every_field_is_documented() -> None:
    fields = Settings.model_fields
    assert fields  # the class declares its settings as fields
    for name, field in fields.items():
        assert field.description, f"{name} has no description"
    assert "GiB" in (fields["nvme_min_gb"].description or "")
    assert "MiB" in (fields["ingest_batch_max_mb"].description or "")
    assert "pixels" in (fields["max_image_pixels"].description or "")
    assert "objects" in (fields["ingest_batch_max_objects"].description or "")


def test_environment_variable_names_are_the_upper_case_field_names(tmp_path: Path) -> None:
    s = Settings.from_env({}, home=tmp_path)
    names = {name.upper() for name in Settings.model_fields}
    assert set(s.to_env()) <= names
    assert "IMAGEML_HOME" not in names  # the home supplies defaults; it is not a setting


def test_env_example_documents_every_setting() -> None:
    """Docs match the code: each setting's variable appears in .env.example."""
    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    missing = [
        name.upper()
        for name in Settings.model_fields
        if not re.search(rf"^#? ?{name.upper()}=", text, re.MULTILINE)
    ]
    assert missing == []
