"""Reference photos: check each one, normalize the good ones, and say why the rest were refused.

Reference folders are filled by hand from phones, cameras and the web, so anything can
turn up there. Every file gets a manifest entry with a reason a person can act on; one
bad file never stops the others; nothing already written is ever deleted.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from hydra_assets.domain.input_folders import FolderWalk, read_regular_file, walk_folder
from hydra_assets.domain.storage import atomic_write_bytes, atomic_write_json, read_json, sha256_bytes

CATEGORIES = ("portraits", "full_body", "expressions")
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
NORMALIZED_SUFFIX = ".png"
NORMALIZED_PNG_COMPRESS_LEVEL = 3
"""zlib level: ~3x faster than Pillow's default 6 on camera-sized photos for ~10% more bytes."""
NORMALIZED_NAME_HEX = 16
"""Characters of the source sha256 in a normalized file's name: unique enough, short enough."""

DEFAULT_MIN_SHORT_SIDE = 512
"""Below this the face and body detail that identity training needs is not there."""
DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own default MAX_IMAGE_PIXELS (~0.25 GiB as RGB), above any camera photo we keep."""

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
"""Raster photo formats only: this keeps Pillow from handing untrusted files to
Ghostscript (EPS) or other rarely-exercised decoders. "JPEG" also opens phones' MPO files."""

WHITE = (255, 255, 255)
UINT16_TO_UINT8 = 257  # 65535 / 255: maps 16-bit full scale exactly onto 8-bit full scale
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

STATUS_ACCEPTED = "accepted"
STATUS_REJECTED = "rejected"
Status = Literal["accepted", "rejected"]

REASON_UNREADABLE = "file could not be read"
REASON_EMPTY = "empty file (0 bytes)"
REASON_NOT_IMAGE = "not a decodable image"
REASON_CORRUPT = "corrupt or truncated image data"
REASON_BOMB = "decompression bomb: more than {limit} px"
REASON_TOO_SMALL = "short side {short_side} px < minimum {minimum} px"
REASON_UNKNOWN_CATEGORY = "unknown category (not under " + ", ".join(f"{c}/" for c in CATEGORIES) + ")"
REASON_DUPLICATE = "duplicate of {original}"

THUMB_SIZE = 96
SHEET_COLUMNS = 6
SHEET_PADDING = 4
SHEET_LABEL_HEIGHT = 14
SHEET_COLORS = 64
"""A fixed small palette keeps a 20-photo sheet to a few tens of KB for metadata previews."""
SHEET_BACKGROUND = WHITE
SHEET_TEXT = (40, 40, 40)
ELLIPSIS = "..."  # the default font has no "…" glyph
EMPTY_SHEET_TEXT = "no images"

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@dataclass(frozen=True)
class ReferenceCheck:
    """Outcome of checking one file; width/height are known once the image has been decoded."""

    image: Image.Image | None
    reason: str | None
    width: int | None = None
    height: int | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class ReferenceEntry:
    source: str
    category: str | None
    sha256: str | None
    size_bytes: int | None
    width: int | None
    height: int | None
    status: Status
    reason: str | None
    normalized: str | None = None
    normalized_sha256: str | None = None


@dataclass(frozen=True)
class ReferenceManifest:
    entries: tuple[ReferenceEntry, ...]
    accepted_by_category: dict[str, int]
    rejected_count: int
    reference_set_hash: str
    stale: tuple[str, ...]
    min_short_side: int
    max_pixels: int

    @property
    def accepted(self) -> tuple[ReferenceEntry, ...]:
        return tuple(entry for entry in self.entries if entry.status == STATUS_ACCEPTED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "rules": {"min_short_side": self.min_short_side, "max_pixels": self.max_pixels},
            "reference_set_hash": self.reference_set_hash,
            "accepted_by_category": dict(self.accepted_by_category),
            "accepted_count": sum(self.accepted_by_category.values()),
            "rejected_count": self.rejected_count,
            "entries": [asdict(entry) for entry in self.entries],
            "stale": list(self.stale),
        }


def pixel_limit(max_pixels: int) -> int:
    """The limit actually enforced: Pillow's own guard fires first when it is lower."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)


def check_reference_image(
    path: Path, *, min_short_side: int = DEFAULT_MIN_SHORT_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ReferenceCheck:
    """Read the file once and check its bytes, so a file changing mid-check can't confuse it."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return ReferenceCheck(None, REASON_UNREADABLE)
    return check_reference_bytes(data, min_short_side=min_short_side, max_pixels=max_pixels)


