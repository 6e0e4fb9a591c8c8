"""Parsing of object-store locations.

Accepted forms (DESIGN.md section 4):

- ``s3://bucket/key``
- virtual-hosted AWS URLs: ``https://bucket.s3.<region>.amazonaws.com/key``
  (also the legacy ``bucket.s3.amazonaws.com`` and ``bucket.s3-<region>.amazonaws.com``)
- path-style URLs: ``https://s3.<region>.amazonaws.com/bucket/key`` and, for S3-compatible
  servers, ``http(s)://host[:port]/bucket/key`` when ``host[:port]`` is the configured
  ``S3_ENDPOINT_URL``.

Anything else raises :class:`InvalidS3Uri` with a message that says which forms are valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_VIRTUAL_HOST_RE = re.compile(
    r"^(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])\.s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$"
)
_PATH_STYLE_HOST_RE = re.compile(r"^s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$")

VALID_FORMS = (
    "s3://bucket/key, https://bucket.s3.<region>.amazonaws.com/key, "
    "https://s3.<region>.amazonaws.com/bucket/key, or <S3_ENDPOINT_URL>/bucket/key"
)


class InvalidS3Uri(ValueError):
    """A string that is not an object-store location we understand."""


@dataclass(frozen=True, order=True)
class S3Uri:
    """A bucket and a key (or key prefix). ``key`` never starts with ``/``."""

    bucket: str
    key: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def prefix(self) -> str:
        """The key as a listing prefix: empty, or ending with ``/``."""
        if not self.key:
            return ""
        return self.key if self.key.endswith("/") else self.key + "/"

    def join(self, *parts: str) -> S3Uri:
        """A child location: ``S3Uri('b', 'raw').join('x', 'y.jpg') == s3://b/raw/x/y.jpg``."""
        cleaned = [p.strip("/") for p in parts if p and p.strip("/")]
        key = "/".join([self.key.rstrip("/"), *cleaned]) if self.key else "/".join(cleaned)
        return S3Uri(self.bucket, key)

    def contains(self, other: S3Uri) -> bool:
        """True if ``other`` lies under this location (same bucket, key under our prefix)."""
        return self.bucket == other.bucket and (
            not self.key or other.key == self.key.rstrip("/") or other.key.startswith(self.prefix)
        )

    def relative_key(self, other: S3Uri) -> str:
        """The part of ``other.key`` below this prefix."""
        if not self.contains(other):
            raise InvalidS3Uri(f"{other} is not under {self}")
        return other.key[len(self.prefix) :] if self.key else other.key


def _check_bucket(bucket: str, original: str) -> str:
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InvalidS3Uri(
            f"{original!r}: {bucket!r} is not a valid bucket name "
            "(3-63 characters: lowercase letters, digits, '.' and '-')"
        )
    return bucket


def parse_s3_uri(value: str, endpoint_url: str | None = None) -> S3Uri:
    """Parse any accepted location form into an :class:`S3Uri`.

    ``endpoint_url`` is the configured ``S3_ENDPOINT_URL``; path-style URLs on that host are
    accepted so links copied from a RustFS, MinIO or SeaweedFS console work too.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidS3Uri(f"empty object-store location; expected {VALID_FORMS}")
    text = value.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("s3", "s3a"):
        # Split by hand: '?' and '#' are legal in S3 keys and urlsplit would eat them.
        bucket, _, key = text.split("://", 1)[1].partition("/")
        return S3Uri(_check_bucket(bucket, text), key)
    if scheme in ("http", "https"):
        host = (parts.hostname or "").lower()
        path = unquote(parts.path)
        match = _VIRTUAL_HOST_RE.match(host)
        if match:
            return S3Uri(_check_bucket(match["bucket"], text), path.lstrip("/"))
        endpoint_host = urlsplit(endpoint_url).netloc.lower() if endpoint_url else None
        if _PATH_STYLE_HOST_RE.match(host) or (
            endpoint_host and parts.netloc.lower() == endpoint_host
        ):
            bucket, _, key = path.lstrip("/").partition("/")
            if not bucket:
                raise InvalidS3Uri(
                    f"{text!r}: path-style URL without a bucket; expected {VALID_FORMS}"
                )
            return S3Uri(_check_bucket(bucket, text), key)
        raise InvalidS3Uri(
            f"{text!r}: host {host!r} is neither an AWS S3 host nor the configured "
            f"S3_ENDPOINT_URL ({endpoint_url or 'not set'}); expected {VALID_FORMS}"
        )
    raise InvalidS3Uri(
        f"{text!r}: unsupported scheme {parts.scheme or '(none)'!r}; expected {VALID_FORMS}"
    )
