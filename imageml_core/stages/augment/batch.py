"""Stage 1, augment step for one ingest batch (plain Python; the asset calls this).

Inputs: the batch's usable images from the ingest ledger (typed as
:class:`~imageml_core.manifest.documents.IngestedObject`), and the annotation files of
their folders. Outputs under ``AUGMENTED_URI`` (layout in :mod:`imageml_core.manifest.keys`):
the copies, COCO and Label Studio files for the set, and the
:class:`~imageml_core.manifest.documents.AugmentManifest`. The partition is
``<batch>@<pipeline>-<hash8>``, so changing the pipeline makes new outputs instead of
overwriting old ones, and rerunning the same configuration is a no-op.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageml_core.annotations import coco_to_ls, label_config_for, validate_tasks
from imageml_core.annotations.coco import AnnotatedImage, coco_document
from imageml_core.annotations.intake import (
    ImageRef,
    IntakeReport,
    LabelConfig,
    collect_annotations,
    folder_of,
)
from imageml_core.annotations.regions import Region
from imageml_core.imaging import DEFAULT_MAX_IMAGE_PIXELS, UndecodableImage, decode_rgb
from imageml_core.manifest.annotation_versions import FolderContents, folder_contents
from imageml_core.manifest.documents import (
    AnnotationFiles,
    AugmentChecks,
    AugmentManifest,
    AugmentOutput,
    AugmentSource,
    AugmentSummary,
    AugmentTotals,
    IngestedObject,
    PipelineInfo,
    QuarantinedSource,
    ingested_objects,
)
from imageml_core.manifest.interface import AUGMENT, ManifestStore
from imageml_core.manifest.keys import (
    AugmentKey,
    augment_annotation_uris,
    augment_manifest_uri,
    augmented_image_uri,
)
from imageml_core.manifest.publish import OutputFiles, publish_partition, published
from imageml_core.stages.augment.pipeline import AugmentPipeline
from imageml_core.stages.augment.transform import augment_image, encode_jpeg
from imageml_core.storage.object_store import ObjectInfo, ObjectStore
from imageml_core.storage.paths import staged_name
from imageml_core.storage.staging import (
    NvmeStaging,
    StagedObject,
    raise_unless_quarantinable,
    staging_reason,
)
from imageml_core.uris import S3Uri, parse_s3_uri


@dataclass(frozen=True)
class AugmentConfig:
    """Where augmented outputs go, the dataset their manifests are recorded under, and
    ``MAX_IMAGE_PIXELS`` (the limit ingest applied, so an image it let through decodes
    here too)."""

    augmented_uri: S3Uri
    dataset_name: str
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass
class AugmentResult:
    """What one :func:`augment_batch` call did (or found already done)."""

    partition: str
    manifest_uri: str
    already_published: bool
    totals: AugmentTotals = field(default_factory=AugmentTotals)
    checks: AugmentChecks | None = None
    objects_written: int = 0
    #: What annotation intake reported, as (file, record, reason) rows (computed runs only;
    #: the manifest's ``annotations.intake`` keeps them for good).
    annotation_issues: list[tuple[str, str, str]] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """Flat metadata for the Dagster materialization."""
        return {
            "partition": self.partition,
            "annotation_version": AugmentKey.parse(self.partition).annotations or "none",
            "annotation_issues": len(self.annotation_issues),
            "manifest_uri": self.manifest_uri,
            "already_published": self.already_published,
            "objects_written": self.objects_written,
            **self.totals.to_json(),
        }


@dataclass
class _Augmented:
    """The copies made for a batch: their manifest entries and the local files to upload."""

    outputs: list[AugmentOutput] = field(default_factory=list)
    files: list[tuple[Path, S3Uri]] = field(default_factory=list)
    digests: dict[Path, tuple[str, str]] = field(default_factory=dict)
    boxes_in: int = 0
    boxes_dropped: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)  # source URI -> reason


def augment_batch(
    batch_id: str,
    *,
    store: ObjectStore,
    staging: NvmeStaging,
    manifest: ManifestStore,
    pipeline: AugmentPipeline,
    config: AugmentConfig,
    run_id: str | None = None,
    log_fn: Callable[[str], None] = print,
) -> AugmentResult:
    """Augment one ingested batch and publish it. Raises the object store's errors for a
    failed transfer and :class:`~imageml_core.storage.staging.InsufficientStagingSpace`
    before staging; an image that does not decode raises ``ValueError`` (ingest verified it)."""
    images = [o for o in ingested_objects(manifest, batch_id) if o.is_image]
    folders = folder_contents(manifest, images)
    key = AugmentKey(batch_id, pipeline.tag, folders.version)
    manifest_uri = augment_manifest_uri(config.augmented_uri, key)
    if (record := published(manifest, AUGMENT, str(key))) is not None:
        log_fn(f"{key}: already published; nothing to do")
        summary = AugmentSummary.from_json(record.details)
        return AugmentResult(
            str(key), str(record.manifest_uri), True, summary.totals, summary.checks
        )
    if folders.version:
        log_fn(
            f"{key}: annotation version {folders.version} "
            f"({len(folders.inputs)} annotation file(s) in the images' folders)"
        )
    with staging.job("augment", batch_id, run_id) as job:
        staged, left_out = _stage(
            store,
            staging,
            job,
            images,
            [*folders.annotation_files, *folders.label_configs],
            key,
            log_fn,
        )
        regions_by_uri, intake = collect_annotations(
            [ImageRef(i.uri, i.width or 0, i.height or 0) for i in images],
            [(o.uri, staged[o.uri].path) for o in folders.annotation_files if o.uri in staged],
            folder_images=folders.images,
            label_configs={
                folder_of(o.uri): LabelConfig(o.uri, staged[o.uri].path.read_text("utf-8"))
                for o in folders.label_configs
                if o.uri in staged
            },
        )
        for refused in folders.refused:
            intake.problem(refused.uri, "", refused.problem())
        image_uris = {i.uri for i in images}
        intake.files += [{"uri": u, "error": r} for u, r in left_out.items() if u not in image_uris]
        made = _augment_all(images, staged, regions_by_uri, pipeline, config, staging, job)
        made.quarantined |= {u: r for u, r in left_out.items() if u in image_uris}
        for uri, reason in made.quarantined.items():
            log_fn(f"{key}: quarantined {uri}: {reason}")
        document, coco, ls_tasks = _document(
            key, config, pipeline, images, regions_by_uri, made, intake, folders
        )
        coco_uri, ls_uri = augment_annotation_uris(config.augmented_uri, key)
        written = publish_partition(
            document,
            manifest_uri=manifest_uri,
            object_store=store,
            manifest_store=manifest,
            outputs=OutputFiles(made.files, made.digests),
            annotations=[(coco_uri, coco), (ls_uri, ls_tasks)],
            run_id=run_id,
        )
    log_fn(f"{key}: {document.totals.to_json()}")
    return AugmentResult(
        str(key),
        str(manifest_uri),
        False,
        document.totals,
        document.checks,
        written,
        intake.issues(),
    )


def _stage(
    store: ObjectStore,
    staging: NvmeStaging,
    job: str,
    images: Sequence[IngestedObject],
    annotation_files: Sequence[IngestedObject],
    key: AugmentKey,
    log_fn: Callable[[str], None],
) -> tuple[dict[str, StagedObject], dict[str, str]]:
    """Stage the batch's images and its folders' annotation files, keyed by URI; and the
    objects left out because they vanished or changed since ingest (URI -> reason).
    Raises the first staging failure that is not the object's fault."""
    log_fn(f"{key}: staging {len(images)} images and {len(annotation_files)} annotation files")
    infos = [ObjectInfo(parse_s3_uri(o.uri), o.etag, o.size) for o in [*images, *annotation_files]]
    failures: dict[str, Exception] = {}
    staged = staging.stage_in(store, infos, job, base=None, failures=failures)
    raise_unless_quarantinable(failures)
    return {str(s.info.uri): s for s in staged}, {
        uri: staging_reason(exc) for uri, exc in failures.items()
    }