def check_reference_bytes(
    data: bytes, *, min_short_side: int = DEFAULT_MIN_SHORT_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ReferenceCheck:
    """Check a file's bytes and return the normalized image or the first rule it breaks.

    The pixel count is checked from the header before any decoding so a bomb is never
    expanded; ``verify()`` and a full ``load()`` on a second open catch corrupt and
    truncated data (``verify`` leaves an image unusable, hence two opens).
    """
    if not data:
        return ReferenceCheck(None, REASON_EMPTY)
    bomb = REASON_BOMB.format(limit=pixel_limit(max_pixels))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as probe:
                width, height = probe.size
                if width * height > max_pixels:
                    return ReferenceCheck(None, bomb)
                probe.verify()
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as decoded:
                decoded.load()
                image = normalize_image(decoded)
        except UnidentifiedImageError:
            return ReferenceCheck(None, REASON_NOT_IMAGE)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return ReferenceCheck(None, bomb)
        except Exception:  # Pillow's decoders raise many types on malformed data.
            return ReferenceCheck(None, REASON_CORRUPT)
    width, height = image.size
    if min(width, height) < min_short_side:
        reason = REASON_TOO_SMALL.format(short_side=min(width, height), minimum=min_short_side)
        return ReferenceCheck(None, reason, width, height)
    return ReferenceCheck(image, None, width, height)


def normalize_image(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB with no metadata: the one form every later stage can rely on.

    The source's ICC profile and EXIF describe the source pixels, not these, so they are
    dropped rather than carried into the PNG.
    """
    normalized = _to_rgb(ImageOps.exif_transpose(image))
    normalized.info.clear()
    return normalized


def _to_rgb(image: Image.Image) -> Image.Image:
    """Always a new image; transparency is composited onto white so it doesn't read as black."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_l(image)
    if image.has_transparency_data:
        background = Image.new("RGBA", image.size, WHITE)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """Scale 16-bit samples to 8 bits; Pillow's own conversion clips them to white."""
    samples = np.asarray(image, dtype=np.float64)
    scaled = np.rint(np.clip(samples, 0, np.iinfo(np.uint16).max) / UINT16_TO_UINT8)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def load_rgb(path: Path) -> np.ndarray:
    """An HxWx3 uint8 array, normalized the same way as the references themselves."""
    with Image.open(path) as image:
        return np.array(normalize_image(image), dtype=np.uint8)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=NORMALIZED_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def reference_set_hash(accepted_sha256s: Sequence[str]) -> str:
    """Order-free, so renaming or moving a photo doesn't change it, but any content change does."""
    return sha256_bytes("\n".join(sorted(accepted_sha256s)).encode())


def process_reference_folder(
    source_dir: Path,
    output_dir: Path,
    *,
    min_short_side: int = DEFAULT_MIN_SHORT_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ReferenceManifest:
    """Check every file under ``source_dir``, write the accepted ones normalized, and the manifest.

    Files are only written when their bytes change, so a re-run over the same photos
    touches nothing on disk.
    """
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    entries: list[ReferenceEntry] = []
    accepted_by_sha: dict[str, str] = {}
    walk = walk_folder(source_dir) if source_dir.is_dir() else FolderWalk()
    for relpath in sorted([*walk.files, *walk.refused]):
        if relpath in walk.refused:  # links and special files: listed, never read or hashed
            entries.append(_refused_entry(relpath, walk.refused[relpath]))
            continue
        path = walk.files[relpath][0]
        entry = _process_file(
            path, source_dir, output_dir, accepted_by_sha, min_short_side=min_short_side, max_pixels=max_pixels
        )
        if entry.status == STATUS_ACCEPTED:
            accepted_by_sha[entry.sha256] = entry.source
        entries.append(entry)

    produced = {entry.normalized for entry in entries if entry.normalized}
    manifest = ReferenceManifest(
        entries=tuple(entries),
        accepted_by_category={
            category: sum(1 for e in entries if e.status == STATUS_ACCEPTED and e.category == category)
            for category in CATEGORIES
        },
        rejected_count=sum(1 for entry in entries if entry.status == STATUS_REJECTED),
        reference_set_hash=reference_set_hash(list(accepted_by_sha)),
        stale=tuple(relpath for relpath in _normalized_files(output_dir) if relpath not in produced),
        min_short_side=min_short_side,
        max_pixels=max_pixels,
    )
    document = manifest.to_dict()
    manifest_path = output_dir / MANIFEST_NAME
    if _read_manifest(manifest_path) != document:
        atomic_write_json(manifest_path, document)
    return manifest


def _process_file(
    path: Path,
    source_dir: Path,
    output_dir: Path,
    accepted_by_sha: dict[str, str],
    *,
    min_short_side: int,
    max_pixels: int,
) -> ReferenceEntry:
    relative = path.relative_to(source_dir)
    source = relative.as_posix()
    category = relative.parts[0] if len(relative.parts) > 1 and relative.parts[0] in CATEGORIES else None

    digest: str | None = None
    size: int | None = None

    def rejected(reason: str, width: int | None = None, height: int | None = None) -> ReferenceEntry:
        return ReferenceEntry(source, category, digest, size, width, height, STATUS_REJECTED, reason)

    try:
        data = read_regular_file(path)
    except OSError:
        return rejected(REASON_UNREADABLE)
    digest, size = sha256_bytes(data), len(data)
    if category is None:
        return rejected(REASON_UNKNOWN_CATEGORY)
    if digest in accepted_by_sha:
        return rejected(REASON_DUPLICATE.format(original=accepted_by_sha[digest]))
    check = check_reference_bytes(data, min_short_side=min_short_side, max_pixels=max_pixels)
    if not check.accepted:
        return rejected(check.reason, check.width, check.height)

    normalized = f"{category}/{digest[:NORMALIZED_NAME_HEX]}{NORMALIZED_SUFFIX}"
    png = encode_png(check.image)
    _write_if_changed(output_dir / normalized, png)
    return ReferenceEntry(
        source,
        category,
        digest,
        size,
        check.width,
        check.height,
        STATUS_ACCEPTED,
        None,
        normalized=normalized,
        normalized_sha256=sha256_bytes(png),
    )


def _refused_entry(relpath: str, reason: str) -> ReferenceEntry:
    parts = relpath.split("/")
    category = parts[0] if len(parts) > 1 and parts[0] in CATEGORIES else None
    return ReferenceEntry(relpath, category, None, None, None, None, STATUS_REJECTED, reason)


def _normalized_files(output_dir: Path) -> list[str]:
    found = []
    for category in CATEGORIES:
        folder = output_dir / category
        if folder.is_dir():
            found.extend(
                f"{category}/{path.name}"
                for path in folder.iterdir()
                if path.is_file() and not path.name.startswith(".")
            )
    return sorted(found)


def _read_manifest(path: Path) -> Any:
    """The manifest on disk, or None when missing or unreadable (it is then simply rewritten)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data)


def contact_sheet(
    images: Sequence[tuple[Image.Image, str]], *, thumb: int = THUMB_SIZE, columns: int = SHEET_COLUMNS
) -> bytes:
    """A small labelled PNG of thumbnails, for a glance at the set in Dagster's metadata."""
    font = ImageFont.load_default()
    if not images:
        return _placeholder_sheet(font, thumb)
    cell_width, cell_height = thumb + SHEET_PADDING, thumb + SHEET_LABEL_HEIGHT + SHEET_PADDING
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    size = (columns * cell_width + SHEET_PADDING, rows * cell_height + SHEET_PADDING)
    sheet = Image.new("RGB", size, SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, (image, label) in enumerate(images):
        left = SHEET_PADDING + (index % columns) * cell_width
        top = SHEET_PADDING + (index // columns) * cell_height
        thumbnail = _to_rgb(image)
        thumbnail.thumbnail((thumb, thumb))
        sheet.paste(thumbnail, (left + (thumb - thumbnail.width) // 2, top + (thumb - thumbnail.height) // 2))
        draw.text((left, top + thumb + 1), _fit_label(draw, font, label, thumb), fill=SHEET_TEXT, font=font)
    return _encode_small_png(sheet)


def _placeholder_sheet(font: Font, thumb: int) -> bytes:
    sheet = Image.new("RGB", (thumb * 2, thumb // 2), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((sheet.width // 2, sheet.height // 2), EMPTY_SHEET_TEXT, fill=SHEET_TEXT, font=font, anchor="mm")
    return _encode_small_png(sheet)


def _fit_label(draw: ImageDraw.ImageDraw, font: Font, label: str, width: int) -> str:
    """Cut from the front: the end of a path (the file name) is the part worth reading."""
    if draw.textlength(label, font=font) <= width:
        return label
    for start in range(1, len(label)):
        candidate = ELLIPSIS + label[start:]
        if draw.textlength(candidate, font=font) <= width:
            return candidate
    return ELLIPSIS


def _encode_small_png(sheet: Image.Image) -> bytes:
    palette = sheet.quantize(colors=SHEET_COLORS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
