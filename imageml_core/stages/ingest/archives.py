"""Safe expansion of ZIP archives that arrive under the raw prefix (seed 004).

Each member gets its own outcome: extracted, skipped (directory or OS metadata, recorded,
never silent) or refused (unsafe name, encrypted, nested archive, bomb) with a reason.
Declared sizes are not trusted: extraction stops reading past the declared size.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from imageml_core.storage.paths import UnsafeKey, safe_relative_path

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


def expand_zip(
    archive: Path,
    dest: Path,
    *,
    max_members: int = MAX_MEMBERS,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> list[ArchiveMember]:
    """Extract ``archive`` under ``dest``, member names kept as relative paths."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidArchive(f"not a valid ZIP archive: {exc}") from exc
    results: list[ArchiveMember] = []
    total = 0
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise InvalidArchive(
                f"archive has {len(infos)} members, more than the limit of {max_members}"
            )
        for info in sorted(infos, key=lambda i: i.filename):
            name = info.filename
            if info.is_dir():
                continue  # directories carry no data
            base = name.rsplit("/", 1)[-1]
            if (
                name.startswith("__MACOSX/")
                or base.startswith("._")
                or base in (".DS_Store", "Thumbs.db")
            ):
                results.append(
                    ArchiveMember(
                        name, info.file_size, None, "skipped", "operating-system metadata file"
                    )
                )
                continue
            try:
                rel = safe_relative_path(name)
            except UnsafeKey as exc:
                results.append(
                    ArchiveMember(
                        name, info.file_size, None, "refused", f"unsafe member name: {exc}"
                    )
                )
                continue
            if info.flag_bits & 0x1:
                results.append(
                    ArchiveMember(name, info.file_size, None, "refused", "encrypted member")
                )
                continue
            if name.lower().endswith(".zip"):
                results.append(
                    ArchiveMember(
                        name, info.file_size, None, "refused", "nested archives are not expanded"
                    )
                )
                continue
            ratio = info.file_size / max(1, info.compress_size)
            if info.file_size > max_member_bytes or (
                ratio > MAX_COMPRESSION_RATIO and info.file_size > 1024**2
            ):
                results.append(
                    ArchiveMember(
                        name,
                        info.file_size,
                        None,
                        "refused",
                        f"zip bomb guard: {info.file_size} bytes uncompressed (ratio {ratio:.0f}:1)",
                    )
                )
                continue
            if total + info.file_size > max_total_bytes:
                results.append(
                    ArchiveMember(
                        name,
                        info.file_size,
                        None,
                        "refused",
                        f"archive expands past {max_total_bytes} bytes",
                    )
                )
                continue
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with zf.open(info) as src, target.open("wb") as out:
                    while chunk := src.read(_READ):
                        written += len(chunk)
                        if written > info.file_size:
                            raise InvalidArchive("member is larger than its header declares")
                        out.write(chunk)
            except (zipfile.BadZipFile, InvalidArchive, OSError, EOFError) as exc:
                target.unlink(missing_ok=True)
                results.append(
                    ArchiveMember(name, info.file_size, None, "refused", f"cannot extract: {exc}")
                )
                continue
            total += written
            results.append(ArchiveMember(name, written, target, "extracted"))
    return results
