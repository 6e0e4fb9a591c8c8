"""S3-compatible object store client (AWS S3, RustFS, MinIO, SeaweedFS).

Plain Python with no Dagster import: stage containers and tests use it directly, and
:mod:`imageml_resources.object_store` wraps it as a Dagster resource.

Two clients, one identity: boto3 for the control plane (buckets, listing, HEAD, small
documents, multipart) and obstore (Rust) for the bulk file transfers a stage makes per
image. Measured here, a 1.9 MB GET costs ~1.8 ms of CPU through obstore against ~5.4 ms
through boto3, a 300 KB PUT ~0.8 ms against ~4.5 ms: CPU that the image work on the same
node gets back. obstore signs with the credentials boto3 resolves (environment, profiles,
SSO, IRSA, instance roles), so both always act as the same principal.

Integrity: small documents are sent with ``Content-MD5``; file uploads are SigV4-signed
over their SHA-256 (the server rejects a body that does not match) and the returned ETag
is compared with the MD5 of the bytes sent. Downloads hash the stream and compare with the
ETag when it is a plain MD5 (single-part uploads), and with the size always. Mismatches are
retried with backoff, then raised.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import obstore
from botocore.config import Config
from botocore.exceptions import ClientError
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import NotFoundError as ObstoreNotFound
from obstore.store import S3Store

from imageml_core.executors import interruptible
from imageml_core.retry import call_with_retries
from imageml_core.uris import S3Uri

log = logging.getLogger(__name__)

_PLAIN_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_CHUNK = 1024 * 1024
# Above this size boto3's managed multipart transfer is used; its ETag is not an MD5.
MULTIPART_THRESHOLD = 64 * 1024 * 1024


class IntegrityError(IOError):
    """Bytes received or stored do not match what the server or the sender said."""


class ObjectNotFound(FileNotFoundError):
    """The object does not exist (or is not visible with these credentials)."""


class ObjectChanged(IntegrityError):
    """The object's ETag is not the one it was listed (or recorded) with."""


class FileChanged(OSError):
    """A local file's bytes differ from the digest its producer recorded."""


class TransferFailed(OSError):
    """A transfer failed for a reason other than a missing object or an integrity check
    (connection refused, access denied, ...), after the client's own retries."""


class _Boto3Credentials:
    """obstore credential callback that hands over what boto3 resolved. Credentials are
    re-read every few minutes so refreshable ones (IRSA, SSO) keep working."""

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials

    def __call__(self) -> dict[str, Any]:
        frozen = self.credentials.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.now(UTC) + timedelta(minutes=5),
        }


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object. ``etag`` is without quotes; ``size`` is in bytes."""

    uri: S3Uri
    etag: str
    size: int
    last_modified: datetime | None = None


@dataclass(frozen=True)
class TransferResult:
    """A finished transfer with the hashes computed on the bytes that crossed the wire."""

    uri: S3Uri
    path: Path
    size: int
    etag: str
    md5: str
    sha256: str


def _first_line(exc: BaseException) -> str:
    """obstore errors carry a multi-line Rust debug dump; the first line says what failed."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _strip_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


def _guess_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _hash_file(path: Path) -> tuple[str, str, int]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return md5.hexdigest(), sha.hexdigest(), size


