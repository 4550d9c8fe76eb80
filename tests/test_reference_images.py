"""Reference-photo checks: every kind of bad file gets its own reason, good ones come out
upright 8-bit RGB, and re-running over the same folder changes nothing on disk.

All inputs are made here with Pillow/numpy so no binary fixtures live in the repo.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from hydra_assets.domain import images
from hydra_assets.domain.images import (
    CATEGORIES,
    DEFAULT_MAX_PIXELS,
    MANIFEST_NAME,
    REASON_BOMB,
    REASON_CORRUPT,
    REASON_DUPLICATE,
    REASON_EMPTY,
    REASON_NOT_IMAGE,
    REASON_TOO_SMALL,
    REASON_UNKNOWN_CATEGORY,
    STATUS_ACCEPTED,
    STATUS_REJECTED,
    check_reference_image,
    contact_sheet,
    load_rgb,
    pixel_limit,
    process_reference_folder,
    reference_set_hash,
)
from hydra_assets.domain.storage import sha256_file

WIDTH, HEIGHT = 640, 520
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6
MID_GRAY_16 = 32768
WHITE = (255, 255, 255)
RED = (255, 0, 0)
OLD_MTIME_NS = 1_000_000_000 * 1_000_000_000  # 2001: any rewrite would move it


def photo(seed: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Image.Image:
    """Gradients plus a seed-coloured checkerboard: distinct bytes per seed, cheap to encode."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    checker = ((x // 16 + y // 16) % 2) * (seed * 37 % 200 + 40)
    pixels = np.stack([x * 255 // width, y * 255 // height, checker], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` 1-bit pixels; decoding it would blow up."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def corrupt_png() -> bytes:
    """A real PNG with one byte flipped inside IDAT, so its CRC no longer matches."""
    data = bytearray(encode(photo(7), "PNG"))
    middle = data.index(b"IDAT") + 100
    data[middle] ^= 0xFF
    return bytes(data)


def truncated_jpeg(seed: int) -> bytes:
    """A real JPEG cut in half: the header still parses, the scan data runs out."""
    data = encode(photo(seed), "JPEG")
    return data[: len(data) // 2]


def rotated_jpeg() -> bytes:
    """Stored 640x520 with a red top-left corner, tagged 'rotate 90 CW to display'."""
    image = photo(8)
    image.paste(RED, (0, 0, 64, 64))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    return encode(image, "JPEG", exif=exif, quality=95)


def transparent(mode: str) -> bytes:
    """Left half fully transparent with black colour underneath: it must come out white, not black."""
    rgba = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    rgba[:, WIDTH // 2 :] = (90, 90, 90, 255)
    return encode(Image.fromarray(rgba, mode="RGBA").convert(mode), "PNG")


def palette_with_transparency() -> bytes:
    image = Image.new("P", (WIDTH, HEIGHT), 0)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * (256 - 2) * 3)
    image.paste(1, (WIDTH // 2, 0, WIDTH, HEIGHT))
    return encode(image, "PNG", transparency=0)


def gray16() -> bytes:
    values = np.full((HEIGHT, WIDTH), MID_GRAY_16, dtype=np.uint16)
    values[:, :10] = 0
    return encode(Image.fromarray(values), "PNG")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail loudly if anything tries to decode or verify pixel data."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "verify", refuse)


# --- one file at a time -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_valid_photo_is_accepted_as_rgb(tmp_path, fmt):
    path = write(tmp_path / f"a.{fmt.lower()}", encode(photo(1), fmt))
    check = check_reference_image(path)
    assert check.accepted and check.reason is None
    assert check.image.mode == "RGB"
    assert (check.width, check.height) == check.image.size == (WIDTH, HEIGHT)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        pytest.param(name, data, reason, id=name)
        for name, data, reason in [
            ("empty.jpg", b"", REASON_EMPTY),
            ("notes.jpg", b"these are not the pixels you are looking for\n" * 20, REASON_NOT_IMAGE),
            ("noise.jpg", np.random.default_rng(3).bytes(4096), REASON_NOT_IMAGE),
            ("truncated.jpg", truncated_jpeg(4), REASON_CORRUPT),
            ("flipped.png", corrupt_png(), REASON_CORRUPT),
        ]
    ],
)
def test_bad_files_are_rejected_with_their_reason(tmp_path, name, data, reason):
    check = check_reference_image(write(tmp_path / name, data))
    assert (check.image, check.reason, check.width, check.height) == (None, reason, None, None)


def test_too_small_names_the_size_and_the_rule(tmp_path):
    check = check_reference_image(write(tmp_path / "tiny.png", encode(photo(5, (300, 300)), "PNG")))
    assert check.image is None
    assert check.reason == REASON_TOO_SMALL.format(short_side=300, minimum=512) == "short side 300 px < minimum 512 px"
    assert (check.width, check.height) == (300, 300)


def test_header_over_our_limit_is_a_bomb_without_decoding(tmp_path, no_decoding):
    path = write(tmp_path / "big.png", encode(photo(6), "PNG"))
    check = check_reference_image(path, max_pixels=100_000)
    assert check.reason == REASON_BOMB.format(limit=100_000)


@pytest.mark.parametrize(
    ("side", "max_pixels"),
    [(100_000, DEFAULT_MAX_PIXELS), (10_000, 10**9)],
    ids=["pillow-error", "pillow-warning"],
)
def test_pillow_bomb_guard_is_a_bomb_too(tmp_path, no_decoding, side, max_pixels):
    check = check_reference_image(write(tmp_path / "bomb.png", bomb_png(side, side)), max_pixels=max_pixels)
    assert check.reason == REASON_BOMB.format(limit=pixel_limit(max_pixels))
    assert check.image is None


def test_cmyk_becomes_rgb(tmp_path):
    cyan = Image.new("CMYK", (WIDTH, HEIGHT), (255, 0, 0, 0))
    check = check_reference_image(write(tmp_path / "cmyk.jpg", encode(cyan, "JPEG", quality=95)))
    assert check.image.mode == "RGB"
    assert np.allclose(check.image.getpixel((100, 100)), (0, 255, 255), atol=3)


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    check = check_reference_image(write(tmp_path / "gray16.png", gray16()))
    assert check.image.mode == "RGB"
    assert check.image.getpixel((WIDTH // 2, HEIGHT // 2)) == (128, 128, 128)
    assert check.image.getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_become_white(tmp_path, mode):
    check = check_reference_image(write(tmp_path / f"{mode}.png", transparent(mode)))
    assert check.image.mode == "RGB"
    assert check.image.getpixel((10, 10)) == WHITE
    assert check.image.getpixel((WIDTH - 10, 10)) == (90, 90, 90)


def test_palette_with_transparency_becomes_rgb_on_white(tmp_path):
    check = check_reference_image(write(tmp_path / "palette.png", palette_with_transparency()))
    assert check.image.mode == "RGB"
    assert check.image.getpixel((10, 10)) == WHITE
    assert check.image.getpixel((WIDTH - 10, 10)) == (200, 30, 30)


def test_exif_orientation_is_applied(tmp_path):
    check = check_reference_image(write(tmp_path / "rotated.jpg", rotated_jpeg()))
    assert (check.width, check.height) == check.image.size == (HEIGHT, WIDTH)
    assert np.allclose(check.image.getpixel((HEIGHT - 20, 20)), RED, atol=12)  # top-left went to top-right


# --- a whole folder -----------------------------------------------------------------

EXPECTED = {
    "portraits/a_valid.jpg": (STATUS_ACCEPTED, None),
    "portraits/b_valid.png": (STATUS_ACCEPTED, None),
    "portraits/c_copy_of_a.jpg": (STATUS_REJECTED, REASON_DUPLICATE.format(original="portraits/a_valid.jpg")),
    "portraits/corrupt.jpg": (STATUS_REJECTED, REASON_NOT_IMAGE),
    "portraits/empty.jpg": (STATUS_REJECTED, REASON_EMPTY),
    "portraits/text.jpg": (STATUS_REJECTED, REASON_NOT_IMAGE),
    "portraits/tiny.png": (STATUS_REJECTED, REASON_TOO_SMALL.format(short_side=300, minimum=512)),
    "portraits/truncated.jpg": (STATUS_REJECTED, REASON_CORRUPT),
    "full_body/bomb.png": (STATUS_REJECTED, REASON_BOMB.format(limit=pixel_limit(DEFAULT_MAX_PIXELS))),
    "full_body/cmyk.jpg": (STATUS_ACCEPTED, None),
    "full_body/rotated.jpg": (STATUS_ACCEPTED, None),
    "expressions/gray16.png": (STATUS_ACCEPTED, None),
    "expressions/palette.png": (STATUS_ACCEPTED, None),
    "expressions/rgba.png": (STATUS_ACCEPTED, None),
    "loose.jpg": (STATUS_REJECTED, REASON_UNKNOWN_CATEGORY),
    "misc/other.jpg": (STATUS_REJECTED, REASON_UNKNOWN_CATEGORY),
}


@pytest.fixture
def reference_folder(tmp_path) -> Path:
    source = tmp_path / "reference_images" / "queen"
    valid_jpeg = encode(photo(10), "JPEG")
    files = {
        "portraits/a_valid.jpg": valid_jpeg,
        "portraits/b_valid.png": encode(photo(12), "PNG"),
        "portraits/c_copy_of_a.jpg": valid_jpeg,
        "portraits/corrupt.jpg": np.random.default_rng(13).bytes(2048),
        "portraits/empty.jpg": b"",
        "portraits/text.jpg": b"not an image\n",
        "portraits/tiny.png": encode(photo(14, (300, 300)), "PNG"),
        "portraits/truncated.jpg": truncated_jpeg(11),
        "full_body/bomb.png": bomb_png(100_000, 100_000),
        "full_body/cmyk.jpg": encode(Image.new("CMYK", (WIDTH, HEIGHT), (0, 200, 200, 0)), "JPEG"),
        "full_body/rotated.jpg": rotated_jpeg(),
        "expressions/gray16.png": gray16(),
        "expressions/palette.png": palette_with_transparency(),
        "expressions/rgba.png": transparent("RGBA"),
        "loose.jpg": encode(photo(15), "JPEG"),
        "misc/other.jpg": encode(photo(16), "JPEG"),
        ".DS_Store": b"\x00\x01",
        "portraits/.hidden.jpg": encode(photo(17), "JPEG"),
        ".thumbs/portraits/x.jpg": encode(photo(18), "JPEG"),
    }
    for relpath, data in files.items():
        write(source / relpath, data)
    return source


def manifest_on_disk(output: Path) -> dict:
    return json.loads((output / MANIFEST_NAME).read_text())


def test_folder_gives_every_file_its_outcome(reference_folder, tmp_path):
    output = tmp_path / "out"
    manifest = process_reference_folder(reference_folder, output)

    outcomes = {entry.source: (entry.status, entry.reason) for entry in manifest.entries}
    assert outcomes == EXPECTED  # every non-hidden file listed; hidden ones skipped
    assert manifest.accepted_by_category == {"portraits": 2, "full_body": 2, "expressions": 3}
    assert manifest.rejected_count == 9
    assert manifest.stale == ()
    assert manifest_on_disk(output) == manifest.to_dict()

    by_source = {entry.source: entry for entry in manifest.entries}
    assert (by_source["full_body/rotated.jpg"].width, by_source["full_body/rotated.jpg"].height) == (HEIGHT, WIDTH)
    assert by_source["full_body/bomb.png"].width is None
    assert by_source["portraits/empty.jpg"].size_bytes == 0
    assert by_source["misc/other.jpg"].category is None
    for entry in manifest.accepted:
        assert entry.category in CATEGORIES
        assert entry.normalized == f"{entry.category}/{entry.sha256[:16]}.png"
        assert entry.sha256 == sha256_file(reference_folder / entry.source)
        assert entry.normalized_sha256 == sha256_file(output / entry.normalized)
        pixels = load_rgb(output / entry.normalized)
        assert pixels.dtype == np.uint8 and pixels.shape == (entry.height, entry.width, 3)
    assert manifest.reference_set_hash == reference_set_hash([entry.sha256 for entry in manifest.accepted])


def test_rerun_is_stable_and_rewrites_nothing(reference_folder, tmp_path):
    output = tmp_path / "out"
    first = process_reference_folder(reference_folder, output)
    written = sorted(path for path in output.rglob("*") if path.is_file())
    for path in written:
        os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))

    second = process_reference_folder(reference_folder, output)

    assert second.to_dict() == first.to_dict()
    assert second.reference_set_hash == first.reference_set_hash
    assert sorted(path for path in output.rglob("*") if path.is_file()) == written
    assert all(path.stat().st_mtime_ns == OLD_MTIME_NS for path in written)


def test_removed_source_leaves_its_file_listed_as_stale(reference_folder, tmp_path):
    output = tmp_path / "out"
    first = process_reference_folder(reference_folder, output)
    gone = next(entry for entry in first.entries if entry.source == "portraits/b_valid.png")
    (reference_folder / gone.source).unlink()

    second = process_reference_folder(reference_folder, output)

    assert (output / gone.normalized).is_file()
    assert second.stale == (gone.normalized,)
    assert manifest_on_disk(output)["stale"] == [gone.normalized]
    assert second.accepted_by_category["portraits"] == 1
    assert second.reference_set_hash != first.reference_set_hash


def test_bad_file_in_the_middle_does_not_stop_the_rest(tmp_path, monkeypatch):
    source = tmp_path / "queen"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write(source / "portraits" / name, encode(photo(ord(name[0])), "JPEG"))
    real_open = Image.open

    def explode_on_b(fp, *args, **kwargs):
        if isinstance(fp, io.BytesIO) and fp.getvalue() == (source / "portraits/b.jpg").read_bytes():
            raise RuntimeError("decoder crashed")
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(images.Image, "open", explode_on_b)
    manifest = process_reference_folder(source, tmp_path / "out")
    assert [(e.source, e.status) for e in manifest.entries] == [
        ("portraits/a.jpg", STATUS_ACCEPTED),
        ("portraits/b.jpg", STATUS_REJECTED),
        ("portraits/c.jpg", STATUS_ACCEPTED),
    ]
    assert manifest.entries[1].reason == REASON_CORRUPT


def test_copy_of_a_misfiled_photo_is_not_a_duplicate(tmp_path):
    """Only an accepted photo makes later copies redundant; a misfiled one doesn't count."""
    source = tmp_path / "queen"
    data = encode(photo(20), "JPEG")
    write(source / "loose.jpg", data)
    write(source / "portraits" / "filed.jpg", data)
    manifest = process_reference_folder(source, tmp_path / "out")
    assert [(e.source, e.reason) for e in manifest.entries] == [
        ("loose.jpg", REASON_UNKNOWN_CATEGORY),
        ("portraits/filed.jpg", None),
    ]


def test_missing_source_folder_gives_an_empty_manifest(tmp_path):
    manifest = process_reference_folder(tmp_path / "nobody", tmp_path / "out")
    assert manifest.entries == ()
    assert manifest.accepted_by_category == dict.fromkeys(CATEGORIES, 0)
    assert manifest.rejected_count == 0
    assert manifest.reference_set_hash == reference_set_hash([])
    assert manifest_on_disk(tmp_path / "out") == manifest.to_dict()


# --- contact sheet ------------------------------------------------------------------


def test_contact_sheet_is_a_small_png():
    entries = [(photo(seed), f"portraits/photo_{seed:02d}_with_a_long_name.jpg") for seed in range(20)]
    entries.append((Image.open(io.BytesIO(transparent("RGBA"))), "rgba.png"))
    data = contact_sheet(entries, thumb=96, columns=6)
    sheet = Image.open(io.BytesIO(data))
    assert sheet.format == "PNG"
    assert sheet.width < 6 * 110 and sheet.height < 4 * 130
    assert len(data) < 100_000


def test_empty_contact_sheet_is_a_placeholder():
    data = contact_sheet([])
    sheet = Image.open(io.BytesIO(data))
    assert sheet.format == "PNG" and sheet.width > 0 and len(data) < 5_000
