"""Contact sheets a person can read: one PNG per queen, night, decision and asset type.

Each tile is large enough to judge the image (``TILE_SIZE`` px), in full colour (no palette,
no dithering), and labelled with what the overrides file needs: the image id, the decision
and, for a rejected image, the reason with the failing score. A sheet holds at most
``SHEET_TILE_LIMIT`` tiles; the rest are counted in a last "+N more" cell, so a night of a
thousand images cannot produce a sheet nobody can open.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from hydra_assets.domain.images import normalize_image

TILE_SIZE = 288
SHEET_COLUMNS = 5
SHEET_TILE_LIMIT = 30
PADDING = 8
FONT_SIZE = 15
TITLE_FONT_SIZE = 20
LABEL_LINES = 4
"""Two lines for the id (long ids wrap at hyphens), one for the decision, one for the reason."""
LINE_SPACING = 3
PNG_COMPRESS_LEVEL = 3
"""zlib level: about twice as fast as 6 on a sheet of photos for ~5 % more bytes."""

BACKGROUND = (248, 248, 248)
TEXT = (30, 30, 30)
MUTED = (110, 110, 110)
APPROVED_COLOUR = (40, 125, 70)
REJECTED_COLOUR = (180, 55, 40)
PLACEHOLDER = (215, 215, 215)
ELLIPSIS = "..."
BREAK_AFTER = "-_ <>/:"
"""Label text wraps after these characters, so an image id breaks between its parts."""

DECISIONS = ("approved", "rejected")
RESIZE_FIRST_MODES = frozenset({"RGB", "RGBA", "L", "LA"})

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@dataclass(frozen=True)
class Tile:
    """One image on a sheet; ``detail`` is the evidence for the reason, e.g. ``face 0.560``."""

    image_id: str
    path: Path
    asset_type: str
    approved: bool
    manual: bool = False
    reason: str | None = None
    detail: str | None = None

    @property
    def decision(self) -> str:
        return DECISIONS[0] if self.approved else DECISIONS[1]


def sheet_name(slug: str, decision: str, asset_type: str) -> str:
    """``{slug}-{approved|rejected}-{type}.png``: the file name under ``overnight/{night}/contact_sheets/``."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    return f"{slug}-{decision}-{asset_type}.png"


def group_tiles(tiles: Iterable[Tile]) -> dict[tuple[str, str], list[Tile]]:
    """Tiles by (decision, asset type), sorted by key; rejected tiles by reason then id, approved by id."""
    groups: dict[tuple[str, str], list[Tile]] = {}
    for tile in tiles:
        groups.setdefault((tile.decision, tile.asset_type), []).append(tile)
    return {
        key: sorted(group, key=lambda t: (t.reason or "", t.image_id) if key[0] == "rejected" else ("", t.image_id))
        for key, group in sorted(groups.items())
    }


