"""Verification of raw objects and safe ZIP expansion (pure logic, real files)."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from imageml_core.manifest.keys import archive_member_ref
from imageml_core.stages.ingest.archives import InvalidArchive, expand_zip, is_zip
from imageml_core.stages.ingest.verify import check_annotation_file, verify_image
from tests.helpers import jpeg_bytes, png_bytes, zip_bytes


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _image(mode: str, fmt: str, size: tuple[int, int] = (20, 10), **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("RGB", "WEBP"),
        ("RGB", "TIFF"),
        ("RGB", "BMP"),
    ],
)
def test_supported_images_pass_with_their_dimensions(tmp_path: Path, mode: str, fmt: str) -> None:
    check = verify_image(_write(tmp_path, f"x.{fmt.lower()}", _image(mode, fmt)))
    assert check.ok, check.reason
    assert (check.width, check.height) == (20, 10)
    assert check.format == fmt


def test_bad_inputs_get_specific_reasons(tmp_path: Path) -> None:
    good = jpeg_bytes(1, size=(256, 256))
    assert verify_image(_write(tmp_path, "empty.jpg", b"")).reason == "empty object (0 bytes)"
    assert (
        verify_image(_write(tmp_path, "text.jpg", b"not an image")).reason
        == "not an image (unrecognised format)"
    )
    truncated = verify_image(_write(tmp_path, "t.jpg", good[: len(good) // 2]))
    assert not truncated.ok and "truncated" in (truncated.reason or "")
    bomb = verify_image(
        _write(tmp_path, "big.png", png_bytes(1, size=(200, 200))), max_pixels=100 * 100
    )
    assert (
        not bomb.ok
        and "decompression bomb" in (bomb.reason or "")
        and "MAX_IMAGE_PIXELS=10000" in (bomb.reason or "")
    )
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, "ICO")
    unsupported = verify_image(_write(tmp_path, "x.ico", ico.getvalue()))
    assert unsupported.reason == "unsupported image format ICO"
    float_tiff = verify_image(_write(tmp_path, "f.tif", _image("F", "TIFF")))
    assert float_tiff.reason == "unsupported colour mode F"


def test_annotation_files_are_told_apart(tmp_path: Path) -> None:
    assert (
        check_annotation_file(_write(tmp_path, "a.json", b'[{"data": {}}]')).format
        == "label_studio"
    )
    assert (
        check_annotation_file(
            _write(tmp_path, "b.json", b'{"images": [], "annotations": []}')
        ).format
        == "coco"
    )
    assert "neither" in (
        check_annotation_file(_write(tmp_path, "c.json", b'{"x": 1}')).reason or ""
    )
    assert "not valid JSON" in (
        check_annotation_file(_write(tmp_path, "d.json", b"{")).reason or ""
    )


def test_zip_members_extracted_skipped_or_refused_with_reasons(tmp_path: Path) -> None:
    archive = _write(
        tmp_path,
        "a.zip",
        zip_bytes(
            {
                "dir/a.jpg": jpeg_bytes(1),
                "b.jpg": jpeg_bytes(2),
                "../evil.jpg": b"x",
                "/abs.jpg": b"x",
                "__MACOSX/._b.jpg": b"x",
                "inner.zip": zip_bytes({"c.jpg": b"x"}),
            }
        ),
    )
    assert is_zip(archive)
    members = {m.name: m for m in expand_zip(archive, tmp_path / "out")}
    assert members["dir/a.jpg"].status == "extracted"
    # Member n (in name order) extracts to out/<n>/<base name>: one path per member.
    assert members["dir/a.jpg"].path == tmp_path / "out" / "00004" / "a.jpg"
    assert members["dir/a.jpg"].path.read_bytes() == jpeg_bytes(1)
    assert members["../evil.jpg"].status == "refused" and "unsafe member name" in (
        members["../evil.jpg"].reason or ""
    )
    assert members["/abs.jpg"].status == "refused"
    assert members["__MACOSX/._b.jpg"].status == "skipped"
    assert members["inner.zip"].reason == "nested archives are not expanded"
    assert not (tmp_path / "evil.jpg").exists()


def test_members_that_would_collide_or_overflow_paths_extract_and_duplicates_are_named(
    tmp_path: Path,
) -> None:
    """``a.jpg`` and ``a.jpg/b.jpg`` both extract (a file where the other needs a folder);
    a member path past PATH_MAX extracts; a name given twice keeps the first, the second
    is refused with the reason. Nothing fails the archive."""
    deep = "/".join(["d" * 200] * 25) + "/deep.jpg"  # > 4096 bytes
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.jpg", jpeg_bytes(1))
        zf.writestr("a.jpg/b.jpg", jpeg_bytes(2))
        zf.writestr(deep, jpeg_bytes(3))
        zf.writestr("twice.jpg", jpeg_bytes(4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
            zf.writestr("twice.jpg", jpeg_bytes(5))
    members = expand_zip(_write(tmp_path, "c.zip", buf.getvalue()), tmp_path / "out")
    by_name: dict[str, list] = {}
    for m in members:
        by_name.setdefault(m.name, []).append(m)
    assert by_name["a.jpg"][0].path.read_bytes() == jpeg_bytes(1)
    assert by_name["a.jpg/b.jpg"][0].path.read_bytes() == jpeg_bytes(2)
    assert by_name[deep][0].status == "extracted"
    assert by_name[deep][0].path.read_bytes() == jpeg_bytes(3)
    first, second = by_name["twice.jpg"]
    assert first.status == "extracted" and first.path.read_bytes() == jpeg_bytes(4)
    assert second.status == "refused" and second.occurrence == 2
    assert second.reason == "duplicate member name (occurrence 2; the first is extracted)"


def test_duplicate_names_get_distinct_ledger_refs() -> None:
    """Two refused members of one name once shared a ledger ref; a name that looks like
    another's occurrence suffix cannot pose as it either."""
    refs = {
        archive_member_ref("s3://r/a.zip", "x.jpg"),
        archive_member_ref("s3://r/a.zip", "x.jpg", 2),
        archive_member_ref("s3://r/a.zip", "x.jpg#2"),
        archive_member_ref("s3://r/a.zip", "x.jpg%232"),
    }
    assert len(refs) == 4
    assert archive_member_ref("s3://r/a.zip", "x.jpg", 2) == "s3://r/a.zip#x.jpg#2"


