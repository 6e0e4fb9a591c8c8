"""Configuration from the environment, on pydantic-settings.

The contract is DESIGN.md section 4; ``.env.example`` documents every variable with its
default. This module is the single source of truth in code: each setting is one field of
:class:`Settings`, declared once with its default, its constraint and its description.
The environment variable of a field is its name in upper case (``raw_uri`` -> ``RAW_URI``);
``aws_region`` also falls back to ``AWS_DEFAULT_REGION``. Values are stripped and a blank
value means "use the default". Two defaults depend on the working directory of the
embedded stack (``IMAGEML_HOME``, else ``./.imageml``): ``NVME_ROOT`` (``<home>/nvme``) and
``MANIFEST_DB_URL`` (``sqlite:///<home>/manifest.db``).

Only the environment is read: no ``.env`` file, no secrets directory, and no value is
decoded as JSON. Every invalid value raises :class:`ConfigError` with a one-line message
that names the variable and the value, so a typo in a deployment is found at start, not
mid-batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, NamedTuple, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    AliasGenerator,
    BeforeValidator,
    Field,
    InstanceOf,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from imageml_core.sizes import (
    CHROMA_SUBSAMPLINGS,
    FIT_POLICIES,
    JPEG_QUALITY_MAX,
    JPEG_QUALITY_MIN,
    parse_sizes,
)
from imageml_core.uris import InvalidS3Uri, S3Uri, parse_s3_uri


class ConfigError(ValueError):
    """A setting is missing or malformed; the one-line message names the variable and value."""


# Bucket layout of the embedded stack (one bucket, a prefix per tier).
EMBEDDED_BUCKET = "imageml"

# Locations that may lie under RAW_URI: the raw prefix itself and the NVMe staging maps.
_MAY_OVERLAP_RAW = frozenset({"raw_uri", "stage_input_prefix", "stage_output_prefix"})


def _env_var(field_name: str) -> str:
    """The environment variable of a field: its name in upper case."""
    return field_name.upper()


def _s3_location(value: object, info: ValidationInfo) -> object:
    """Parse a string into an :class:`S3Uri`; path-style URLs on S3_ENDPOINT_URL are accepted."""
    if not isinstance(value, str):
        return value
    try:
        return parse_s3_uri(value, info.data.get("s3_endpoint_url"))
    except InvalidS3Uri as exc:
        raise PydanticCustomError("s3_uri", "{reason}", {"reason": str(exc)}) from None


def _size_list(value: str) -> str:
    """Refuse a ``NORMALIZE_SIZES`` value that :func:`parse_sizes` refuses."""
    parse_sizes(value)  # raises InvalidSizeToken (a ValueError) naming the bad token
    return value


def _database_url(value: str) -> str:
    """Refuse what SQLAlchemy cannot parse or a database the manifest store does not run on.
    The message never repeats the URL: it may hold a password."""
    import sqlalchemy as sa

    try:
        backend = sa.engine.make_url(value).get_backend_name()
    except sa.exc.ArgumentError:
        raise PydanticCustomError(
            "database_url",
            "not a SQLAlchemy URL; expected postgresql+psycopg2://user:password@host:5432/db "
            "or sqlite:///path/to/manifest.db",
        ) from None
    if backend not in ("postgresql", "sqlite"):
        raise PydanticCustomError(
            "database_url",
            "the manifest store runs on PostgreSQL or SQLite, not {backend}",
            {"backend": backend},
        )
    return value


def _fit_policy(value: str) -> str:
    if value not in FIT_POLICIES:
        raise ValueError(f"expected one of {', '.join(FIT_POLICIES)}")
    return value


def _chroma(value: str) -> str:
    if value not in CHROMA_SUBSAMPLINGS:
        raise ValueError(
            f"expected {' or '.join(CHROMA_SUBSAMPLINGS)} (JPEG chroma subsampling of "
            "normalized variants)"
        )
    return value


def _train_task(value: str) -> str:
    if value not in ("detection", "classification"):
        raise ValueError("expected detection or classification")
    return value


def _alias(value: str) -> str:
    """MLflow registry alias rules: not empty, not ``latest`` or ``v<N>`` (reserved)."""
    import re

    if not value or value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value):
        raise ValueError("MLflow reserves 'latest' and 'v<number>'; choose e.g. champion")
    return value


def _cron(value: str) -> str:
    """Five cron fields (Dagster checks the values when it builds the schedule)."""
    if len(value.split()) != 5:
        raise ValueError("expected a cron expression of 5 fields, e.g. '0 21 * * *'")
    return value


def _timezone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone (e.g. America/New_York, UTC)") from None
    return value


# An object-store location: a string is parsed, an S3Uri is taken as it is; it serializes
# (and is documented) as its canonical s3:// string.
_S3Location = Annotated[
    InstanceOf[S3Uri],
    BeforeValidator(_s3_location),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["s3://bucket/prefix"]}),
]


class _Environment(NamedTuple):
    """What :meth:`Settings.from_env` reads: the variables and the embedded stack's home."""

    variables: Mapping[str, str]
    home: Path | None