def _augment_all(
    images: Sequence[IngestedObject],
    staged: dict[str, StagedObject],
    regions_by_uri: dict[str, list[Region]],
    pipeline: AugmentPipeline,
    config: AugmentConfig,
    staging: NvmeStaging,
    job: str,
) -> _Augmented:
    """``pipeline.copies`` copies of every image, written under ``output/<job>/``."""
    out_dir = staging.area("output", job)
    made = _Augmented()
    for image in images:
        if image.uri not in staged:
            continue  # left out at staging (gone or changed): quarantined by the caller
        source = parse_s3_uri(image.uri)
        try:
            pixels = decode_rgb(staged[image.uri].path, max_pixels=config.max_image_pixels)
        except UndecodableImage as exc:
            # Ingest verified it, so the object changed or the decoder disagrees: this
            # source is left out with the reason; the batch goes on.
            made.quarantined[image.uri] = str(exc)
            continue
        regions = tuple(regions_by_uri.get(image.uri, ()))
        for k in range(pipeline.copies):
            seed = pipeline.seed_for(image.sha256, k)
            result = augment_image(pixels, regions, pipeline, seed)
            data = encode_jpeg(result.image, pipeline.quality)
            target = augmented_image_uri(config.augmented_uri, pipeline.tag, source, k)
            local = out_dir.joinpath(*staged_name(f"{source}/aug-{k}.jpg").parts)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            sha = hashlib.sha256(data).hexdigest()
            h, w = result.image.shape[:2]
            made.outputs.append(
                AugmentOutput(
                    uri=str(target),
                    etag=md5,
                    sha256=sha,
                    source_uri=image.uri,
                    source_sha256=image.sha256,
                    copy=k,
                    seed=seed,
                    width=w,
                    height=h,
                    regions=_rounded(result.regions),
                    dropped_regions=result.dropped,
                )
            )
            made.files.append((local, target))
            made.digests[local] = (md5, sha)
            made.boxes_in += len(regions)
            made.boxes_dropped += result.dropped
    made.outputs.sort(key=lambda o: o.uri)
    return made


