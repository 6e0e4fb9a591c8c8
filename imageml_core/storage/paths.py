"""Object keys as local paths, safely: no key may escape the directory it is staged under."""

from __future__ import annotations

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