# Set by Settings.from_env/with_overrides for the duration of one construction; unset, a
# plain ``Settings()`` reads os.environ like any BaseSettings.
_ENVIRONMENT: ContextVar[_Environment | None] = ContextVar("imageml_environment", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """Environment variables from a given mapping (``os.environ`` or a caller's dict).

    Values are stripped and blank ones dropped, so a blank variable means "the default".
    Only upper-case names are read: ``raw_uri`` (the field name, which pydantic would also
    match) is not ``RAW_URI``.
    """

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {
            name: value.strip()
            for name, value in variables.items()
            if name.isupper() and isinstance(value, str) and value.strip()
        }


class _HomeDefaultsSource(PydanticBaseSettingsSource):
    """Defaults of the local paths of the embedded stack, under its home directory."""

    def __init__(self, settings_cls: type[BaseSettings], home: Path) -> None:
        super().__init__(settings_cls)
        self.home = home

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ yields every value at once

    def __call__(self) -> dict[str, Any]:
        return {
            _env_var("nvme_root"): self.home / "nvme",
            _env_var("manifest_db_url"): f"sqlite:///{self.home / 'manifest.db'}",
        }


def _home(environment: _Environment) -> Path:
    """``home``, else ``IMAGEML_HOME``, else ``./.imageml`` (absolute, from the cwd)."""
    if environment.home is not None:
        return Path(environment.home)
    value = environment.variables.get("IMAGEML_HOME")
    return Path(value.strip()) if value and value.strip() else Path.cwd() / ".imageml"


class Settings(BaseSettings):
    """All settings, one field per environment variable (the upper-case field name).

    Immutable and comparable with ``==``. Sizes: ``*_gb`` in GiB, ``*_mb`` in MiB; counts
    are objects. Build with :meth:`from_env`; ``Settings()`` reads ``os.environ`` too.
    Construction raises :class:`ConfigError` for any invalid value.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        alias_generator=AliasGenerator(validation_alias=_env_var),
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        env_file=None,
        secrets_dir=None,
        enable_decoding=False,
        validate_default=True,
    )

    # --- Object storage ------------------------------------------------------------------
    s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint URL; unset means AWS S3. Path-style URLs on this "
        "host are accepted in the URI settings.",
    )
    aws_region: str = Field(
        "us-east-1",
        validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
        description="AWS region; AWS_DEFAULT_REGION is read when AWS_REGION is unset.",
    )
    aws_access_key_id: str | None = Field(
        None, description="AWS access key id; unset means boto3's own credential chain."
    )
    aws_secret_access_key: str | None = Field(
        None, description="AWS secret access key; unset means boto3's own credential chain."
    )
    # --- Bucket + prefix per tier (no output may overlap RAW_URI) --------------------------
    raw_uri: _S3Location = Field(
        f"s3://{EMBEDDED_BUCKET}/raw",
        description="Raw tier: where new source objects land (watched by the raw sensor).",
    )
    bronze_uri: _S3Location = Field(
        f"s3://{EMBEDDED_BUCKET}/bronze", description="Bronze tier: ingested, unpacked images."
    )
    augmented_uri: _S3Location = Field(
        f"s3://{EMBEDDED_BUCKET}/augmented", description="Stage 1 output: augmented images."
    )
    normalized_uri: _S3Location = Field(
        f"s3://{EMBEDDED_BUCKET}/silver", description="Stage 2 output: normalized size variants."
    )
    training_uri: _S3Location = Field(
        f"s3://{EMBEDDED_BUCKET}/gold", description="Stage 3: training datasets and artefacts."
    )
    inference_input_uri: _S3Location = Field(
        f"s3://{EMBEDDED_BUCKET}/inference-input", description="Stage 4 input: images to score."
    )
    hitl_uri: _S3Location = Field(
        f"s3://{EMBEDDED_BUCKET}/hitl", description="Human-in-the-loop review exports."
    )
    final_output_uri: _S3Location | None = Field(
        None, description="Optional copy of stage 4 results; unset means no final output."
    )
    # --- Local NVMe staging (spec 001) -----------------------------------------------------
    nvme_root: Path = Field(
        description="Local staging directory. Default: <IMAGEML_HOME>/nvme.",
    )
    nvme_min_gb: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="GiB kept free on NVME_ROOT beyond what a batch needs; 0 means no reserve.",
    )
    stage_input_prefix: _S3Location | None = Field(
        None, description="S3 prefix mapped to the local staging input path (may be under RAW_URI)."
    )
    stage_output_prefix: _S3Location | None = Field(
        None,
        description="S3 prefix mapped to the local staging output path (may be under RAW_URI).",
    )
    # --- Stage behaviour -------------------------------------------------------------------
    normalize_sizes: Annotated[str, AfterValidator(_size_list)] = Field(
        "1080p,720p,800x600",
        description="Stage 2 size variants, comma-separated: presets (1080p, 720p: caps, in "
        "pixels) or WxH fixed sizes in pixels.",
    )
    manifest_db_url: Annotated[str, AfterValidator(_database_url)] = Field(
        description="SQLAlchemy URL of the manifest store (PostgreSQL in production). "
        "Default: sqlite:///<IMAGEML_HOME>/manifest.db.",
    )
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking server URI.")
    mlflow_registry_uri: str | None = Field(None, description="MLflow model registry URI.")
    dataset_name: str = Field("imageml", description="Dataset the manifests are recorded under.")
    ingest_batch_max_objects: int = Field(
        256, ge=1, description="Ingest batch limit, in objects per batch."
    )
    ingest_batch_max_mb: int = Field(
        2048, ge=1, description="Ingest batch limit, in MiB per batch."
    )
    raw_full_scan_every_ticks: int = Field(
        60,
        ge=0,
        description="Raw sensor: a full listing every N sensor ticks; 0 means only on the "
        "first tick.",
    )
    s3_max_concurrency: int = Field(
        16, ge=1, description="Parallel S3 transfers per process, in concurrent requests."
    )
    max_image_pixels: int = Field(
        178956970,
        ge=1,
        description="Largest image accepted, in pixels (width x height); larger ones are "
        "quarantined as decompression bombs.",
    )
    augment_pipeline: str = Field(
        "default",
        description="Augmentation pipeline: a name under imageml_core/stages/augment/pipelines/ or "
        "a path to a YAML file.",
    )
    raw_events_queue_url: str | None = Field(
        None,
        description="SQS queue receiving S3 'Object Created' events for RAW_URI; unset means "
        "event mode is off (the polling sensor still runs).",
    )
    sqs_endpoint_url: str | None = Field(
        None, description="SQS-compatible endpoint URL; unset means AWS SQS."
    )
    normalize_fit: Annotated[str, AfterValidator(_fit_policy)] = Field(
        "letterbox",
        description="Policy for fixed WxH sizes: letterbox (fit inside, pad) or crop (cover, "
        "centre crop).",
    )
    normalize_quality: int = Field(
        90,
        ge=JPEG_QUALITY_MIN,
        le=JPEG_QUALITY_MAX,
        title="JPEG quality",
        description="JPEG quality of normalized variants, 1-100.",
    )
    normalize_chroma: Annotated[str, AfterValidator(_chroma)] = Field(
        "420",
        description="JPEG chroma subsampling of normalized variants: 420 (smaller files) or "
        "444 (keeps colour edges).",
    )
    normalize_workers: int = Field(
        0, ge=0, description="Stage 2 process-pool size, in processes; 0 means one per core."
    )
    augment_copies: int | None = Field(
        None,
        ge=1,
        description="Augmented copies per image, in objects; unset means the pipeline's own "
        "`copies`.",
    )
    # --- Stage 3: the gold training dataset -------------------------------------------------
    train_variant: str = Field(
        "",
        description="The normalized variant (a NORMALIZE_SIZES token, e.g. 720p) training "
        "sets are assembled from; empty means the first of NORMALIZE_SIZES.",
    )
    train_val_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Fraction of original images in the validation split (by the content hash "
        "of the source image, so an image never changes sides as the dataset grows).",
    )
    train_shard_images: int = Field(
        1000,
        ge=1,
        description="Images per training shard (a tar file in WebDataset layout).",
    )
    train_curated_uri: _S3Location | None = Field(
        None,
        description="A curated training prefix (JPEG normalized outputs a user chose, plus "
        "optional COCO files) that dataset versions are built from instead of "
        "TRAIN_VARIANT; unset means the variant.",
    )
    train_dataset: str = Field(
        "",
        description="Dataset pointer training reads: a gold dataset version id (ds-<16 hex>) "
        "from the manifest store; empty means the newest version.",
    )
    # --- Stage 3: training (spec 000/001 "Training Configurability") -----------------------
    train_task: Annotated[str, AfterValidator(_train_task)] = Field(
        "detection",
        description="What the model learns: detection (boxes, a CenterNet-style head) or "
        "classification (one label per single-object image).",
    )
    train_model: str = Field(
        "resnet10t",
        min_length=1,
        description="timm model name of the backbone (e.g. resnet10t, resnet18, "
        "efficientnet_b0); weights start random unless TRAIN_PRETRAINED_PATH is set.",
    )
    train_pretrained_path: str = Field(
        "",
        description="Local file of backbone weights (.pth or .safetensors); empty means "
        "random init. Nothing is ever downloaded from a hub.",
    )
    train_image_size: int = Field(
        160,
        ge=32,
        le=4096,
        title="Input side",
        description="Square model input side, in pixels; images are letterboxed to it.",
    )
    train_epochs: int = Field(10, ge=1, description="Passes over the train split per training run.")
    train_batch_size: int = Field(
        8,
        ge=1,
        description="Images per step per instance. 8 suits a CPU with a time budget (more "
        "steps beat bigger batches there, perf/train/bench_quality.py); raise it on a GPU.",
    )
    train_learning_rate: float = Field(
        2e-3, gt=0, allow_inf_nan=False, description="Peak AdamW learning rate."
    )
    train_max_minutes: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Wall-time budget of the training loop, in minutes; training then ends "
        "cleanly and still evaluates and registers. 0 means no budget.",
    )
    train_seed: int = Field(
        0,
        ge=0,
        description="Seed: the same dataset, configuration and seed give the same metrics on CPU.",
    )
    train_workers: int = Field(
        0,
        ge=0,
        description="DataLoader worker processes per instance; 0 reads in the training process.",
    )
    train_instances: int = Field(
        1,
        ge=1,
        description="Training instances; more than 1 runs distributed data-parallel training "
        "with torchrun (gloo on CPU, nccl on GPU), each on its own part of the data.",
    )
    train_images_per_node: int = Field(
        0,
        ge=0,
        description="Train images each instance stages and trains on per epoch, in whole "
        "shards (TRAIN_SHARD_IMAGES each, rounded up); 0 means its whole share.",
    )
    train_instance_type: str = Field(
        "",
        description="Instance type of training pods on Kubernetes (node selector "
        "node.kubernetes.io/instance-type); empty means any node.",
    )
    train_schedule_cron: Annotated[str, AfterValidator(_cron)] = Field(
        "0 21 * * *",
        description="When the daily training schedule fires (cron, in TRAIN_SCHEDULE_TIMEZONE).",
    )
    train_schedule_timezone: Annotated[str, AfterValidator(_timezone)] = Field(
        "America/New_York",
        description="IANA time zone of the training schedule and of its daily partitions.",
    )
    registered_model_name: str = Field(
        "",
        description="MLflow registered model that training versions are registered under; "
        "empty means imageml-<TRAIN_TASK> (a detector and a classifier never share one).",
    )
    mlflow_experiment_name: str = Field(
        "imageml-training", min_length=1, description="MLflow experiment of training runs."
    )
    promotion_alias: Annotated[str, AfterValidator(_alias)] = Field(
        "champion",
        description="Registry alias the promotion gate moves to a better model version.",
    )

    @property
    def registered_model(self) -> str:
        """``REGISTERED_MODEL_NAME``, or ``imageml-<TRAIN_TASK>`` when it is empty."""
        return self.registered_model_name or f"imageml-{self.train_task}"

    def __init__(self, **values: Any) -> None:
        """Validate ``values`` over the environment and the defaults.

        Raises:
            ConfigError: a value is invalid (the message names each variable and value).
        """
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment, then the home-derived defaults.

        The environment is the mapping given to :meth:`from_env` (else ``os.environ``);
        ``.env`` files and secret directories are never read.
        """
        environment = _ENVIRONMENT.get() or _Environment(os.environ, None)
        return (
            init_settings,
            _MappingEnvSource(settings_cls, environment.variables),
            _HomeDefaultsSource(settings_cls, _home(environment)),
        )

    @model_validator(mode="after")
    def _outputs_outside_raw(self) -> Self:
        """No output may lie under RAW_URI or contain it: the raw sensor would ingest it."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in _MAY_OVERLAP_RAW or not isinstance(value, S3Uri):
                continue
            if self.raw_uri.contains(value) or value.contains(self.raw_uri):
                raise ValueError(
                    f"{_env_var(name)}={value} overlaps RAW_URI={self.raw_uri}: outputs under "
                    "the raw prefix would be picked up again as new raw objects"
                )
        return self

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, home: Path | None = None
    ) -> Settings:
        """Read settings from ``env``; ``None`` means ``os.environ``.

        An explicit mapping is used instead of ``os.environ``, never merged with it.
        ``home`` is the embedded stack's working directory (else ``IMAGEML_HOME``, else
        ``./.imageml``); it supplies the defaults of ``NVME_ROOT`` and ``MANIFEST_DB_URL``.

        Raises:
            ConfigError: a variable has an invalid value (the message names it).
        """
        with _environment(os.environ if env is None else env, home):
            return cls()

    def with_overrides(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` (field names) applied; the environment is not read.

        Raises:
            ConfigError: a changed value is invalid, or makes the settings inconsistent
                (e.g. an output under RAW_URI), or names no setting.
        """
        values = {name: getattr(self, name) for name in type(self).model_fields}
        with _environment({}, None):
            return type(self)(**(values | changes))

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables (for subprocesses and stage pods).

        Unset (``None``) settings are left out; URIs are in canonical ``s3://`` form, so
        ``Settings.from_env(s.to_env()) == s`` whatever the home directory.
        """
        return {
            _env_var(name): str(value)
            for name in type(self).model_fields
            if (value := getattr(self, name)) is not None
        }


@contextmanager
def _environment(variables: Mapping[str, str], home: Path | None) -> Iterator[None]:
    token = _ENVIRONMENT.set(_Environment(variables, home))
    try:
        yield
    finally:
        _ENVIRONMENT.reset(token)


def _config_error(exc: ValidationError) -> ConfigError:
    """One line naming each invalid variable, its value and what is expected."""
    return ConfigError("; ".join(_describe(error) for error in exc.errors(include_url=False)))


def _describe(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    reason = str(ctx["error"]) if kind == "value_error" else error["msg"]
    if not error["loc"]:  # a rule across settings: its message names the variables
        return reason
    var = _env_var(str(error["loc"][0]))
    field = Settings.model_fields.get(var.lower())
    value = f"{var}={error['input']!r}"
    if kind == "s3_uri":
        return f"{var}: {reason}"
    if kind == "database_url":  # the value may hold a password: not repeated
        return f"{var}: {reason}"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"{value} is not a float"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{value} is not an integer"
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = _bounds(field)
        if field is not None and low is not None and high is not None:
            return f"{value}: {field.title or 'value'} must be {low}-{high}"
        if kind == "greater_than_equal":
            return f"{value} must be at least {ctx['ge']}"
        return f"{value} must be at most {ctx['le']}"
    if kind == "extra_forbidden":
        return f"{var}: no such setting"
    if kind == "missing":
        return f"{var} is not set"
    return f"{value}: {reason}"


def _bounds(field: FieldInfo | None) -> tuple[Any, Any]:
    """The ``ge`` and ``le`` constraints declared on ``field`` (``None`` when absent)."""
    low = high = None
    for constraint in field.metadata if field else ():
        low = getattr(constraint, "ge", None) if low is None else low
        high = getattr(constraint, "le", None) if high is None else high
    return low, high
