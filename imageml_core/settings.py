"""Configuration from the environment (DESIGN.md section 4; `.env.example` documents all).

Every setting has one environment variable; CLI flags may override. Errors name the
variable and the value, so a typo in a deployment is found at start, not mid-batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from imageml_core.uris import InvalidS3Uri, S3Uri, parse_s3_uri


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


# Bucket layout of the embedded stack (one bucket, a prefix per tier).
EMBEDDED_BUCKET = "imageml"
_URI_VARS = {
    "raw_uri": ("RAW_URI", f"s3://{EMBEDDED_BUCKET}/raw"),
    "bronze_uri": ("BRONZE_URI", f"s3://{EMBEDDED_BUCKET}/bronze"),
    "augmented_uri": ("AUGMENTED_URI", f"s3://{EMBEDDED_BUCKET}/augmented"),
    "normalized_uri": ("NORMALIZED_URI", f"s3://{EMBEDDED_BUCKET}/silver"),
    "training_uri": ("TRAINING_URI", f"s3://{EMBEDDED_BUCKET}/gold"),
    "inference_input_uri": ("INFERENCE_INPUT_URI", f"s3://{EMBEDDED_BUCKET}/inference-input"),
    "hitl_uri": ("HITL_URI", f"s3://{EMBEDDED_BUCKET}/hitl"),
}


@dataclass(frozen=True)
class Settings:
    """All settings. Sizes: ``*_gb`` in GiB, ``*_mb`` in MiB; counts are objects."""

    s3_endpoint_url: str | None
    aws_region: str
    aws_access_key_id: str | None
    aws_secret_access_key: str | None
    raw_uri: S3Uri
    bronze_uri: S3Uri
    augmented_uri: S3Uri
    normalized_uri: S3Uri
    training_uri: S3Uri
    inference_input_uri: S3Uri
    hitl_uri: S3Uri
    final_output_uri: S3Uri | None
    nvme_root: Path
    nvme_min_gb: float
    stage_input_prefix: S3Uri | None
    stage_output_prefix: S3Uri | None
    normalize_sizes: str
    manifest_db_url: str
    mlflow_tracking_uri: str | None
    mlflow_registry_uri: str | None
    dataset_name: str
    ingest_batch_max_objects: int
    ingest_batch_max_mb: int
    raw_full_scan_every_ticks: int
    s3_max_concurrency: int
    max_image_pixels: int
    augment_pipeline: str
    raw_events_queue_url: str | None
    sqs_endpoint_url: str | None
    normalize_fit: str
    normalize_quality: int
    normalize_chroma: str
    normalize_workers: int
    augment_copies: int | None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, home: Path | None = None
    ) -> Settings:
        """Read settings from ``env`` (default ``os.environ``).

        ``home`` is the embedded stack's working directory; it supplies defaults for the
        local paths (NVMe root, SQLite manifest store) when the variables are unset.
        """
        env = os.environ if env is None else env
        home = home or Path(env.get("IMAGEML_HOME") or Path.cwd() / ".imageml")

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else default

        endpoint = get("S3_ENDPOINT_URL")

        def uri(name: str, default: str | None) -> S3Uri | None:
            value = get(name, default)
            if value is None:
                return None
            try:
                return parse_s3_uri(value, endpoint)
            except InvalidS3Uri as exc:
                raise ConfigError(f"{name}: {exc}") from exc

        def number(name: str, default: str, kind: type, minimum: float) -> float:
            raw = get(name, default)
            try:
                value = kind(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"{name}={raw!r} is not a {kind.__name__}") from None
            if value < minimum:
                raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
            return value

        uris = {attr: uri(var, default) for attr, (var, default) in _URI_VARS.items()}
        settings = cls(
            s3_endpoint_url=endpoint,
            aws_region=get("AWS_REGION", get("AWS_DEFAULT_REGION", "us-east-1")) or "us-east-1",
            aws_access_key_id=get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
            final_output_uri=uri("FINAL_OUTPUT_URI", None),
            nvme_root=Path(get("NVME_ROOT", str(home / "nvme")) or ""),
            nvme_min_gb=number("NVME_MIN_GB", "0", float, 0),
            stage_input_prefix=uri("STAGE_INPUT_PREFIX", None),
            stage_output_prefix=uri("STAGE_OUTPUT_PREFIX", None),
            normalize_sizes=get("NORMALIZE_SIZES", "1080p,720p,800x600") or "",
            manifest_db_url=get("MANIFEST_DB_URL", f"sqlite:///{home / 'manifest.db'}") or "",
            mlflow_tracking_uri=get("MLFLOW_TRACKING_URI"),
            mlflow_registry_uri=get("MLFLOW_REGISTRY_URI"),
            dataset_name=get("DATASET_NAME", "imageml") or "imageml",
            ingest_batch_max_objects=int(number("INGEST_BATCH_MAX_OBJECTS", "256", int, 1)),
            ingest_batch_max_mb=int(number("INGEST_BATCH_MAX_MB", "2048", int, 1)),
            raw_full_scan_every_ticks=int(number("RAW_FULL_SCAN_EVERY_TICKS", "60", int, 0)),
            s3_max_concurrency=int(number("S3_MAX_CONCURRENCY", "16", int, 1)),
            max_image_pixels=int(number("MAX_IMAGE_PIXELS", "178956970", int, 1)),
            augment_pipeline=get("AUGMENT_PIPELINE", "default") or "default",
            raw_events_queue_url=get("RAW_EVENTS_QUEUE_URL"),
            sqs_endpoint_url=get("SQS_ENDPOINT_URL"),
            normalize_fit=get("NORMALIZE_FIT", "letterbox") or "letterbox",
            normalize_quality=int(number("NORMALIZE_QUALITY", "90", int, 1)),
            normalize_chroma=get("NORMALIZE_CHROMA", "420") or "420",
            normalize_workers=int(number("NORMALIZE_WORKERS", "0", int, 0)),
            augment_copies=int(number("AUGMENT_COPIES", "1", int, 1))
            if get("AUGMENT_COPIES")
            else None,
            **uris,  # type: ignore[arg-type]
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Sizes must parse; outputs must not lie under the raw prefix (the raw sensor
        would ingest them again)."""
        from imageml_core.sizes import FIT_POLICIES, InvalidSizeToken, parse_sizes

        try:
            parse_sizes(self.normalize_sizes)
        except InvalidSizeToken as exc:
            raise ConfigError(f"NORMALIZE_SIZES={self.normalize_sizes!r}: {exc}") from exc
        if self.normalize_fit not in FIT_POLICIES:
            raise ConfigError(
                f"NORMALIZE_FIT={self.normalize_fit!r}: expected one of {', '.join(FIT_POLICIES)}"
            )
        if not 1 <= self.normalize_quality <= 100:
            raise ConfigError(
                f"NORMALIZE_QUALITY={self.normalize_quality}: JPEG quality must be 1-100"
            )
        if self.normalize_chroma not in ("420", "444"):
            raise ConfigError(
                f"NORMALIZE_CHROMA={self.normalize_chroma!r}: expected 420 or 444 "
                "(JPEG chroma subsampling of normalized variants)"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "raw_uri" or not isinstance(value, S3Uri) or f.name.startswith("stage_"):
                continue
            if self.raw_uri.contains(value) or value.contains(self.raw_uri):
                var = _URI_VARS.get(f.name, (f.name.upper(), None))[0]
                raise ConfigError(
                    f"{var}={value} overlaps RAW_URI={self.raw_uri}: outputs under the raw "
                    "prefix would be picked up again as new raw objects"
                )

    def with_overrides(self, **changes: object) -> Settings:
        updated = replace(self, **changes)  # type: ignore[arg-type]
        updated.validate()
        return updated

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables (for subprocesses and stage pods)."""
        out: dict[str, str] = {}
        names = {attr: var for attr, (var, _) in _URI_VARS.items()}
        names.update(final_output_uri="FINAL_OUTPUT_URI")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[names.get(f.name, f.name.upper())] = str(value)
        return out
