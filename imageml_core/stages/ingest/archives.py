"""Safe expansion of ZIP archives that arrive under the raw prefix (seed 004).

Each member gets its own outcome: extracted, skipped (OS metadata, recorded, never
silent) or refused (unsafe name, duplicate name, encrypted, nested archive, bomb, a
directory entry carrying data) with a reason. Empty directory entries carry nothing and
are left out.
Declared sizes are not trusted: extraction stops reading past the declared size.
"""

from __future__ import annotations

import errno
import zipfile
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
#: Errors of the staging disk (not of the archive): they fail the batch so a retry can work.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


class InvalidArchive(ValueError):
    """The file is not a readable ZIP archive."""


@dataclass(frozen=True)
class ArchiveMember:
    """One member. ``path`` is set when extracted; ``reason`` says why it was not;
    ``occurrence`` counts members of the same name in archive order (1 for the first)."""

    name: str
    size: int
    path: Path | None
    status: str  # "extracted" | "skipped" | "refused"
    reason: str | None = None
    occurrence: int = 1


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
    except OSError:
        raise  # the staging disk, not the archive: the batch fails and a retry can succeed
    except Exception as exc:  # BadZipFile, and what zipfile raises on hostile directories
        # (UnicodeDecodeError for a name flagged UTF-8 that is not, ValueError, ...)
        raise InvalidArchive(f"not a valid ZIP archive: {type(exc).__name__}: {exc}") from exc
    limits = _Limits(max_members, max_member_bytes, max_total_bytes)
    results: list[ArchiveMember] = []
    seen: dict[str, int] = {}
    total = 0
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.members:
            raise InvalidArchive(
                f"archive has {len(infos)} members, more than the limit of {limits.members}"
            )
        # sorted() is stable: members of one name stay in archive order.
        for n, info in enumerate(sorted(infos, key=lambda i: i.filename)):
            if info.filename.endswith("/") and info.file_size == 0:
                continue  # an empty directory entry carries nothing to record
            occurrence = seen[info.filename] = seen.get(info.filename, 0) + 1
            refused = _refusal(info, occurrence, total, limits)
            if refused is not None:
                results.append(refused)
                continue
            member = _extract(zf, info, dest / f"{n:05d}", occurrence)
            if member.path is not None:
                total += member.size
            results.append(member)
    return results


def _refusal(
    info: zipfile.ZipInfo, occurrence: int, total: int, limits: _Limits
) -> ArchiveMember | None:
    """Why a member is not extracted (skipped or refused), or None. ``occurrence`` is
    how many members of this name came so far, this one included."""
    name, size = info.filename, info.file_size

    def refuse(reason: str, status: str = "refused") -> ArchiveMember:
        return ArchiveMember(name, size, None, status, reason, occurrence)

    if not name:
        return refuse("empty member name")
    base = name.rsplit("/", 1)[-1]
    if name.startswith("__MACOSX/") or base.startswith("._") or base in (".DS_Store", "Thumbs.db"):
        return refuse("operating-system metadata file", "skipped")
    if occurrence > 1:
        return refuse(f"duplicate member name (occurrence {occurrence}; the first is extracted)")
    if name.endswith("/"):
        # A name ending in "/" is a directory to every unzip tool: its bytes have no file
        # name to go to. Refused, with the size, rather than dropped unseen.
        return refuse(f"directory entry carrying {size} bytes of data")
    try:
        safe_relative_path(name)
    except UnsafeKey as exc:
        return refuse(f"unsafe member name: {exc}")
    if info.flag_bits & 0x1:
        return refuse("encrypted member")
    if name.lower().endswith(".zip"):
        return refuse("nested archives are not expanded")
    ratio = size / max(1, info.compress_size)
    if size > limits.member_bytes or (ratio > MAX_COMPRESSION_RATIO and size > 1024**2):
        return refuse(f"zip bomb guard: {size} bytes uncompressed (ratio {ratio:.0f}:1)")
    if total + size > limits.total_bytes:
        return refuse(f"archive expands past {limits.total_bytes} bytes")
    return None


def _extract(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, directory: Path, occurrence: int
) -> ArchiveMember:
    """Extract one member into ``directory``; any failure refuses this member only (a
    compression method zipfile lacks, e.g. Deflate64 as Windows writes it, corrupt LZMA or
    bzip2 data, a bad CRC, ...). Declared sizes are not trusted: reading stops past the
    declared size. A failure of the staging disk itself (``OSError`` on our side of the
    copy) fails the batch: a retry can succeed."""
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
    except Exception as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            raise
        reason = f"cannot extract: {type(exc).__name__}: {exc}"
        return ArchiveMember(name, info.file_size, None, "refused", reason, occurrence)
    return ArchiveMember(name, written, target, "extracted", None, occurrence)