class ObjectStore:
    """A thin, typed layer over a boto3 S3 client.

    ``endpoint_url`` empty means AWS; anything else is an S3-compatible server, addressed
    path-style (RustFS, MinIO and SeaweedFS do not need DNS per bucket that way).
    ``max_concurrency`` bounds parallel transfers and the HTTP connection pool.
    """

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        max_concurrency: int = 16,
        max_attempts: int = 5,
    ) -> None:
        self.endpoint_url = endpoint_url or None
        self.region = region or "us-east-1"
        self.max_concurrency = max(1, max_concurrency)
        self.max_attempts = max(1, max_attempts)
        self._session = boto3.session.Session(
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
        )
        self._data_stores: dict[str, S3Store] = {}
        self._data_lock = threading.Lock()
        config = Config(
            region_name=self.region,
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            max_pool_connections=self.max_concurrency + 4,
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            connect_timeout=10,
            read_timeout=60,
        )
        self.client = self._session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _data_store(self, bucket: str) -> S3Store:
        """The obstore client for ``bucket`` (one per bucket, built on first use)."""
        with self._data_lock:
            store = self._data_stores.get(bucket)
            if store is None:
                options: dict[str, Any] = {
                    "region": self.region,
                    "client_options": {
                        "allow_http": True,
                        "connect_timeout": "10s",
                        "timeout": "300s",
                    },
                    "retry_config": {"max_retries": self.max_attempts},
                }
                if self.endpoint_url:
                    options["endpoint"] = self.endpoint_url
                    options["virtual_hosted_style_request"] = False
                else:
                    # As boto3 does on AWS: the bucket's own region (obstore does not
                    # follow S3's region redirects), and path style for dotted names
                    # (a virtual host a.b.s3... fails the TLS hostname check).
                    options["region"] = self._bucket_region(bucket)
                    options["virtual_hosted_style_request"] = "." not in bucket
                credentials = self._session.get_credentials()
                if credentials is None:
                    options["skip_signature"] = True
                else:
                    options["credential_provider"] = _Boto3Credentials(credentials)
                store = self._data_stores[bucket] = S3Store(bucket, **options)
            return store

    def _bucket_region(self, bucket: str) -> str:
        """The AWS region ``bucket`` lives in (S3 names it on HEAD, even on a redirect)."""
        try:
            resp = self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            resp = exc.response
        headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return headers.get("x-amz-bucket-region") or self.region

    # ------------------------------------------------------------------ buckets
    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` if it does not exist (embedded stack and tests)."""
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            try:
                self.client.create_bucket(Bucket=bucket)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    # ------------------------------------------------------------------ listing
    def list_objects(
        self,
        location: S3Uri,
        *,
        start_after: str | None = None,
        page_size: int = 1000,
        folder_markers: bool = False,
    ) -> Iterator[ObjectInfo]:
        """Every object under ``location`` in key order, across all pages.

        ``start_after`` is a full key: only keys sorting after it are listed, which is what
        makes a cursor-based sensor tick cost proportional to what is new. Empty objects
        whose key ends in ``/`` (the "folders" consoles create) are left out unless
        ``folder_markers``.
        """
        kwargs: dict[str, object] = {
            "Bucket": location.bucket,
            "Prefix": location.prefix,
            "PaginationConfig": {"PageSize": page_size},
        }
        if start_after:
            kwargs["StartAfter"] = start_after
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not folder_markers and key.endswith("/") and item.get("Size", 0) == 0:
                    continue  # a "folder" marker, not an object
                yield ObjectInfo(
                    uri=S3Uri(location.bucket, key),
                    etag=_strip_etag(item.get("ETag")),
                    size=int(item.get("Size", 0)),
                    last_modified=item.get("LastModified"),
                )

    def head(self, uri: S3Uri) -> ObjectInfo | None:
        """Metadata of one object, or ``None`` if it does not exist."""
        try:
            resp = self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(
            uri=uri,
            etag=_strip_etag(resp.get("ETag")),
            size=int(resp.get("ContentLength", 0)),
            last_modified=resp.get("LastModified"),
        )

    def stat_many(
        self, uris: Sequence[S3Uri], *, max_listed: int | None = None
    ) -> dict[S3Uri, ObjectInfo | None]:
        """Metadata of many objects (``None`` = missing), in as few requests as possible.

        A batch's keys usually sit together, so per bucket the key range from the first to
        the last is listed (one request per 1000 keys) instead of one HEAD per object (~4 ms
        of boto3 CPU each). If that range holds more than ``max_listed`` objects (default:
        4 per key asked for, plus 1000; keys spread through a big prefix), listing stops and
        the rest are HEADed in parallel: the cost stays bounded by the batch, never by the
        bucket.
        """
        found: dict[S3Uri, ObjectInfo | None] = {}
        by_bucket: dict[str, set[str]] = {}
        for uri in uris:
            by_bucket.setdefault(uri.bucket, set()).add(uri.key)
        leftover: list[S3Uri] = []
        for bucket, keys in by_bucket.items():
            first, last = min(keys), max(keys)
            shared = next(
                (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b),
                min(len(first), len(last)),
            )
            folder = first[: first.rfind("/", 0, shared) + 1]  # listed as a folder prefix
            budget = max_listed if max_listed is not None else 4 * len(keys) + 1000
            listed: dict[str, ObjectInfo] = {}
            complete = False
            # start_after=first[:-1] sorts before ``first`` and after almost nothing else.
            for n, info in enumerate(
                self.list_objects(S3Uri(bucket, folder), start_after=first[:-1] or None)
            ):
                if info.uri.key > last:
                    complete = True
                    break
                if n >= budget:
                    break
                listed[info.uri.key] = info
            else:
                complete = True
            for key in keys:
                uri = S3Uri(bucket, key)
                if key in listed:
                    found[uri] = listed[key]
                elif complete:
                    found[uri] = None
                else:
                    leftover.append(uri)
        for uri, info in zip(leftover, self._parallel(self.head, leftover), strict=True):
            found[uri] = info
        return found

    # ------------------------------------------------------------------ bytes
    def get_bytes(self, uri: S3Uri) -> bytes:
        """The whole object in memory; raises :class:`ObjectNotFound` if it does not exist."""
        try:
            resp = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise ObjectNotFound(f"{uri} does not exist") from exc
            raise
        return resp["Body"].read()

    def put_bytes(
        self, uri: S3Uri, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        """Write ``data`` with a Content-MD5 the server verifies; returns the stored object."""
        digest = hashlib.md5(data, usedforsecurity=False)
        resp = self.client.put_object(
            Bucket=uri.bucket,
            Key=uri.key,
            Body=data,
            ContentType=content_type,
            ContentMD5=base64.b64encode(digest.digest()).decode(),
        )
        etag = _strip_etag(resp.get("ETag"))
        if _PLAIN_MD5_ETAG.match(etag) and etag != digest.hexdigest():
            raise IntegrityError(f"{uri}: server stored ETag {etag}, sent MD5 {digest.hexdigest()}")
        return ObjectInfo(uri=uri, etag=etag or digest.hexdigest(), size=len(data))

    def put_bytes_if_changed(
        self, uri: S3Uri, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> bool:
        """Write ``data`` unless an object with the same MD5 already exists there.

        Returns True if it wrote. This is what keeps a rerun from touching a finished
        output (same bytes -> no PUT, the object's Last-Modified stays put).
        """
        existing = self.head(uri)
        if (
            existing is not None
            and existing.etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
        ):
            return False
        self.put_bytes(uri, data, content_type=content_type)
        return True

    def upload_many_if_changed(
        self,
        items: Iterable[tuple[Path, S3Uri]],
        *,
        content_type: str | None = None,
        existing: Mapping[S3Uri, ObjectInfo | None] | None = None,
        digests: Mapping[Path, tuple[str, str]] | None = None,
    ) -> int:
        """Upload local files in parallel, skipping targets that already hold the same bytes.

        Returns how many were written. A rerun of finished work therefore writes nothing.
        ``existing`` (from :meth:`stat_many`) saves a HEAD per target; ``digests`` maps a
        path to its (md5, sha256) when the caller already hashed the bytes it wrote.
        """
        jobs = list(items)

        def one(job: tuple[Path, S3Uri]) -> bool:
            path, uri = job
            digest = (digests or {}).get(path) or _hash_file(path)[:2]  # hashed once, used twice
            current = existing[uri] if existing is not None and uri in existing else self.head(uri)
            if current is not None and current.etag == digest[0]:
                return False
            self.upload_file(
                path, uri, content_type=content_type or _guess_type(path), digest=digest
            )
            return True

        return sum(self._parallel(one, jobs))

    # ------------------------------------------------------------------ files
    def download_file(
        self, uri: S3Uri, path: Path, *, expected: ObjectInfo | None = None
    ) -> TransferResult:
        """Download to ``path`` atomically (temp file + rename), verifying integrity."""

        def attempt() -> TransferResult:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
            try:
                resp = obstore.get(self._data_store(uri.bucket), uri.key)
            except (ObstoreNotFound, FileNotFoundError) as exc:  # obstore raises either
                raise ObjectNotFound(f"{uri} does not exist") from exc
            except (ObstoreError, OSError) as exc:
                raise TransferFailed(f"download {uri}: {_first_line(exc)}") from exc
            etag = _strip_etag(resp.meta.get("e_tag"))
            length = int(resp.meta.get("size", -1))
            md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
            size = 0
            try:
                with tmp.open("wb") as fh:
                    for chunk in resp.stream(min_chunk_size=_CHUNK):
                        fh.write(chunk)
                        md5.update(chunk)
                        sha.update(chunk)
                        size += len(chunk)
            except ObstoreError as exc:  # the connection broke mid-body: retry from scratch
                tmp.unlink(missing_ok=True)
                raise IntegrityError(
                    f"{uri}: transfer interrupted after {size} bytes: {_first_line(exc)}"
                ) from exc
            except BaseException:  # e.g. the disk filled up: leave no partial file behind
                tmp.unlink(missing_ok=True)
                raise
            try:
                if length >= 0 and size != length:
                    raise IntegrityError(f"{uri}: received {size} bytes, server said {length}")
                if _PLAIN_MD5_ETAG.match(etag) and md5.hexdigest() != etag:
                    raise IntegrityError(f"{uri}: MD5 {md5.hexdigest()} does not match ETag {etag}")
                if expected is not None and expected.etag and etag != expected.etag:
                    raise ObjectChanged(
                        f"{uri} changed while staging (ETag {expected.etag} listed, {etag} read)"
                    )
            except IntegrityError:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(path)
            return TransferResult(uri, path, size, etag, md5.hexdigest(), sha.hexdigest())

        return call_with_retries(
            attempt, retry_on=(IntegrityError,), attempts=self.max_attempts, what=f"download {uri}"
        )

    def upload_file(
        self,
        path: Path,
        uri: S3Uri,
        *,
        content_type: str | None = None,
        digest: tuple[str, str] | None = None,
    ) -> TransferResult:
        """Upload ``path`` to ``uri``; small files in one verified PUT, large ones multipart.

        ``digest`` is (md5, sha256) of the file when the caller already hashed it; the
        bytes sent are still checked against that MD5, so a file changed since is refused.
        """
        size = path.stat().st_size

        def attempt() -> TransferResult:
            if size >= MULTIPART_THRESHOLD:
                from boto3.s3.transfer import TransferConfig

                md5, sha, _ = _hash_file(path)
                self.client.upload_file(
                    str(path),
                    uri.bucket,
                    uri.key,
                    ExtraArgs={"ContentType": content_type} if content_type else {},
                    Config=TransferConfig(
                        multipart_threshold=MULTIPART_THRESHOLD, max_concurrency=4
                    ),
                )
                info = self.head(uri)
                if info is None or info.size != size:
                    raise IntegrityError(
                        f"{uri}: stored size differs from {size} bytes after upload"
                    )
                return TransferResult(uri, path, size, info.etag, md5, sha)
            # Small files are read once: the bytes hashed are the bytes sent.
            data = path.read_bytes()
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if digest is not None and digest[0] != md5:
                raise FileChanged(f"{path}: MD5 {md5} now, {digest[0]} when it was hashed")
            sha = digest[1] if digest is not None else hashlib.sha256(data).hexdigest()
            try:
                resp = obstore.put(
                    self._data_store(uri.bucket),
                    uri.key,
                    data,
                    attributes={"Content-Type": content_type} if content_type else None,
                    use_multipart=False,
                )
            except (ObstoreError, OSError) as exc:
                raise TransferFailed(f"upload {uri}: {_first_line(exc)}") from exc
            etag = _strip_etag(resp.get("e_tag"))
            if _PLAIN_MD5_ETAG.match(etag) and etag != md5:
                raise IntegrityError(f"{uri}: server stored ETag {etag}, sent MD5 {md5}")
            return TransferResult(uri, path, len(data), etag or md5, md5, sha)

        return call_with_retries(
            attempt, retry_on=(IntegrityError,), attempts=self.max_attempts, what=f"upload {uri}"
        )

    # ------------------------------------------------------------------ parallel
    def download_many(
        self,
        items: Iterable[tuple[ObjectInfo, Path]],
        *,
        on_done: Callable[[TransferResult], None] | None = None,
        return_exceptions: bool = False,
    ) -> list[TransferResult | Exception]:
        """Download in parallel, at most ``max_concurrency`` at once; order is preserved.

        With ``return_exceptions`` a failed object yields its exception in its slot (after
        retries) instead of aborting the others: one missing object must not sink a batch.
        """
        jobs = list(items)

        def one(job: tuple[ObjectInfo, Path]) -> TransferResult | Exception:
            info, path = job
            try:
                result = self.download_file(info.uri, path, expected=info)
            except (ObjectNotFound, IntegrityError, ClientError, OSError) as exc:
                if not return_exceptions:
                    raise
                return exc
            if on_done:
                on_done(result)
            return result

        return self._parallel(one, jobs)

    def upload_many(
        self,
        items: Iterable[tuple[Path, S3Uri]],
        *,
        content_type: str | None = None,
        on_done: Callable[[TransferResult], None] | None = None,
    ) -> list[TransferResult]:
        """Upload in parallel, at most ``max_concurrency`` at once; order is preserved."""
        jobs = list(items)

        def one(job: tuple[Path, S3Uri]) -> TransferResult:
            result = self.upload_file(job[0], job[1], content_type=content_type)
            if on_done:
                on_done(result)
            return result

        return self._parallel(one, jobs)

    def _parallel(self, fn: Callable, jobs: list) -> list:
        if len(jobs) <= 1:
            return [fn(job) for job in jobs]
        with interruptible(ThreadPoolExecutor(min(self.max_concurrency, len(jobs)))) as pool:
            return list(pool.map(fn, jobs))