def test_a_directory_entry_with_data_is_refused_not_dropped(tmp_path: Path) -> None:
    """A member named ``d/`` (a directory to every unzip tool) that carries bytes was
    skipped unseen; now it is refused with its size. Empty directory entries stay out."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("empty/", b"")
        zf.writestr("full/", jpeg_bytes(1))
        zf.writestr("full/ok.jpg", jpeg_bytes(2))
    members = {m.name: m for m in expand_zip(_write(tmp_path, "d.zip", buf.getvalue()), tmp_path)}
    assert set(members) == {"full/", "full/ok.jpg"}
    assert members["full/"].status == "refused"
    assert members["full/"].reason == f"directory entry carrying {len(jpeg_bytes(1))} bytes of data"
    assert members["full/ok.jpg"].status == "extracted"


def test_zip_bomb_and_encrypted_members_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (8 * 1024 * 1024))
    members = expand_zip(_write(tmp_path, "bomb.zip", buf.getvalue()), tmp_path / "out")
    assert members[0].status == "refused" and "zip bomb guard" in (members[0].reason or "")
    assert not (tmp_path / "out" / "zeros.bin").exists()
    with pytest.raises(InvalidArchive, match="not a valid ZIP"):
        expand_zip(_write(tmp_path, "bad.zip", b"PK\x03\x04garbage"), tmp_path / "out2")
    # Encrypted: set the flag bit in the local and central headers of a stored member.
    raw = bytearray(zip_bytes({"s.jpg": jpeg_bytes(3)}))
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        at = raw.find(sig)
        offset = at + (6 if sig == b"PK\x03\x04" else 8)
        raw[offset] |= 0x1
    members = expand_zip(_write(tmp_path, "enc.zip", bytes(raw)), tmp_path / "out3")
    assert members[0].reason == "encrypted member"


def test_an_object_a_parser_chokes_on_is_quarantined_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's plugins raise exception types of their own on hostile input; one such
    object once failed its whole batch from the examiner's thread pool. A disk error
    (``OSError``) still fails the batch: it is the node's fault, and a retry can succeed."""
    from imageml_core.stages.ingest import examine
    from imageml_core.storage.object_store import ObjectInfo
    from imageml_core.storage.staging import StagedObject
    from imageml_core.uris import S3Uri

    path = _write(tmp_path, "a.jpg", jpeg_bytes(1))
    obj = StagedObject(
        ObjectInfo(S3Uri("raw", "a.jpg"), "etag", path.stat().st_size), path, "", False
    )
    examiner = examine.Examiner(S3Uri("raw", ""), S3Uri("bronze", ""), tmp_path / "work", 10**8)
    assert examiner(obj).entries[0].status == "ok"

    def choke(*_: object, **__: object) -> None:
        raise TypeError("Missing dimensions")

    monkeypatch.setattr(examine, "verify_image", choke)
    (bad,) = examiner(obj).entries
    assert (bad.status, bad.uri) == ("quarantined", "s3://raw/a.jpg")
    assert bad.reason == "could not be examined: TypeError: Missing dimensions"

    def disk_full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(examine, "verify_image", disk_full)
    with pytest.raises(OSError, match="No space left"):
        examiner(obj)


