"""Contact sheets on disk and reasons.json: readable tiles, labels a person can act on, strict JSON."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from hydra_assets.domain import contact_sheets as sheets
from hydra_assets.domain.contact_sheets import Tile
from hydra_assets.domain.demo_data import astronaut_photo
from hydra_assets.domain.quality import Thresholds
from hydra_assets.domain.rejections import gate_of, reason_detail, reasons_document, reasons_json

RED, BLUE = (220, 20, 20), (20, 40, 220)


def solid(tmp_path, name, colour, size=(600, 400)):
    path = tmp_path / name
    Image.new("RGB", size, colour).save(path)
    return path


def decode(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def cell_origin(index: int, columns: int, title_height: int, line_height: int, tile=sheets.TILE_SIZE) -> tuple[int, int]:
    cell_w = tile + sheets.PADDING
    cell_h = tile + sheets.LABEL_LINES * (line_height + sheets.LINE_SPACING) + sheets.PADDING
    return sheets.PADDING + (index % columns) * cell_w, title_height + (index // columns) * cell_h


def geometry():
    line = sheets._line_height(sheets.load_font(sheets.FONT_SIZE))
    title = sheets._line_height(sheets.load_font(sheets.TITLE_FONT_SIZE)) + 2 * sheets.PADDING
    return line, title


def test_tiles_are_full_colour_and_full_size_with_their_labels(tmp_path):
    tiles = [
        Tile("nova-sterling-2026-11-20-portrait-000", solid(tmp_path, "red.png", RED), "portrait", True),
        Tile("nova-sterling-2026-11-20-portrait-001", solid(tmp_path, "blue.png", BLUE, (300, 600)), "portrait", False,
             reason="face<0.7", detail="face 0.560"),
        Tile("nova-sterling-2026-11-20-portrait-002", astronaut_photo(), "portrait", False, reason="technical<70"),
    ]
    sheet = decode(sheets.render_sheet(tiles, "nova-sterling 2026-11-20 portrait"))
    assert sheet.mode == "RGB", "no palette: a palette (and its dithering) is what made the old sheets unreadable"
    line, title = geometry()
    assert sheet.width == 3 * (sheets.TILE_SIZE + sheets.PADDING) + sheets.PADDING
    pixels = np.asarray(sheet)

    # the red 600x400 image fills the tile's width: 288 x 192, centred vertically, exactly red
    left, top = cell_origin(0, 3, title, line)
    offset = (sheets.TILE_SIZE - 192) // 2
    block = pixels[top + offset + 2: top + offset + 190, left + 2: left + 286]
    assert (np.abs(block.astype(int) - RED).max()) <= 2
    assert tuple(pixels[top + offset - 3, left + 100]) == sheets.BACKGROUND  # letterbox above it
    # the portrait-shaped blue one fills the tile's height: 144 x 288
    left, top = cell_origin(1, 3, title, line)
    assert np.abs(pixels[top + 10: top + 278, left + 80: left + 208].astype(int) - BLUE).max() <= 2
    assert tuple(pixels[top + 100, left + 20]) == sheets.BACKGROUND

    # labels: text below each tile, green for the approved one, red for the rejected ones
    def label_colours(index):
        left, top = cell_origin(index, 3, title, line)
        area = pixels[top + sheets.TILE_SIZE: top + sheets.TILE_SIZE + sheets.LABEL_LINES * (line + 3), left: left + 288]
        near = lambda colour: (np.abs(area.astype(int) - colour).sum(axis=2) < 60).sum()
        return near(sheets.TEXT), near(sheets.APPROVED_COLOUR), near(sheets.REJECTED_COLOUR)

    text0, green0, red0 = label_colours(0)
    text1, green1, red1 = label_colours(1)
    assert text0 > 50 and green0 > 20 and red0 == 0
    assert text1 > 50 and red1 > green1 and red1 > 40
    # the rejected label carries the reason and its score: more red text than a decision alone
    assert red1 > 2 * label_colours(2)[2] * 0.6


def test_a_sheet_holds_at_most_the_limit_and_counts_the_rest(tmp_path):
    path = solid(tmp_path, "red.png", RED)
    tiles = [Tile(f"q-2026-11-20-pose-{i:03d}", path, "pose", True) for i in range(7)]
    line, title = geometry()
    cell_h = sheets.TILE_SIZE + sheets.LABEL_LINES * (line + sheets.LINE_SPACING) + sheets.PADDING

    full = decode(sheets.render_sheet(tiles, "t", columns=3))
    assert full.height == title + 3 * cell_h + sheets.PADDING  # 7 tiles: three rows

    cut = decode(sheets.render_sheet(tiles, "t", columns=3, limit=4))
    assert cut.height == title + 2 * cell_h + sheets.PADDING  # 4 tiles and the "+3 more" cell
    pixels = np.asarray(cut)
    left, top = cell_origin(4, 3, title, line)
    more = pixels[top: top + sheets.TILE_SIZE, left: left + sheets.TILE_SIZE]
    grey = (np.abs(more.astype(int) - sheets.PLACEHOLDER).sum(axis=2) < 10).mean()
    dark = (more.sum(axis=2) < 200).sum()
    assert grey > 0.9 and dark > 30, "the extra cell is a grey tile with the count written on it"
    left, top = cell_origin(5, 3, title, line)
    assert (pixels[top: top + sheets.TILE_SIZE, left: left + sheets.TILE_SIZE] == sheets.BACKGROUND).all()


def test_an_unreadable_file_gets_a_grey_tile_and_the_rest_are_drawn(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    tiles = [Tile("a", broken, "pose", False, reason="unreadable"), Tile("b", solid(tmp_path, "r.png", RED), "pose", True),
             Tile("c", tmp_path / "missing.png", "pose", False, reason="unreadable")]
    pixels = np.asarray(decode(sheets.render_sheet(tiles, "t")))
    line, title = geometry()
    for index, expected in ((0, sheets.PLACEHOLDER), (2, sheets.PLACEHOLDER), (1, RED)):
        left, top = cell_origin(index, 3, title, line)
        corner = pixels[top + 100: top + 110, left + 5: left + 15]
        assert (np.abs(corner.astype(int) - expected).max()) <= 2, index


def test_no_tiles_still_make_a_sheet():
    assert decode(sheets.render_sheet([], "nothing")).size[0] >= sheets.TILE_SIZE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tile_size": 8}, "tile_size"), ({"columns": 0}, "columns"), ({"limit": 0}, "limit")],
)
def test_bad_sheet_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sheets.render_sheet([], "t", **kwargs)


@pytest.mark.parametrize(
    ("text", "width", "max_lines", "expect_lines", "lossless"),
    [
        ("nova-sterling-2026-11-20-portrait-000", 288, 2, 1, True),  # fits on one line at 15 px
        ("emilie-ekstrom-van-der-berg-2026-11-20-expression-012", 288, 2, 2, True),  # wraps at a hyphen
        ("x" * 200, 288, 2, 2, False),  # no break point: cut mid-word, ellipsis at the end
        ("near_duplicate (of emilie-ekstrom-van-der-berg-2026-11-20-expression-011)", 288, 1, 1, False),
    ],
)
def test_labels_wrap_at_id_parts_within_the_tile(text, width, max_lines, expect_lines, lossless):
    font = sheets.load_font(sheets.FONT_SIZE)
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    lines = sheets.wrap(draw, font, text, width, max_lines)
    assert len(lines) == expect_lines
    assert all(draw.textlength(line, font=font) <= width for line in lines)
    if lossless:
        assert "".join(lines) == text
        if len(lines) > 1:
            assert lines[0].endswith("-"), "an id breaks between its parts"
    else:
        assert lines[-1].endswith(sheets.ELLIPSIS)


def test_sheets_are_named_and_grouped_by_decision_and_type(tmp_path):
    p = tmp_path / "x.png"
    tiles = [Tile("b", p, "pose", False, reason="technical<70"), Tile("a", p, "pose", False, reason="no_face"),
             Tile("c", p, "portrait", True), Tile("d", p, "pose", True), Tile("e", p, "pose", False, reason="face<0.7")]
    groups = sheets.group_tiles(tiles)
    assert list(groups) == [("approved", "portrait"), ("approved", "pose"), ("rejected", "pose")]
    assert [t.image_id for t in groups[("rejected", "pose")]] == ["e", "a", "b"]  # by reason, then id
    assert sheets.sheet_name("nova-sterling", "rejected", "pose") == "nova-sterling-rejected-pose.png"
    with pytest.raises(ValueError, match="decision must be one of"):
        sheets.sheet_name("nova-sterling", "maybe", "pose")


def test_labels_say_decision_reason_and_evidence():
    t = Tile("a", None, "pose", False, manual=True, reason="manual: wrong outfit", detail="by li")
    assert (sheets.decision_label(t), sheets.reason_label(t)) == ("rejected (manual)", "manual: wrong outfit (by li)")
    assert sheets.reason_label(Tile("a", None, "pose", True)) == ""


# ------------------------------------------------------------------------------ reasons.json


@pytest.mark.parametrize(
    ("reason", "gate"),
    [("face<0.7", "face_match"), ("no_face", "face_match"), ("technical<70", "technical"),
     ("aesthetic<6.5", "aesthetic"), ("near_duplicate", None), ("manual: wrong outfit", None), ("manual", None),
     ("unreadable", None), (None, None), ("", None)],
)
def test_each_reason_names_its_gate(reason, gate):
    assert gate_of(reason) == gate


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        ({"rejection_reason": "face<0.7", "face_match_score": np.float64(0.5612)}, "face 0.561"),
        ({"rejection_reason": "technical<70", "technical_score": 41.26}, "technical 41.3"),
        ({"rejection_reason": "aesthetic<6.5", "aesthetic_score": 5.0}, "aesthetic 5.00"),
        ({"rejection_reason": "no_face", "face_match_score": math.nan}, None),
        ({"rejection_reason": "near_duplicate", "near_duplicate_of": "q-1"}, "of q-1"),
        ({"rejection_reason": "manual: wrong outfit", "decided_by": "li"}, "by li"),
        ({"rejection_reason": "face<0.7", "face_match_score": None}, None),
        ({"rejection_reason": None}, None),
    ],
)
def test_the_detail_is_the_evidence_for_the_reason(row, detail):
    assert reason_detail(row) == detail


def score_rows() -> list[dict]:
    frame = pd.DataFrame([
        {"image_id": "q-2", "approved": False, "rejection_reason": "no_face", "aesthetic_score": 7.0,
         "technical_score": 80.0, "face_match_score": np.nan, "composite_score": 0.5, "near_duplicate_of": None,
         "approval_method": "auto", "decided_by": None, "asset_type": "pose", "file_path": "overnight/n/generated/q/pose/q-2.png"},
        {"image_id": "q-1", "approved": True, "rejection_reason": None, "aesthetic_score": 7.5,
         "technical_score": 90.0, "face_match_score": 0.9, "composite_score": 0.8, "near_duplicate_of": None,
         "approval_method": "auto", "decided_by": None, "asset_type": "pose", "file_path": "overnight/n/generated/q/pose/q-1.png"},
        {"image_id": "q-3", "approved": False, "rejection_reason": "near_duplicate", "aesthetic_score": 7.4,
         "technical_score": 88.0, "face_match_score": 0.88, "composite_score": 0.7, "near_duplicate_of": "q-1",
         "approval_method": "auto", "decided_by": None, "asset_type": "pose", "file_path": "overnight/n/generated/q/pose/q-3.png"},
        {"image_id": "q-4", "approved": False, "rejection_reason": "manual: wrong outfit", "aesthetic_score": 7.4,
         "technical_score": 88.0, "face_match_score": 0.91, "composite_score": 0.7, "near_duplicate_of": None,
         "approval_method": "manual", "decided_by": "li", "asset_type": "portrait", "file_path": "x/q-4.png"},
    ])
    return frame.to_dict("records")  # as the asset reads them: NaN, numpy scalars


def test_reasons_json_holds_every_rejected_image_and_nothing_else():
    thresholds = Thresholds(6.5, 70.0, 0.7)
    document = reasons_document("q", "2026-11-20", score_rows(), thresholds, {"q-2": "q-2.png", "q-3": "q-3-0123456789abcdef.png"})
    assert sorted(document["images"]) == ["q-2", "q-3", "q-4"]
    assert document["rejected"] == 3
    assert document["by_reason"] == {"manual: wrong outfit": 1, "near_duplicate": 1, "no_face": 1}
    no_face = document["images"]["q-2"]
    assert no_face["gate"] == "face_match" and no_face["scores"]["face_match"] is None
    assert no_face["scores"]["technical"] == 80.0 and no_face["thresholds"] == {"aesthetic": 6.5, "technical": 70.0, "face_match": 0.7}
    assert no_face["file"] == "q-2.png" and no_face["source"].endswith("pose/q-2.png")
    assert document["images"]["q-3"]["near_duplicate_of"] == "q-1"
    assert document["images"]["q-3"]["file"] == "q-3-0123456789abcdef.png"
    assert document["images"]["q-4"]["file"] is None, "an image that was not placed says so"
    assert (document["images"]["q-4"]["approval_method"], document["images"]["q-4"]["decided_by"]) == ("manual", "li")

    data = reasons_json(document)
    assert json.loads(data) == document  # strict JSON: NaN became null, numpy became numbers
    assert b"NaN" not in data
    shuffled = reasons_json(reasons_document("q", "2026-11-20", score_rows()[::-1], thresholds,
                                             {"q-3": "q-3-0123456789abcdef.png", "q-2": "q-2.png"}))
    assert shuffled == data, "the same decisions give the same bytes, so a re-run rewrites nothing new"


# ------------------------------------------------------------------------------ the files on disk


def partition_scores(layout, slug, decisions):
    """Score rows for ``slug`` whose files exist under the layout, one per (type, approved, reason)."""
    rows = []
    for n, (asset_type, approved, reason) in enumerate(decisions):
        path = layout.generated_dir("2026-11-20", slug) / asset_type / f"{slug}-{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), RED if approved else BLUE).save(path)
        rows.append({"image_id": f"{slug}-{n}", "asset_type": asset_type, "approved": approved,
                     "approval_method": "auto", "rejection_reason": reason, "near_duplicate_of": None,
                     "face_match_score": 0.5, "technical_score": 80.0, "aesthetic_score": 7.0, "composite_score": 0.6,
                     "file_path": path.relative_to(layout.root).as_posix()})
    return pd.DataFrame(rows)


def test_review_files_are_the_queens_own_and_leave_no_stale_sheet(tmp_path):
    from hydra_assets.domain.review_files import review_links, write_review_files
    from hydra_assets.domain.storage import StorageLayout

    layout = StorageLayout(tmp_path)
    nova = partition_scores(layout, "nova", [("pose", True, None), ("pose", False, "face<0.7"), ("portrait", True, None)])
    longer = partition_scores(layout, "nova-sterling", [("pose", False, "no_face")])
    write_review_files(layout, "nova-sterling", "2026-11-20", longer, None, {"nova-sterling-0": "nova-sterling-0.png"})
    files = write_review_files(layout, "nova", "2026-11-20", nova, DEFAULT_THRESHOLDS, {"nova-1": "nova-1.png"})

    sheets_dir = layout.contact_sheets_dir("2026-11-20")
    assert sorted(p.name for p in sheets_dir.iterdir()) == [
        "nova-approved-portrait.png", "nova-approved-pose.png", "nova-rejected-portrait.png", "nova-rejected-pose.png",
        "nova-sterling-approved-pose.png", "nova-sterling-rejected-pose.png"], "no temp files, one sheet per name"
    assert set(files.sheets) == {"approved portrait", "approved pose", "rejected portrait", "rejected pose"}
    reasons = json.loads(files.reasons.read_text())
    assert files.reasons == layout.rejection_reasons_path("2026-11-20", "nova")
    assert list(reasons["images"]) == ["nova-1"] and reasons["images"]["nova-1"]["file"] == "nova-1.png"
    assert json.loads(layout.rejection_reasons_path("2026-11-20", "nova-sterling").read_text())["thresholds"] is None

    links = review_links(layout, "2026-11-20", "nova", nova["asset_type"].tolist())
    assert [path for _, path in links] == [
        "contact_sheets/nova-approved-portrait.png", "contact_sheets/nova-approved-pose.png",
        "contact_sheets/nova-rejected-portrait.png", "contact_sheets/nova-rejected-pose.png", "rejected/nova/reasons.json"]
    assert not any("sterling" in path for _, path in links), "a slug that prefixes another never takes its files"

    # a person approves the rejected pose: the rejected pose sheet is rewritten as empty, never left stale
    before = (sheets_dir / "nova-rejected-pose.png").read_bytes()
    nova.loc[1, ["approved", "rejection_reason", "approval_method"]] = [True, None, "manual"]
    files = write_review_files(layout, "nova", "2026-11-20", nova, DEFAULT_THRESHOLDS, {})
    after = Image.open(sheets_dir / "nova-rejected-pose.png")
    assert (sheets_dir / "nova-rejected-pose.png").read_bytes() != before
    blue = lambda image: (np.abs(np.asarray(image, dtype=int) - BLUE).sum(axis=2) < 10).sum()
    assert blue(Image.open(io.BytesIO(before))) > 1000 and blue(after) == 0, "the approved image's tile is gone"
    assert json.loads(files.reasons.read_text())["images"] == {}


DEFAULT_THRESHOLDS = Thresholds(6.5, 70.0, 0.7)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_thumbnails_of_every_mode_are_upright_rgb_within_the_tile(tmp_path, mode):
    """A sideways phone photo (EXIF orientation 6) and the modes generators and editors write."""
    base = Image.new("RGB", (400, 200), RED)
    base.paste(BLUE, (0, 0, 100, 200))  # blue on the left, before rotation
    image = base.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / f"photo-{mode.replace(';', '')}.png"
    image.save(path, exif=exif)
    thumbnail = sheets.thumbnail_of(path, 288)
    assert thumbnail.mode == "RGB" and thumbnail.size == (144, 288), "fitted into the tile after turning upright"
    if mode in ("RGB", "RGBA", "P"):
        top = np.asarray(thumbnail)[:20].reshape(-1, 3).mean(axis=0)
        assert top[2] > 150 and top[0] < 100, "the left edge is on top once turned clockwise"
