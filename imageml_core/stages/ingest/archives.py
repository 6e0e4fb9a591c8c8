"""Safe expansion of ZIP archives that arrive under the raw prefix (seed 004).

Each member gets its own outcome: extracted, skipped (directory or OS metadata, recorded,
never silent) or refused (unsafe name, encrypted, nested archive, bomb) with a reason.
Declared sizes are not trusted: extraction stops reading past the declared size.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from imageml_core.storage.paths import (
    MAX_LOCAL_NAME_BYTES,
    UnsafeKey,
    safe_relative_path,
    tail_bytes,
)

MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_TOTAL_BYTES = 8 * 1024**3
MAX_COMPRESSION_RATIO = 200  # real images barely compress; text-like members over this are bombs
_READ = 1024 * 1024


class InvalidArchive(ValueError):
    """The file is not a readable ZIP archive."""


@dataclass(frozen=True)
class ArchiveMember:
    """One member. ``path`` is set when extracted; ``reason`` says why it was not."""

    name: str
    size: int
    path: Path | None
    status: str  # "extracted" | "skipped" | "refused"
    reason: str | None = None


def is_zip(path: Path) -> bool:
    """True if the file starts with a ZIP signature (local file header, or the end record
    of an empty archive); raises OSError if it cannot be opened."""
    with path.open("rb") as fh:
        return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True)
class _Limits:
    members: int
    member_bytes: int
    total_bytes: int


def expand_zip(
    archive: Path,
    dest: Path,
    *,
    max_members: int = MAX_MEMBERS,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> list[ArchiveMember]:
    """Extract ``archive`` under ``dest``: member ``n`` (in name order) to
    ``dest/<n>/<base name>``, so no two members share a path (``a.jpg`` and ``a.jpg/b.jpg``
    both extract) and no member name makes a path too long. Every member ends in one
    outcome; only an archive that cannot be read at all raises :class:`InvalidArchive`.
    A name that occurs twice is extracted once (the first in archive order); the others
    are refused with that reason."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidArchive(f"not a valid ZIP archive: {exc}") from exc
    limits = _Limits(max_members, max_member_bytes, max_total_bytes)
    results: list[ArchiveMember] = []
    seen: set[str] = set()
    total = 0
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.members:
            raise InvalidArchive(
                f"archive has {len(infos)} members, more than the limit of {limits.members}"
            )
        for n, info in enumerate(sorted(infos, key=lambda i: i.filename)):
            if info.is_dir():
                continue  # directories carry no data
            refused = _refusal(info, seen, total, limits)
            if refused is not None:
                results.append(refused)
                continue
            seen.add(info.filename)
            member = _extract(zf, info, dest / f"{n:05d}")
            if member.path is not None:
                total += member.size
            results.append(member)
    return results


def _refusal(
    info: zipfile.ZipInfo, seen: set[str], total: int, limits: _Limits
) -> ArchiveMember | None:
    """Why a member is not extracted (skipped or refused), or None."""
    name, size = info.filename, info.file_size
    base = name.rsplit("/", 1)[-1]
    if name.startswith("__MACOSX/") or base.startswith("._") or base in (".DS_Store", "Thumbs.db"):
        return ArchiveMember(name, size, None, "skipped", "operating-system metadata file")
    if name in seen:
        return ArchiveMember(
            name, size, None, "refused", "duplicate member name (the first one is extracted)"
        )
    try:
        safe_relative_path(name)
    except UnsafeKey as exc:
        return ArchiveMember(name, size, None, "refused", f"unsafe member name: {exc}")
    if info.flag_bits & 0x1:
        return ArchiveMember(name, size, None, "refused", "encrypted member")
    if name.lower().endswith(".zip"):
        return ArchiveMember(name, size, None, "refused", "nested archives are not expanded")
    ratio = size / max(1, info.compress_size)
    if size > limits.member_bytes or (ratio > MAX_COMPRESSION_RATIO and size > 1024**2):
        reason = f"zip bomb guard: {size} bytes uncompressed (ratio {ratio:.0f}:1)"
        return ArchiveMember(name, size, None, "refused", reason)
    if total + size > limits.total_bytes:
        reason = f"archive expands past {limits.total_bytes} bytes"
        return ArchiveMember(name, size, None, "refused", reason)
    return None


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, directory: Path) -> ArchiveMember:
    """Extract one member into ``directory``; any failure refuses this member only.
    Declared sizes are not trusted: reading stops past the declared size."""
    name = info.filename
    target = directory / (tail_bytes(name.rsplit("/", 1)[-1], MAX_LOCAL_NAME_BYTES) or "member")
    written = 0
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, target.open("wb") as out:
            while chunk := src.read(_READ):
                written += len(chunk)
                if written > info.file_size:
                    raise InvalidArchive("member is larger than its header declares")
                out.write(chunk)
    except (zipfile.BadZipFile, InvalidArchive, OSError, EOFError, zlib.error) as exc:
        target.unlink(missing_ok=True)
        return ArchiveMember(name, info.file_size, None, "refused", f"cannot extract: {exc}")
    return ArchiveMember(name, written, target, "extracted")
