"""Object keys as local paths, safely: no key may escape the directory it is staged under."""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath


class UnsafeKey(ValueError):
    """An object key that would escape the staging directory or is not a plain path."""


def safe_relative_path(key: str) -> PurePosixPath:
    """``key`` as a relative path that cannot escape its parent directory.

    Refuses absolute keys, ``..`` segments, backslashes, NUL and control characters, and
    empty segments, each with a message that names the problem.
    """
    if not key:
        raise UnsafeKey("empty key")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise UnsafeKey(f"key {key!r} contains control characters")
    if "\\" in key:
        raise UnsafeKey(f"key {key!r} contains a backslash")
    if key.startswith("/"):
        raise UnsafeKey(f"key {key!r} is absolute")
    parts = key.split("/")
    if any(p in ("..", ".") for p in parts):
        raise UnsafeKey(f"key {key!r} contains a '..' or '.' segment")
    if any(p == "" for p in parts):
        raise UnsafeKey(f"key {key!r} contains an empty path segment")
    if any(len(p.encode()) > 255 for p in parts):
        raise UnsafeKey(f"key {key!r} has a path segment longer than 255 bytes")
    return PurePosixPath(*parts)


#: Bytes of a staged file's base name kept locally (ext4 allows 255 per name).
MAX_LOCAL_NAME_BYTES = 200


def tail_bytes(name: str, max_bytes: int) -> str:
    """The end of ``name`` in at most ``max_bytes`` UTF-8 bytes (the end keeps the
    extension); a character cut in half is dropped."""
    data = name.encode()
    if len(data) <= max_bytes:
        return name
    return data[len(data) - max_bytes :].decode(errors="ignore")


def staged_name(key: str) -> PurePosixPath:
    """Where an object is kept inside a staging directory: ``<2 hex>/<32 hex>/<base name>``,
    the hex being SHA-256 of ``key``.

    Two distinct keys never share a path (mirroring keys as directories would collide:
    ``x/a.jpg`` is a file where ``x/a.jpg/b.jpg`` needs a directory), and no key makes a
    path longer than PATH_MAX; the base name (its last :data:`MAX_LOCAL_NAME_BYTES` bytes)
    keeps the extension and stays readable.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    base = tail_bytes(key.rstrip("/").rsplit("/", 1)[-1], MAX_LOCAL_NAME_BYTES) or "object"
    if base in (".", ".."):
        base = "object"
    return PurePosixPath(digest[:2], digest, base)
