"""Stage 2 pure logic: size tokens, resize policy, colour rule, EXIF, geometry."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from imageml_core.sizes import InvalidSizeToken, parse_sizes
from imageml_core.stages.normalize.image import (
    NormalizePolicy,
    normalize_image,
    scale_polygon,
    scale_region,
)


def test_size_tokens_and_their_errors() -> None:
    variants = parse_sizes("1080p, 720p ,800x600,2160p,1440p,480p")
    assert [v.name for v in variants] == ["1080p", "720p", "800x600", "2160p", "1440p", "480p"]
    assert [v.kind for v in variants[:3]] == ["cap", "cap", "fixed"]
    for bad, fragment in [
        ("0x600", "'0x600'"),
        ("abc", "'abc'"),
        ("99999x99999", "'99999x99999'"),
        ("720p,720P", "'720p' is listed twice"),
        ("1080p,,720p", "empty size token"),
        ("", "no sizes given"),
    ]:
        with pytest.raises(InvalidSizeToken, match=fragment.replace("(", r"\(")):
            parse_sizes(bad)


def test_caps_preserve_aspect_and_never_upscale() -> None:
    cap1080, cap720, fixed = parse_sizes("1080p,720p,800x600")
    assert cap1080.target_size(4000, 3000) == (1440, 1080)
    assert cap720.target_size(4000, 3000) == (960, 720)
    assert fixed.target_size(4000, 3000) == (800, 600)
    assert cap1080.target_size(1000, 500) == (1000, 500)
    assert cap720.target_size(1000, 500) == (1000, 500)
    assert cap1080.target_size(3000, 4000) == (1080, 1440)  # portrait uses the portrait box


def _jpeg(
    tmp_path: Path, array: np.ndarray, name: str = "x.jpg", exif: bytes | None = None
) -> Path:
    path = tmp_path / name
    img = Image.fromarray(array)
    img.save(path, "JPEG", quality=95, **({"exif": exif} if exif else {}))
    return path


def _gradient(w: int, h: int) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return np.stack([x, y, 255 - x], -1).astype(np.uint8)


def _decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )


def test_fast_path_dimensions_and_reduced_decode(tmp_path: Path) -> None:
    path = _jpeg(tmp_path, _gradient(4000, 3000))
    policy = NormalizePolicy(tuple(parse_sizes("1080p,720p,800x600")))
    result = normalize_image(path, policy)
    assert result.path == "fast" and result.reduction == 2  # 2000x1500 covers 1440x1080
    assert [(v.name, v.width, v.height) for v in result.variants] == [
        ("1080p", 1440, 1080),
        ("720p", 960, 720),
        ("800x600", 800, 600),
    ]
    for v in result.variants:
        assert _decode(v.data).shape[:2] == (v.height, v.width)
    small = normalize_image(_jpeg(tmp_path, _gradient(1000, 500), "small.jpg"), policy)
    assert [(v.width, v.height) for v in small.variants] == [(1000, 500), (1000, 500), (800, 600)]


def test_letterbox_and_crop_geometry_moves_boxes_with_pixels(tmp_path: Path) -> None:
    array = np.zeros((500, 1000, 3), np.uint8)
    array[100:200, 300:400] = (255, 255, 255)  # a white square at x 300..400, y 100..200
    path = tmp_path / "sq.png"
    Image.fromarray(array).save(path)
    for fit in ("letterbox", "crop"):
        policy = NormalizePolicy(tuple(parse_sizes("800x600")), fit=fit, fast_path=False)
        (variant,) = normalize_image(path, policy).variants
        box = scale_region((300, 100, 100, 100), variant.geometry, variant.width, variant.height)
        assert box is not None
        pixels = _decode(variant.data)
        x, y, w, h = (round(v) for v in box)
        inside = pixels[y + 3 : y + h - 3, x + 3 : x + w - 3]
        assert inside.mean() > 200, fit  # the box lands on the white square
        assert pixels[y + h + 6 :, :].mean() < 40 or fit == "crop"
    # Letterbox pads top and bottom for a 2:1 source in a 4:3 frame.
    lb = NormalizePolicy(tuple(parse_sizes("800x600")), fit="letterbox")
    (variant,) = normalize_image(path, lb).variants
    assert variant.geometry == (0.8, 0.8, 0.0, 100.0)
    assert scale_region((0, 0, 10, 10), (1, 1, -50, 0), 100, 100) is None
    assert scale_polygon((0, 0, 200, 0, 200, 200), (0.5, 0.5, 0, 0), 50, 50) == (
        0,
        0,
        50,
        0,
        50,
        50,
    )


@pytest.mark.parametrize(
    ("mode", "expected_rgb"),
    [
        ("RGBA", (255, 255, 255)),  # transparent pixels composite onto white
        ("LA", (255, 255, 255)),
        ("L", (0, 0, 0)),
        ("I;16", (0, 0, 0)),
    ],
)
def test_colour_rule(tmp_path: Path, mode: str, expected_rgb: tuple[int, int, int]) -> None:
    img = Image.new(mode, (64, 48))  # all zeros: transparent black / black
    path = tmp_path / f"{mode.replace(';', '')}.png"
    img.save(path)
    (variant,) = normalize_image(path, NormalizePolicy(tuple(parse_sizes("720p")))).variants
    pixels = _decode(variant.data)
    assert pixels.shape == (48, 64, 3)
    assert np.abs(pixels.reshape(-1, 3).mean(0) - expected_rgb).max() < 3


def test_cmyk_and_16bit_values_and_exif_orientation(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red in CMYK
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, "JPEG", quality=95)
    (variant,) = normalize_image(path, NormalizePolicy(tuple(parse_sizes("720p")))).variants
    r, g, b = _decode(variant.data).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60
    sixteen = Image.fromarray(np.full((10, 10), 65535, np.uint16))
    sixteen.save(tmp_path / "w16.png")
    (variant,) = normalize_image(
        tmp_path / "w16.png", NormalizePolicy(tuple(parse_sizes("720p")))
    ).variants
    assert _decode(variant.data).min() > 250
    # EXIF orientation 6 (rotate 90 CW): a 400x200 stored image displays as 200x400.
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(_gradient(400, 200)).save(buf, "JPEG", exif=exif.tobytes())
    (tmp_path / "rot.jpg").write_bytes(buf.getvalue())
    for fast in (True, False):
        result = normalize_image(
            tmp_path / "rot.jpg", NormalizePolicy(tuple(parse_sizes("1080p")), fast_path=fast)
        )
        assert (result.source_width, result.source_height) == (200, 400)
        assert (result.variants[0].width, result.variants[0].height) == (200, 400)
        assert _decode(result.variants[0].data).shape[:2] == (400, 200)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_path_applies_every_exif_orientation_like_pillow(
    tmp_path: Path, orientation: int
) -> None:
    # An asymmetric picture (a gradient plus a block near one corner) reveals any flip.
    array = _gradient(320, 160)
    array[10:50, 20:90] = (255, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(array).save(path, "JPEG", quality=95, exif=exif.tobytes())
    policy = NormalizePolicy(tuple(parse_sizes("480p")))
    fast = normalize_image(path, policy)
    general = normalize_image(path, NormalizePolicy(policy.variants, fast_path=False))
    assert fast.path == "fast" and general.path == "general"
    (f,), (g,) = fast.variants, general.variants
    assert (f.width, f.height) == (g.width, g.height)
    assert (f.width, f.height) == ((160, 320) if orientation >= 5 else (320, 160))
    diff = np.abs(_decode(f.data).astype(int) - _decode(g.data).astype(int))
    assert diff.mean() < 3, f"orientation {orientation} differs from Pillow's exif_transpose"


def test_fast_path_grayscale_and_fallback_for_warnings_libjpeg_rejects(tmp_path: Path) -> None:
    gray = tmp_path / "gray.jpg"
    Image.new("L", (640, 480), 77).save(gray, "JPEG", quality=95)
    result = normalize_image(gray, NormalizePolicy(tuple(parse_sizes("480p"))))
    assert result.path == "fast"
    assert np.abs(_decode(result.variants[0].data).astype(int) - 77).max() <= 2
    # Extraneous bytes before a marker: Pillow reads the file (so ingest accepted it) while
    # libjpeg-turbo warns; such files take the general path instead of failing the batch.
    ok = _jpeg(tmp_path, _gradient(640, 480), "warn.jpg").read_bytes()
    sos = ok.index(b"\xff\xda")
    (tmp_path / "warn.jpg").write_bytes(ok[:sos] + b"\x00\x01" + ok[sos:])
    warned = normalize_image(tmp_path / "warn.jpg", NormalizePolicy(tuple(parse_sizes("480p"))))
    assert warned.path == "general"
    assert (warned.variants[0].width, warned.variants[0].height) == (640, 480)


def test_policy_hash_tracks_byte_affecting_settings() -> None:
    (v,) = parse_sizes("720p")
    base = NormalizePolicy((v,))
    assert base.variant_hash(v) == NormalizePolicy((v,)).variant_hash(v)
    assert base.variant_hash(v) != NormalizePolicy((v,), quality=80).variant_hash(v)
    (f,) = parse_sizes("800x600")
    assert NormalizePolicy((f,)).variant_hash(f) != NormalizePolicy((f,), fit="crop").variant_hash(
        f
    )
    assert base.variant_hash(v) != NormalizePolicy((v,), chroma_subsampling="444").variant_hash(v)
    with pytest.raises(ValueError, match="chroma subsampling must be one of 420, 444"):
        NormalizePolicy((v,), chroma_subsampling="422")
    # The fit policy does not touch capped variants, so their hash stays.
    assert base.variant_hash(v) == NormalizePolicy((v,), fit="crop").variant_hash(v)


@pytest.mark.parametrize(("chroma", "sampling"), [("420", 2), ("444", 0)])
def test_chroma_subsampling_reaches_the_encoded_file(
    tmp_path: Path, chroma: str, sampling: int
) -> None:
    from PIL import JpegImagePlugin

    path = _jpeg(tmp_path, _gradient(640, 480))
    policy = NormalizePolicy(tuple(parse_sizes("480p,320x240")), chroma_subsampling=chroma)
    for variant in normalize_image(path, policy).variants:
        with Image.open(io.BytesIO(variant.data)) as img:
            assert JpegImagePlugin.get_sampling(img) == sampling  # 2 = 4:2:0, 0 = 4:4:4


def test_scratch_buffers_stay_bounded_across_source_sizes(tmp_path: Path) -> None:
    import imageml_core.stages.normalize.image as normalize_module

    policy = NormalizePolicy(tuple(parse_sizes("480p,320x240")))
    counts = []
    for i in range(6):  # PNGs: the general path, halved before the bilinear step
        path = tmp_path / f"s{i}.png"
        Image.fromarray(_gradient(2000 + 16 * i, 1500 + 12 * i)).save(path)
        normalize_image(path, policy)
        counts.append(len(normalize_module._scratch.arrays))
    assert counts[-1] == counts[0], counts  # reused, not one more buffer per source size