def _zip_with(members: list[tuple[str, bytes, int]]) -> bytearray:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            zf.writestr(info, data)
    return bytearray(buf.getvalue())


def test_a_member_zipfile_cannot_read_is_refused_alone(tmp_path: Path) -> None:
    import struct

    good = ("ok.jpg", jpeg_bytes(1), zipfile.ZIP_DEFLATED)
    empty_name = _zip_with([("", jpeg_bytes(2), zipfile.ZIP_DEFLATED), good])
    # Deflate64 (method 9, what Windows Explorer writes for large files): zipfile lacks it.
    deflate64 = _zip_with([("m.jpg", jpeg_bytes(2), zipfile.ZIP_STORED), good])
    local, central = deflate64.find(b"PK\x03\x04"), deflate64.find(b"PK\x01\x02")
    deflate64[local + 8 : local + 10] = struct.pack("<H", 9)
    deflate64[central + 10 : central + 12] = struct.pack("<H", 9)
    lzma = _zip_with([("l.jpg", jpeg_bytes(2), zipfile.ZIP_LZMA), good])
    start = lzma.find(b"PK\x03\x04") + 35
    lzma[start + 9 : start + 60] = bytes(51)  # corrupt LZMA data
    cases = {
        "empty": (empty_name, "", "empty member name"),
        "deflate64": (deflate64, "m.jpg", "cannot extract: NotImplementedError"),
        "lzma": (lzma, "l.jpg", "cannot extract: LZMAError"),
    }
    for label, (data, bad_name, reason) in cases.items():
        archive = tmp_path / f"{label}.zip"
        archive.write_bytes(bytes(data))
        members = {m.name: m for m in expand_zip(archive, tmp_path / label)}
        assert members["ok.jpg"].status == "extracted", label
        assert members[bad_name].status == "refused", label
        assert (members[bad_name].reason or "").startswith(reason), (label, members[bad_name])


def test_a_name_flagged_utf8_that_is_not_makes_the_archive_invalid(tmp_path: Path) -> None:
    data = _zip_with([("ab.jpg", jpeg_bytes(1), zipfile.ZIP_STORED)])
    data = bytearray(bytes(data).replace(b"ab.jpg", b"a\xff.jpg"))
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(sig) + flag_at
        data[at + 1] |= 0x08  # general-purpose flag bit 11 (0x0800): the name is UTF-8
    archive = tmp_path / "bad-name.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(InvalidArchive, match="not a valid ZIP archive: UnicodeDecodeError"):
        expand_zip(archive, tmp_path / "out")


def test_a_very_long_member_name_gets_a_bounded_unique_ref() -> None:
    zip_uri = "s3://b/raw/long.zip"
    names = ["x" * 5000, "x" * 4999 + "y", "%long/abc"]
    refs = [archive_member_ref(zip_uri, n) for n in names]
    assert len(set(refs)) == 3
    assert all(len(r.encode()) < 1400 for r in refs)  # far under PostgreSQL's 2,704-byte index row
    assert refs[0].startswith(f"{zip_uri}#%long/") and refs[0].endswith("x" * 200)
    assert refs[2] == f"{zip_uri}#%25long/abc"  # a real name cannot pose as a hashed one
    assert archive_member_ref(zip_uri, "__MACOSX/._a.jpg") == f"{zip_uri}#__MACOSX/._a.jpg"