def load_font(size: int) -> Font:
    """Pillow's bundled FreeType font at ``size``; its bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType ignores or rejects the size
        return ImageFont.load_default()


def decision_label(tile: Tile) -> str:
    return tile.decision + (" (manual)" if tile.manual else "")


def reason_label(tile: Tile) -> str:
    if tile.approved:
        return ""
    reason = tile.reason or "unknown"
    return f"{reason} ({tile.detail})" if tile.detail else reason


def render_sheet(
    tiles: Sequence[Tile],
    title: str,
    *,
    tile_size: int = TILE_SIZE,
    columns: int = SHEET_COLUMNS,
    limit: int = SHEET_TILE_LIMIT,
) -> bytes:
    """A full-colour PNG of the first ``limit`` tiles, in the order given, and a "+N more" cell.

    An image that cannot be read gets a grey tile saying so, with its label: a broken file is
    exactly what a person needs to see on the rejected sheet.
    """
    if tile_size < 32 or columns < 1 or limit < 1:
        raise ValueError(f"tile_size >= 32, columns >= 1 and limit >= 1 are required, got {tile_size}, {columns}, {limit}")
    font, title_font = load_font(FONT_SIZE), load_font(TITLE_FONT_SIZE)
    shown = list(tiles[:limit])
    hidden = len(tiles) - len(shown)
    cells = len(shown) + (1 if hidden else 0)
    columns = max(1, min(columns, cells))
    line_height = _line_height(font)
    label_height = LABEL_LINES * (line_height + LINE_SPACING)
    cell_width, cell_height = tile_size + PADDING, tile_size + label_height + PADDING
    title_height = _line_height(title_font) + 2 * PADDING
    rows = max(1, math.ceil(cells / columns))
    width = max(columns * cell_width + PADDING, tile_size + 2 * PADDING)
    sheet = Image.new("RGB", (width, title_height + rows * cell_height + PADDING), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    heading = f"{title}: {len(tiles)} image{'s' if len(tiles) != 1 else ''}" + (f", first {len(shown)} shown" if hidden else "")
    draw.text((PADDING, PADDING), _fit(draw, title_font, heading, width - 2 * PADDING), fill=TEXT, font=title_font)
    if not tiles:
        draw.text((PADDING, title_height), "no images", fill=MUTED, font=font)
    for index, tile in enumerate(shown):
        left = PADDING + (index % columns) * cell_width
        top = title_height + (index // columns) * cell_height
        _draw_tile(sheet, draw, font, tile, left, top, tile_size, line_height)
    if hidden:
        index = len(shown)
        left = PADDING + (index % columns) * cell_width
        top = title_height + (index // columns) * cell_height
        draw.rectangle((left, top, left + tile_size - 1, top + tile_size - 1), fill=PLACEHOLDER)
        draw.text((left + tile_size // 2, top + tile_size // 2), f"+{hidden} more", fill=TEXT, font=title_font, anchor="mm")
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _draw_tile(sheet: Image.Image, draw: ImageDraw.ImageDraw, font: Font, tile: Tile, left: int, top: int,
               size: int, line_height: int) -> None:
    thumbnail = thumbnail_of(tile.path, size)
    if thumbnail is None:
        draw.rectangle((left, top, left + size - 1, top + size - 1), fill=PLACEHOLDER)
        draw.text((left + size // 2, top + size // 2), "cannot be read", fill=MUTED, font=font, anchor="mm")
    else:
        sheet.paste(thumbnail, (left + (size - thumbnail.width) // 2, top + (size - thumbnail.height) // 2))
    y = top + size + LINE_SPACING
    id_lines = wrap(draw, font, tile.image_id, size, 2)
    colour = APPROVED_COLOUR if tile.approved else REJECTED_COLOUR
    lines = [(line, TEXT) for line in id_lines] + [(decision_label(tile), colour)]
    reason = reason_label(tile)
    if reason:
        lines += [(line, colour) for line in wrap(draw, font, reason, size, LABEL_LINES - len(lines))]
    for text, fill in lines[:LABEL_LINES]:
        draw.text((left, y), text, fill=fill, font=font)
        y += line_height + LINE_SPACING


def thumbnail_of(path: Path, size: int) -> Image.Image | None:
    """The image fitted into ``size`` x ``size``, upright RGB; None when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG decodes at a reduced scale: far less work
            if image.mode in RESIZE_FIRST_MODES:  # shrink, then normalize the small copy: half the time
                image.thumbnail((size, size), Image.Resampling.LANCZOS)  # a square bound still fits once rotated
                return normalize_image(image)
            thumbnail = normalize_image(image)  # palette and 16-bit images: normalized as the gate reads them
    except Exception:  # Pillow raises many types on damaged or hostile files (bombs included)
        return None
    thumbnail.thumbnail((size, size), Image.Resampling.LANCZOS)
    return thumbnail


def wrap(draw: ImageDraw.ImageDraw, font: Font, text: str, width: int, max_lines: int) -> list[str]:
    """``text`` in at most ``max_lines`` lines of ``width`` px, broken after ``BREAK_AFTER``
    characters (mid-word only when one part is too long); an ellipsis ends a cut last line."""
    if max_lines < 1:
        return []
    lines: list[str] = []
    rest = text
    while rest and len(lines) < max_lines:
        if draw.textlength(rest, font=font) <= width:
            lines.append(rest)
            rest = ""
            break
        cut = _longest_prefix(draw, font, rest, width)
        breaks = [i + 1 for i, ch in enumerate(rest[:cut]) if ch in BREAK_AFTER]
        end = breaks[-1] if breaks else cut
        lines.append(rest[:end].rstrip())
        rest = rest[end:].lstrip()
    if rest:
        lines[-1] = _fit(draw, font, lines[-1] + ELLIPSIS, width)
    return lines


def _longest_prefix(draw: ImageDraw.ImageDraw, font: Font, text: str, width: int) -> int:
    low, high = 1, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if draw.textlength(text[:middle], font=font) <= width:
            low = middle
        else:
            high = middle - 1
    return low


def _fit(draw: ImageDraw.ImageDraw, font: Font, text: str, width: int) -> str:
    """``text`` cut to ``width`` px with an ellipsis at the end (the label's start is what identifies it)."""
    if draw.textlength(text, font=font) <= width:
        return text
    body = text.removesuffix(ELLIPSIS)
    while body and draw.textlength(body + ELLIPSIS, font=font) > width:
        body = body[:-1]
    return body + ELLIPSIS


def _line_height(font: Font) -> int:
    left, top, right, bottom = font.getbbox("Hgjy|")
    return int(bottom - min(top, 0)) + 1
