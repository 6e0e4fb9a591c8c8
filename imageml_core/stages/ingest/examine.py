"""Examining staged raw objects: images verified, annotation files parsed, ZIPs expanded.

Every staged object ends as one or more :class:`IngestEntry` values (ok, quarantined or
skipped, with a reason); nothing raises for bad *content* (DESIGN.md section 7).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageml_core.annotations.config import LABEL_CONFIG_NAME
from imageml_core.manifest.documents import IngestEntry
from imageml_core.manifest.interface import STATUS_OK, STATUS_QUARANTINED, STATUS_SKIPPED
from imageml_core.manifest.keys import archive_member_ref, unzipped_member_uri
from imageml_core.stages.ingest.archives import ArchiveMember, InvalidArchive, expand_zip, is_zip
from imageml_core.stages.ingest.verify import (
    ImageCheck,
    check_annotation_file,
    check_label_config,
    verify_image,
)
from imageml_core.storage.paths import staged_name
from imageml_core.storage.staging import StagedObject
from imageml_core.uris import S3Uri


def entry(
    uri: str, etag: str, size: int, kind: str, check: ImageCheck, **extra: Any
) -> IngestEntry:
    """An entry for one object with the outcome of ``check`` (and its image details)."""
    details = {k: v for k, v in check.as_details().items() if v is not None}
    return IngestEntry(
        uri=uri,
        etag=etag,
        size=size,
        kind=kind,
        status=STATUS_OK if check.ok else STATUS_QUARANTINED,
        reason=check.reason,
        **details,  # type: ignore[arg-type]
        **extra,
    )


def _md5_sha256(path: Path) -> tuple[str, str]:
    """MD5 (what S3 reports as the ETag of a single-part upload) and SHA-256, in one pass."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


@dataclass
class Examined:
    """What examining one staged object produced: its entries, and the extracted ZIP
    members to upload to ``BRONZE_URI/unzipped/``."""

    entries: list[IngestEntry] = field(default_factory=list)
    uploads: list[tuple[Path, S3Uri]] = field(default_factory=list)


@dataclass(frozen=True)
class Examiner:
    """Examines staged objects of one batch. ``work_dir`` is where ZIPs expand;
    ``max_image_pixels`` is the bomb limit. (Where a file was staged is not recorded: the
    directory is per run and gone after it, and the manifest must not differ between two
    runs of the same batch.)"""

    raw_uri: S3Uri
    bronze_uri: S3Uri
    work_dir: Path
    max_image_pixels: int

    def __call__(self, obj: StagedObject) -> Examined:
        """One staged object: ``.json`` -> annotation file, ``label_config.xml`` -> the
        folder's labelling config, ZIP -> archive, else image.

        A failure of this node (``OSError``: the staging disk) is raised so the batch
        fails and a retry can succeed; any other exception is about this object's content
        (a parser bug on hostile input) and quarantines it alone, with the reason."""
        try:
            return self._examine(obj)
        except OSError:
            raise
        except Exception as exc:
            info = obj.info
            bad = ImageCheck(False, f"could not be examined: {type(exc).__name__}: {exc}")
            return Examined([entry(str(info.uri), info.etag, info.size, "unknown", bad)])

    def _examine(self, obj: StagedObject) -> Examined:
        info, path = obj.info, obj.path
        if path.suffix.lower() == ".json":
            check = check_annotation_file(path)
            kind = "annotation"
        elif info.uri.key.rsplit("/", 1)[-1] == LABEL_CONFIG_NAME:
            check = check_label_config(path)
            kind = "label_config"
        elif is_zip(path):
            return self._archive(obj)
        else:
            check = verify_image(path, max_pixels=self.max_image_pixels)
            kind = "image"
        return Examined(
            [
                entry(
                    str(info.uri),
                    info.etag,
                    info.size,
                    kind,
                    check,
                    sha256=obj.sha256,
                )
            ]
        )

    def _archive(self, obj: StagedObject) -> Examined:
        """The archive's own entry, then one per member (extracted, skipped or refused)."""
        info = obj.info
        zip_uri = str(info.uri)
        zip_key = self.raw_uri.relative_key(info.uri)
        try:
            members = expand_zip(obj.path, self.work_dir.joinpath(*staged_name(zip_key).parts))
        except InvalidArchive as exc:
            bad = ImageCheck(False, str(exc))
            return Examined(
                [entry(zip_uri, info.etag, info.size, "archive", bad, sha256=obj.sha256)]
            )
        out = Examined(
            [
                entry(
                    zip_uri,
                    info.etag,
                    info.size,
                    "archive",
                    ImageCheck(True),
                    sha256=obj.sha256,
                    members=len(members),
                )
            ]
        )
        for member in members:
            self._member(member, zip_uri, zip_key, info.etag, out)
        return out

    def _member(
        self, member: ArchiveMember, zip_uri: str, zip_key: str, zip_etag: str, out: Examined
    ) -> None:
        """A member that was not extracted is recorded under ``<zip>#<name>``
        (:func:`~imageml_core.manifest.keys.archive_member_ref`) with the archive's ETag; an
        extracted one is verified and, if it is an image, uploaded."""
        if member.path is None:
            out.entries.append(
                IngestEntry(
                    uri=archive_member_ref(zip_uri, member.name, member.occurrence),
                    etag=zip_etag,
                    size=member.size,
                    kind="archive_member",
                    status=STATUS_SKIPPED if member.status == "skipped" else STATUS_QUARANTINED,
                    reason=member.reason,
                    source_uri=zip_uri,
                )
            )
            return
        target = unzipped_member_uri(self.bronze_uri, zip_key, member.name)
        check = verify_image(member.path, max_pixels=self.max_image_pixels)
        md5, sha = _md5_sha256(member.path)
        out.entries.append(
            entry(
                str(target) if check.ok else archive_member_ref(zip_uri, member.name),
                md5 if check.ok else zip_etag,
                member.size,
                "archive_member",
                check,
                sha256=sha,
                source_uri=zip_uri,
            )
        )
        if check.ok:
            out.uploads.append((member.path, target))