def _rounded(regions: Sequence[Region]) -> tuple[Region, ...]:
    """Regions as they read back from the manifest (coordinates at document precision), so
    the COCO and Label Studio files agree with the manifest to the last digit."""
    return tuple(Region.from_json(r.to_json()) for r in regions)


def _checks(
    images: Sequence[IngestedObject],
    made: _Augmented,
    pipeline: AugmentPipeline,
    coco: dict[str, Any],
    ls_tasks: list[dict[str, Any]],
    ls_errors: list[str],
) -> AugmentChecks:
    """What the asset checks assert: every source has its copies, every box lies inside
    its image (to 1/1000 px), COCO and Label Studio hold the same number of regions, and
    the tasks validate against their labelling config (the first 20 errors)."""
    return AugmentChecks(
        every_source_has_copies=all(
            sum(1 for o in made.outputs if o.source_uri == i.uri) == pipeline.copies for i in images
        ),
        boxes_inside_images=all(
            r.bbox[0] >= 0
            and r.bbox[1] >= 0
            and r.bbox[0] + r.bbox[2] <= o.width + 1e-3
            and r.bbox[1] + r.bbox[3] <= o.height + 1e-3
            for o in made.outputs
            for r in o.regions
        ),
        coco_boxes=len(coco["annotations"]),
        label_studio_regions=sum(
            len(a.get("result", []))
            for t in ls_tasks
            for a in [*t.get("annotations", []), *t.get("predictions", [])]
        ),
        label_studio_validation_errors=tuple(ls_errors[:20]),
        quarantined=dict(list(made.quarantined.items())[:50]),
    )


def _document(
    key: AugmentKey,
    config: AugmentConfig,
    pipeline: AugmentPipeline,
    images: Sequence[IngestedObject],
    regions_by_uri: dict[str, list[Region]],
    made: _Augmented,
    intake: IntakeReport,
    folders: FolderContents,
) -> tuple[AugmentManifest, dict[str, Any], list[dict[str, Any]]]:
    """The manifest, and the COCO document and Label Studio tasks of the outputs."""
    coco = coco_document(
        [AnnotatedImage(o.uri, o.width, o.height, o.regions) for o in made.outputs],
        intake.category_ids,
    )
    ls_tasks, ls_report = coco_to_ls(coco, image_ref=lambda name: name)
    categories = [c["name"] for c in coco["categories"]]
    ls_config = ls_report.label_config or label_config_for(categories, kind="rectangle")
    ls_errors = validate_tasks(ls_tasks, ls_config) if coco["annotations"] else []
    checks = _checks(images, made, pipeline, coco, ls_tasks, ls_errors)
    coco_uri, ls_uri = augment_annotation_uris(config.augmented_uri, key)
    document = AugmentManifest(
        partition_key=str(key),
        batch_id=key.batch_id,
        dataset=config.dataset_name,
        pipeline=PipelineInfo(
            name=pipeline.name,
            config_hash=pipeline.config_hash,
            copies=pipeline.copies,
            transforms=pipeline.transforms,
            min_visibility=pipeline.min_visibility,
            min_area_px=pipeline.min_area_px,
        ),
        annotations=AnnotationFiles(
            coco_uri=str(coco_uri),
            label_studio_uri=str(ls_uri),
            converter_version=ls_report.converter_version,
            conversion_parameters=ls_report.conversion_parameters,
            annotation_format="coco",
            intake=intake.as_dict(),
            category_ids={c["name"]: c["id"] for c in coco["categories"]},
            annotation_version=key.annotations,
            inputs=folders.inputs_json(),
        ),
        checks=checks,
        sources=tuple(
            AugmentSource(
                uri=i.uri,
                etag=i.etag,
                sha256=i.sha256,
                width=i.width or 0,
                height=i.height or 0,
                regions=_rounded(regions_by_uri.get(i.uri, ())),
            )
            for i in sorted(images, key=lambda i: i.uri)
            if i.uri not in made.quarantined
        ),
        outputs=tuple(made.outputs),
        quarantined=tuple(
            QuarantinedSource(uri, reason, next(i.etag for i in images if i.uri == uri))
            for uri, reason in sorted(made.quarantined.items())
        ),
        totals=AugmentTotals(
            sources=len(images),
            outputs=len(made.outputs),
            boxes_in=made.boxes_in,
            boxes_out=len(coco["annotations"]),
            boxes_dropped=made.boxes_dropped,
            copies=pipeline.copies,
        ),
    )
    return document, coco, ls_tasks
