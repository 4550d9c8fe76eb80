"""image_scores, approved_images and quality_report on a night of images derived from the demo references.

The generated_images manifest is written here in the shape its asset writes (the contract in
hydra_assets/quality/scoring.py's docstring), and so is the queen's identity, so these tests need
neither a generator nor the reference job; the slow test runs the real reference job instead.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from hydra_assets.domain import contact_sheets, quality
from hydra_assets.domain import embeddings as embedding_contract
from hydra_assets.domain import score_table
from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.domain.overrides import parse_overrides
from hydra_assets.domain.publishing import publish_file
from hydra_assets.domain.roster import load_queen
from hydra_assets.domain.storage import StorageLayout, atomic_write_json, sha256_file
from hydra_assets.partitions import QUEENS, queen_night_key
from hydra_assets.quality import approved_images, image_scores, quality_report
from hydra_assets.quality.scoring import prior_approved
from resources.catalog import CatalogResource
from resources.embeddings import EmbeddingStore
from resources.events import EventPublisher
from resources.face import DlibFaceBackend
from resources.metrics import MetricsPusher
from resources.scoring import ClassicalTechnical, ImageStatsAestheticProxy
from resources.storage import HydraStorage

SLUG = "nova-sterling"
NIGHT = "2026-11-20"
NEXT_NIGHT = "2026-11-21"
SIZE = 512
FACE = DlibFaceBackend(upsample_times=0)  # the demo faces are large: 4x faster than the default

DUPLICATE_PAIR = ("portrait-000", "portrait-001")
"""A sharp copy of the front reference and the same shifted by one pixel: one of them is kept."""
EXPECTED_REASONS = {
    "portrait-002": "technical<70",  # blurred
    "expression-000": "technical<70",  # noisy
    "expression-001": "aesthetic<6.5",  # dark and flat
    "expression-002": "unreadable",  # not a PNG at all
    "pose-000": "no_face",  # the background crop
    "pose-001": "face<0.7",  # Grace Hopper
    "pose-002": None,  # mirrored
}


def check_reasons(scores: pd.DataFrame) -> tuple[str, str]:
    """Every image's expected reason; returns (kept, duplicate) ids of the shifted pair."""
    reasons = dict(zip(scores["image_id"], scores["rejection_reason"]))
    pair = [image_id(short) for short in DUPLICATE_PAIR]
    assert {k: v for k, v in reasons.items() if k not in pair} == {
        image_id(short): reason for short, reason in EXPECTED_REASONS.items()
    }
    by_id = scores.set_index("image_id")
    kept, duplicate = sorted(pair, key=lambda i: reasons[i] is not None)
    assert (reasons[kept], reasons[duplicate]) == (None, "near_duplicate")
    assert by_id.loc[duplicate, "near_duplicate_of"] == kept
    assert by_id.loc[kept, "composite_score"] >= by_id.loc[duplicate, "composite_score"]
    return kept, duplicate


def image_id(short: str, night: str = NIGHT) -> str:
    asset_type, index = short.split("-")
    return f"{SLUG}-{night}-{asset_type}-{index}"


def square(path: Path) -> Image.Image:
    image = Image.open(path).convert("RGB")
    return ImageOps.fit(image, (SIZE, SIZE), Image.Resampling.LANCZOS)


def derived_images(references: Path) -> dict[str, Image.Image | bytes]:
    front = square(references / SLUG / "portraits" / "front.png")
    pixels = np.asarray(front)
    noisy = pixels + np.random.default_rng(0).normal(0, 14, pixels.shape)
    return {
        "portrait-000": front,
        "portrait-001": Image.fromarray(np.concatenate([pixels[:, 1:], pixels[:, -1:]], axis=1)),
        "portrait-002": front.filter(ImageFilter.GaussianBlur(3)),
        "expression-000": Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)),
        "expression-001": ImageEnhance.Contrast(ImageEnhance.Brightness(front).enhance(0.45)).enhance(0.8),
        "expression-002": b"this is not an image",
        "pose-000": square(references / SLUG / "full_body" / "backdrop.png"),
        "pose-001": square(references / "ada-marlowe" / "portraits" / "front.png"),
        "pose-002": ImageOps.mirror(front),
    }


def write_night(layout: StorageLayout, night: str, images: dict[str, Image.Image | bytes]) -> dict:
    """Images and manifest.json exactly where and how generated_images writes them."""
    folder = layout.generated_dir(night, SLUG)
    entries = []
    for index, (short, image) in enumerate(images.items()):
        asset_type, number = short.split("-")
        params_hash = f"{index:08x}" + "0" * 56
        file = f"{asset_type}/{image_id(short, night)}-{params_hash[:8]}.png"
        if isinstance(image, bytes):
            data = image
        else:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", pnginfo=None)
            data = buffer.getvalue()
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).write_bytes(data)
        params = {"prompt": f"studio portrait photo, {asset_type}", "negative": "cartoon", "seed": 1000 + index,
                  "steps": 30, "cfg": 6.5, "width": SIZE, "height": SIZE, "asset_type": asset_type}
        entries.append({
            "image_id": image_id(short, night), "asset_type": asset_type, "index": int(number), "seed": 1000 + index,
            "file": file, "sha256": sha256_file(folder / file), "size_bytes": len(data), "width": SIZE,
            "height": SIZE, "params_hash": params_hash, "params": params, "generated_at": f"{night}T22:03:11+00:00",
        })
    manifest = {"queen": SLUG, "night": night, "backend": "test-fixture", "backend_kind": "demo", "lora": None,
                "images": entries, "failed": [{"image_id": "x", "asset_type": "pose", "index": 9, "error": "timeout"}]}
    atomic_write_json(folder / "manifest.json", manifest)
    return manifest


def write_identity(layout: StorageLayout, references: Path) -> None:
    """identity.npz as reference_identity writes it: the mean unit vector under ``mean``."""
    names = ["portraits/front.png", "portraits/close-up.jpg", "full_body/warm-light.jpg"]
    faces = FACE.embed_largest_faces([np.asarray(Image.open(references / SLUG / n).convert("RGB")) for n in names])
    mean = np.mean([f.embedding for f in faces], axis=0)
    buffer = io.BytesIO()
    np.savez(buffer, mean=(mean / np.linalg.norm(mean)).astype(np.float32))
    layout.identity_dir(SLUG).mkdir(parents=True, exist_ok=True)
    (layout.identity_dir(SLUG) / "identity.npz").write_bytes(buffer.getvalue())


def quality_resources(root: Path) -> dict:
    return {
        "storage": HydraStorage(root=str(root / "storage"), roster_dir=str(root / "roster")),
        "catalog": CatalogResource(url=f"sqlite:///{root / 'catalog.db'}"),
        "events": EventPublisher(catalog_url=f"sqlite:///{root / 'catalog.db'}"),
        "face": FACE,
        "aesthetic": ImageStatsAestheticProxy(),
        "technical": ClassicalTechnical(),
        "metrics": MetricsPusher(),
        "embeddings": EmbeddingStore(
            path=str(root / "storage" / "qdrant"), face_size=embedding_contract.DLIB_FACE_SIZE,
            style_size=embedding_contract.TINY_IMAGE_SIZE, visual_size=embedding_contract.TINY_IMAGE_SIZE,
        ),
    }


@pytest.fixture(scope="module")
def scored_night(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Demo roster, identity, one night of images, the queen's catalog row, and image_scores run
    once over them (face detection is most of a test's time, so the night is scored only here)."""
    root = tmp_path_factory.mktemp("scored")
    references = root / "storage" / "reference_images"
    write_demo_data(root / "roster", references)
    layout = StorageLayout(root / "storage")
    write_identity(layout, references)
    write_night(layout, NIGHT, derived_images(references))
    resources = quality_resources(root)
    resources["catalog"].upsert_queen(load_queen(root / "roster" / f"{SLUG}.yaml"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        result = dg.materialize([image_scores], partition_key=queen_night_key(SLUG, NIGHT), resources=resources,
                                instance=instance)
        assert result.success
    resources["catalog"].dispose()
    return root, metadata(result, "image_scores"), {c.check_name: c for c in result.get_asset_check_evaluations()}


@pytest.fixture
def night(scored_night, tmp_path):
    """A private copy of the scored night, with its own Dagster instance."""
    prepared, _, _ = scored_night
    root = tmp_path / "night"
    shutil.copytree(prepared, root)
    resources = quality_resources(root)
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        yield {"layout": StorageLayout(root / "storage"), "resources": resources, "instance": instance,
               "images": derived_images(root / "storage" / "reference_images"), "catalog_url": resources["catalog"].url}
    resources["catalog"].dispose()
    resources["events"].dispose()


def materialize(night, assets, partition_key, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, partition_key=partition_key, resources=night["resources"],
                          instance=night["instance"], **kwargs)


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: getattr(v, "value", v) for k, v in event.event_specific_data.materialization.metadata.items()}


def metadata_of_last(night, asset: str) -> dict:
    """The metadata of ``asset``'s latest materialization in the night's instance."""
    [record] = night["instance"].fetch_materializations(dg.AssetKey(asset), limit=1).records
    return {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}


def query(url: str, sql: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = [tuple(r) for r in connection.execute(sa.text(sql))]
    engine.dispose()
    return rows


def test_a_night_is_scored_gated_published_and_reported(scored_night, night):
    layout: StorageLayout = night["layout"]
    result = materialize(night, [approved_images], queen_night_key(SLUG, NIGHT))
    assert result.success

    scores = pd.read_parquet(layout.scores_path(NIGHT, SLUG))
    kept, duplicate = check_reasons(scores)
    by_id = scores.set_index("image_id")
    assert set(scores["aesthetic_backend"]) == {"image-stats-aesthetic-proxy-v1"}
    assert set(scores["technical_backend"]) == {"classical-technical-v1"}
    assert set(scores["face_backend"]) == {"dlib-resnet-v1"}
    assert set(scores["approval_method"]) == {"auto"}
    approved = by_id[by_id["approved"]]
    assert list(approved.index) == [kept, image_id("pose-002")]
    assert approved["approved_at"].notna().all() and by_id.loc[~by_id["approved"], "approved_at"].isna().all()
    assert json.loads(by_id.loc[image_id("pose-002"), "generation_params"])["seed"] == 1008
    # the face used for face match is stored: its box in image pixels and the detector's confidence
    for found in approved.to_dict("records"):
        x0, y0, x1, y1 = found["face_bbox"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE and found["face_det_score"] >= FACE.det_floor()
    assert by_id.loc[image_id("pose-000"), "face_bbox"] is None and np.isnan(by_id.loc[image_id("pose-000"), "face_det_score"])

    # the dashboards' numbers are in the run's metadata even with no Pushgateway configured
    meta = result.asset_materializations_for_node("approved_images")[0].metadata
    samples = meta["metrics"].value
    assert meta["metrics_pushed"].value is False
    assert sum(v for k, v in samples.items() if k.startswith("hydra_images_generated_total")) == len(scores)
    assert samples[f'hydra_images_generated_total{{approved="true",asset_type="pose",queen_slug="{SLUG}"}}'] == 1
    assert "hydra_queue_depth" in samples

    _, scored, score_checks = scored_night
    assert score_checks["every_image_scored_once"].passed and score_checks["scores_in_range"].passed
    assert (scored["generated"], scored["approved"], scored["scored"], scored["reused"]) == (9, 2, 8, 0)
    assert scored["unreadable"] == [image_id("expression-002")] and scored["failed_in_generation"] == 1
    score_rows = {r.data["image"]: r.data for r in scored["scores"].records}
    assert score_rows[image_id("expression-002")]["aesthetic"] is None
    assert score_rows[image_id("expression-002")]["decision"] == "unreadable"
    assert 0.0 <= score_rows[image_id("pose-002")]["composite"] <= 1.0

    # catalog rows mirror the parquet
    rows = query(night["catalog_url"], "select file_path, approved, rejection_reason, seed, approval_method, "
                 "file_hash, composite_score from generated_assets order by file_path")
    assert len(rows) == 9
    catalog_by_path = {r[0]: r[1:] for r in rows}
    for record in scores.to_dict("records"):
        approved_flag, reason, seed, method, file_hash, composite = catalog_by_path[record["file_path"]]
        assert (bool(approved_flag), reason, seed, method, file_hash) == (
            record["approved"], record["rejection_reason"], record["seed"], "auto", record["file_hash"])

    # files: approved into the queen's folders (hard links), every image sorted into the night
    generated = layout.generated_dir(NIGHT, SLUG)
    portrait = next(generated.glob(f"portrait/{kept}-*.png"))
    published = layout.approved_images(SLUG, "portraits") / portrait.name
    assert published.is_file() and os.path.samefile(published, portrait)
    assert sorted(p.name for p in layout.approved_images(SLUG, "poses").iterdir()) == [
        next(generated.glob(f"pose/{image_id('pose-002')}-*.png")).name]
    assert not layout.approved_images(SLUG, "expressions").exists()
    assert len(list((layout.overnight(NIGHT) / "approved" / SLUG).iterdir())) == 2
    rejected_folder = layout.overnight(NIGHT) / "rejected" / SLUG
    assert len(list(rejected_folder.glob("*.png"))) == 7
    assert [p.name for p in rejected_folder.iterdir() if p.suffix != ".png"] == ["reasons.json"]
    assert query(night["catalog_url"], "select portrait_count, expression_count, pose_count from queens "
                 f"where slug = '{SLUG}'") == [(1, 0, 1)]

    published_meta = metadata(result, "approved_images")
    assert published_meta["approval_rate"] == pytest.approx(2 / 9)
    assert published_meta["files"] == {"asset_linked": 2, "night_linked": 9}

    # reasons.json says, per rejected image, why, with the scores, thresholds, partner and file
    reasons = json.loads((rejected_folder / "reasons.json").read_text())
    assert {i: e["reason"] for i, e in reasons["images"].items()} == {
        **{image_id(short): reason for short, reason in EXPECTED_REASONS.items() if reason}, duplicate: "near_duplicate"}
    for image, entry in reasons["images"].items():
        assert (rejected_folder / entry["file"]).is_file() and entry["file"].startswith(image)
    assert reasons["images"][duplicate]["near_duplicate_of"] == kept
    blurred = reasons["images"][image_id("portrait-002")]
    assert blurred["scores"]["technical"] == pytest.approx(by_id.loc[image_id("portrait-002"), "technical_score"])
    assert (blurred["gate"], blurred["thresholds"]["technical"]) == ("technical", 70.0) and blurred["scores"]["technical"] < 70
    assert reasons["images"][image_id("pose-000")]["scores"]["face_match"] is None  # no face: null, not NaN
    assert published_meta["reasons_file"] == str(rejected_folder / "reasons.json")

    # contact sheets: both decisions for every type, full colour, the tiles at full size
    sheets_dir = layout.contact_sheets_dir(NIGHT)
    names = {f"{d} {t}": f"{SLUG}-{d}-{t}.png" for d in ("approved", "rejected") for t in ("expression", "portrait", "pose")}
    assert sorted(p.name for p in sheets_dir.iterdir()) == sorted(names.values())
    assert published_meta["contact_sheets"] == {label: str(sheets_dir / name) for label, name in names.items()}
    rejected_expressions = Image.open(sheets_dir / names["rejected expression"])
    assert rejected_expressions.mode == "RGB"
    assert rejected_expressions.width == 3 * (contact_sheets.TILE_SIZE + contact_sheets.PADDING) + contact_sheets.PADDING
    approved_pose = np.asarray(Image.open(sheets_dir / names["approved pose"]), dtype=float)
    source = contact_sheets.thumbnail_of(next(generated.glob(f"pose/{image_id('pose-002')}-*.png")), contact_sheets.TILE_SIZE)
    top = contact_sheets._line_height(contact_sheets.load_font(contact_sheets.TITLE_FONT_SIZE)) + 2 * contact_sheets.PADDING
    tile = approved_pose[top: top + source.height, contact_sheets.PADDING: contact_sheets.PADDING + source.width]
    assert np.abs(tile - np.asarray(source, dtype=float)).mean() < 1.0, "the approved pose, unscaled and undithered"
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["approval_rate_at_least_half"].passed
    assert checks["approval_rate_at_least_half"].severity == dg.AssetCheckSeverity.WARN

    report = materialize(night, [quality_report], NIGHT)
    assert report.success
    text = layout.report_path(NIGHT).read_text()
    assert "9 images generated, 2 approved, 7 rejected" in text and "| nova-sterling | run | 9 | 2 | 7 | 22.2 % |" in text
    assert "Alert:** approval rate below 50% for nova-sterling" in text
    # every roster queen: ada-marlowe has photos but no processed references and no LoRA
    assert "| ada-marlowe | not run: references not processed; no LoRA | - |" in text
    assert f"[reasons.json](rejected/{SLUG}/reasons.json)" in text
    assert f"[rejected pose](contact_sheets/{SLUG}-rejected-pose.png)" in text
    assert f"- `technical<70` (2): `{image_id('expression-000')}`, `{image_id('portrait-002')}`" in text
    snippet = text.split(f"`overrides/{SLUG}.yaml`:\n\n```yaml\n", 1)[1].split("```", 1)[0]
    assert sorted(parse_overrides(snippet, "snippet")) == sorted(
        i for i, e in reasons["images"].items() if e["reason"] != "unreadable")
    report_meta = metadata(report, "quality_report")
    assert report_meta["not_run"] == {"ada-marlowe": "references not processed; no LoRA"}
    table = report_meta["table"]
    assert [c.name for c in table.schema.columns][:6] == ["queen", "status", "generated", "approved", "rejected",
                                                          "approval_rate_pct"]
    rows = {r.data["queen"]: r.data for r in table.records}
    assert list(rows) == ["ada-marlowe", SLUG, "overall"]
    assert (rows[SLUG]["status"], rows[SLUG]["generated"], rows[SLUG]["approval_rate_pct"]) == ("run", 9, 22.2)
    assert rows["ada-marlowe"]["generated"] is None
    assert report_meta["threshold_suggestions"] == [], "nobody has overridden anything yet"
    assert report_meta["rejection_reasons"] == {
        "aesthetic<6.5": 1, "face<0.7": 1, "near_duplicate": 1, "no_face": 1, "technical<70": 2, "unreadable": 1}
    assert report_meta["histogram"].startswith("![scores")
    # the report's table (every roster queen, then overall; its schema is checked above)
    assert (rows[SLUG]["queen"], rows[SLUG]["generated"], rows[SLUG]["approved"]) == (SLUG, 9, 2)
    assert rows["overall"]["queen"] == "overall" and rows["overall"]["approval_rate_pct"] == round(100 * 2 / 9, 1)
    assert all(c.description for c in report_meta["table"].schema.columns), "every column says what it holds"
    per_type = {r.data["type"]: (r.data["approved"], r.data["rejected"]) for r in published_meta["per_type"].records}
    assert per_type == {"expression": (0, 3), "portrait": (1, 2), "pose": (1, 2)}
    metrics = query(night["catalog_url"], "select queen_id is null, granularity, total_generated, total_approved, "
                    "approval_rate, rejection_breakdown from quality_metrics order by queen_id is null")
    assert [(m[0], m[1], m[2], m[3]) for m in metrics] == [(0, "daily", 9, 2), (1, "daily", 9, 2)]
    assert json.loads(metrics[0][5])["technical<70"] == 2


def test_publishing_and_the_report_emit_the_decisions_and_the_runs_end(night):
    """Per image one approved|rejected event with the parquet's scores; the run ends with its stats."""
    result = materialize(night, [approved_images], queen_night_key(SLUG, NIGHT))
    scores = pd.read_parquet(night["layout"].scores_path(NIGHT, SLUG)).set_index("image_id")
    events = night["resources"]["events"].read(correlation_id=result.run_id)
    *decisions, completed = events
    assert [e.payload.image_id for e in decisions] == list(scores.index)
    for event in decisions:
        row = scores.loc[event.payload.image_id]
        assert event.type.value == ("generation.image.approved" if row["approved"] else "generation.image.rejected")
        assert event.payload.approved == bool(row["approved"]) and event.payload.path == row["file_path"]
        assert event.payload.rejection_reason == (None if row["approved"] else row["rejection_reason"])
        assert event.payload.scores.aesthetic == (None if pd.isna(row["aesthetic_score"]) else row["aesthetic_score"])
        assert event.source == "approved_images" and event.payload.queen_id is not None
    assert completed.type.value == "pipeline.overnight.completed" and completed.payload.pipeline_id == result.run_id
    assert completed.payload.stats.model_dump() == {
        "total_tasks": 10, "completed_tasks": 9, "failed_tasks": 1, "total_generated": 9, "total_approved": 2,
    }
    assert metadata(result, "approved_images")["events_written"] == 10

    report = materialize(night, [quality_report], NIGHT)
    (generated,) = night["resources"]["events"].read(correlation_id=report.run_id)
    assert generated.type.value == "pipeline.report.generated" and generated.payload.stage == "quality_report"
    assert generated.payload.stats.model_dump() == {
        "total_tasks": 2, "completed_tasks": 1, "failed_tasks": 0, "total_generated": 9, "total_approved": 2,
    }


def test_rerun_with_manual_overrides_reuses_scores_and_moves_files(night):
    layout: StorageLayout = night["layout"]
    key = queen_night_key(SLUG, NIGHT)
    assert materialize(night, [approved_images], key).success
    kept, duplicate = check_reasons(pd.read_parquet(layout.scores_path(NIGHT, SLUG)))
    published_before = sorted(p.name for p in layout.approved_images(SLUG, "portraits").iterdir())

    layout.overrides_path(NIGHT, SLUG).parent.mkdir(parents=True)
    layout.overrides_path(NIGHT, SLUG).write_text(
        f"{image_id('portrait-002')}: {{decision: approve, by: maria, reason: soft focus is intended}}\n"
        f"{kept}: {{decision: reject, by: li, reason: wrong outfit}}\n"
    )
    result = materialize(night, [image_scores, approved_images], key)
    assert result.success
    assert metadata(result, "image_scores")["reused"] == 8  # every readable image: no model ran again
    scores = pd.read_parquet(layout.scores_path(NIGHT, SLUG)).set_index("image_id")
    assert scores.loc[image_id("portrait-002"), ["approved", "approval_method", "decided_by"]].tolist() == [True, "manual", "maria"]
    assert scores.loc[kept, "rejection_reason"] == "manual: wrong outfit"
    # the gate still keeps the better of the pair; the person's rejection does not promote the copy
    assert scores.loc[duplicate, "rejection_reason"] == "near_duplicate"

    portraits = sorted(p.name for p in layout.approved_images(SLUG, "portraits").iterdir())
    assert portraits != published_before and len(portraits) == 1 and image_id("portrait-002") in portraits[0]
    assert metadata(result, "approved_images")["withdrawn"] == [str(layout.approved_images(SLUG, "portraits") / published_before[0])]
    night_rejected = {p.name for p in (layout.overnight(NIGHT) / "rejected" / SLUG).iterdir()}
    assert published_before[0] in night_rejected and not any(image_id("portrait-002") in n for n in night_rejected)
    reasons = json.loads(layout.rejection_reasons_path(NIGHT, SLUG).read_text())["images"]
    assert image_id("portrait-002") not in reasons, "approved by maria: no longer a rejection"
    assert (reasons[kept]["reason"], reasons[kept]["approval_method"], reasons[kept]["decided_by"]) == (
        "manual: wrong outfit", "manual", "li")
    assert reasons[kept]["file"] == published_before[0]

    # the report learns from li's rejection of an image every gate passed: a face cut just above it
    assert materialize(night, [quality_report], NIGHT).success
    suggested = {s["score"]: s for s in metadata_of_last(night, "quality_report")["threshold_suggestions"]}
    face = suggested["face_match"]
    assert (face["labelled"], face["reversed"], face["current"]) == (1, 1, 0.7)
    assert 0 < face["suggested"] - scores.loc[kept, "face_match_score"] <= 0.01 + 1e-9
    assert "## Learned thresholds (suggestions, never applied)" in layout.report_path(NIGHT).read_text()

    # a third run changes nothing on disk and duplicates nothing
    before = sorted(str(p) for p in layout.root.rglob("*.png"))
    again = materialize(night, [image_scores, approved_images], key)
    assert sorted(str(p) for p in layout.root.rglob("*.png")) == before
    assert metadata(again, "approved_images")["files"] == {"asset_exists": 2, "night_exists": 9}
    assert query(night["catalog_url"], "select count(*), sum(approval_method = 'manual') from generated_assets") == [(9, 2)]


def test_an_image_already_approved_on_an_earlier_night_is_a_near_duplicate(night):
    layout: StorageLayout = night["layout"]
    kept, _ = check_reasons(pd.read_parquet(layout.scores_path(NIGHT, SLUG)))
    images = night["images"]
    write_night(layout, NEXT_NIGHT, {"portrait-000": ImageEnhance.Brightness(images["portrait-000"]).enhance(1.05),
                                     "pose-000": ImageOps.fit(images["pose-002"].crop((40, 40, 472, 472)), (SIZE, SIZE))})
    assert materialize(night, [image_scores], queen_night_key(SLUG, NEXT_NIGHT)).success
    scores = pd.read_parquet(layout.scores_path(NEXT_NIGHT, SLUG)).set_index("image_id")
    first = scores.loc[image_id("portrait-000", NEXT_NIGHT)]
    assert (first["rejection_reason"], first["near_duplicate_of"]) == ("near_duplicate", kept)
    assert scores.loc[image_id("pose-000", NEXT_NIGHT), "approved"]

    # the decisions the gate made from the store are those of the old scan of every earlier score table
    queen = load_queen(layout.root.parent / "roster" / f"{SLUG}.yaml")
    frame = pd.read_parquet(layout.scores_path(NEXT_NIGHT, SLUG))
    prior, prior_ids = prior_approved(layout, SLUG, NEXT_NIGHT, ImageStatsAestheticProxy().embedding_name())
    assert kept in prior_ids
    before = quality.decide(frame, score_table.embedding_matrix(frame["embedding"]),
                            quality.Thresholds.from_generation_config(queen.generation_config),
                            ImageStatsAestheticProxy.near_duplicate_cosine, prior_embeddings=prior, prior_ids=prior_ids)
    assert before.approved == frame["approved"].tolist()
    assert before.rejection_reason == [r if isinstance(r, str) else None for r in frame["rejection_reason"]]
    assert before.near_duplicate_of == [r if isinstance(r, str) else None for r in frame["near_duplicate_of"]]


def test_scoring_a_night_fills_the_embedding_store(night):
    """Every scored image's visual vector with its decision, and the approved ones' style vectors."""
    layout: StorageLayout = night["layout"]
    scores = pd.read_parquet(layout.scores_path(NIGHT, SLUG))
    with_vector = scores[[score_table.has_vector(v) for v in scores["embedding"]]]
    with night["resources"]["embeddings"].session() as session:
        assert session.count("generated_images") == len(with_vector) > 0
        assert session.count("generated_images", approved=True) == int(with_vector["approved"].sum()) > 0
        assert session.count("queen_embeddings", embedding_type="generated") == int(with_vector["approved"].sum())
        row = with_vector.iloc[0]
        stored = session.image(row["image_id"], with_vector=True)
    assert stored.payload["file_path"] == row["file_path"] and stored.payload["night"] == NIGHT
    assert stored.payload["aesthetic_score"] == pytest.approx(row["aesthetic_score"])
    assert np.allclose(np.asarray(stored.vector), row["embedding"] / np.linalg.norm(row["embedding"]), atol=1e-6)


def test_an_embedding_store_that_cannot_be_opened_fails_the_step_by_name(night, tmp_path):
    """A store of another size is refused (nothing mixes), and the step names it."""
    resources = {**night["resources"], "embeddings": EmbeddingStore(
        path=str(night["layout"].root / "qdrant"), face_size=128, style_size=1024, visual_size=768, lock_timeout_s=5)}
    result = dg.materialize([image_scores], partition_key=queen_night_key(SLUG, NIGHT), resources=resources,
                            instance=night["instance"], raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "collection 'generated_images'" in message and "size 1024" in message and "makes 768" in message


@pytest.mark.parametrize("breakage", ["entry outside the folder", "stale out-of-range score"])
def test_a_score_table_that_fails_its_checks_publishes_nothing(night, breakage):
    """image_scores' blocking checks stop approved_images before a file or a catalog count is written."""
    layout: StorageLayout = night["layout"]
    if breakage == "entry outside the folder":  # listed in the manifest, never scored
        manifest_path = layout.generated_dir(NIGHT, SLUG) / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        outside = {**manifest["images"][0], "image_id": image_id("pose-009"), "file": "../../../elsewhere.png"}
        atomic_write_json(manifest_path, {**manifest, "images": [*manifest["images"], outside]})
        failed, findings = "every_image_scored_once", ("missing", [image_id("pose-009")])
    else:  # an earlier table's impossible score, reused because file and backends are unchanged
        scores = pd.read_parquet(layout.scores_path(NIGHT, SLUG))
        scores.loc[scores["image_id"] == image_id("pose-002"), "aesthetic_score"] = 12.0
        scores.to_parquet(layout.scores_path(NIGHT, SLUG), index=False)
        failed, findings = "scores_in_range", ("out_of_range", {"aesthetic_score": [image_id("pose-002")]})

    result = materialize(night, [image_scores, approved_images], queen_night_key(SLUG, NIGHT), raise_on_error=False)
    assert not result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks[failed].passed and checks[failed].blocking
    assert checks[failed].metadata[findings[0]].value == findings[1]
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == ["image_scores"]
    assert not layout.overnight(NIGHT).joinpath("approved").exists()
    assert not layout.overnight(NIGHT).joinpath("rejected").exists()
    assert not layout.approved_images(SLUG, "portraits").exists()
    assert query(night["catalog_url"], f"select portrait_count, pose_count from queens where slug = '{SLUG}'") == [(0, 0)]


def test_the_report_says_whose_run_failed(night):
    """A queen with no images and a failed run, and one whose images stand but whose last run failed."""
    layout: StorageLayout = night["layout"]
    night["instance"].add_dynamic_partitions(QUEENS, ["ada-marlowe"])
    ada = materialize(night, [image_scores], queen_night_key("ada-marlowe", NIGHT), raise_on_error=False)
    layout.overrides_path(NIGHT, SLUG).parent.mkdir(parents=True)
    layout.overrides_path(NIGHT, SLUG).write_text(f"{image_id('pose-000')}: {{decision: maybe, by: maria}}\n")
    nova = materialize(night, [image_scores], queen_night_key(SLUG, NIGHT), raise_on_error=False)
    assert not ada.success and not nova.success

    assert materialize(night, [quality_report], NIGHT).success
    meta = metadata_of_last(night, "quality_report")
    assert meta["not_run"] == {"ada-marlowe": f"references not processed; no LoRA; run failed (run {ada.run_id[:8]})"}
    text = layout.report_path(NIGHT).read_text()
    assert f"| ada-marlowe | not run: references not processed; no LoRA; run failed (run {ada.run_id[:8]}) | - |" in text
    assert f"| {SLUG} | run (run failed (run {nova.run_id[:8]})) | 9 | 2 | 7 | 22.2 % |" in text, "the last scores still stand"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("manifest", "generated/nova-sterling/manifest.json is missing: materialize generated_images"),
        ("identity", "identity/nova-sterling/identity.npz is missing: materialize reference_identity"),
        ("overrides", "overrides/nova-sterling.yaml: nova-sterling-2026-11-20-pose-000: decision must be one of"),
    ],
)
def test_missing_or_bad_inputs_fail_naming_the_file(night, breakage, message):
    layout: StorageLayout = night["layout"]
    if breakage == "manifest":
        (layout.generated_dir(NIGHT, SLUG) / "manifest.json").unlink()
    elif breakage == "identity":
        (layout.identity_dir(SLUG) / "identity.npz").unlink()
    else:
        layout.overrides_path(NIGHT, SLUG).parent.mkdir(parents=True)
        layout.overrides_path(NIGHT, SLUG).write_text(f"{image_id('pose-000')}: {{decision: yes, by: maria}}\n")
    result = materialize(night, [image_scores], queen_night_key(SLUG, NIGHT), raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert message in str(failure.step_failure_data.error.message) or message in str(failure.step_failure_data.user_failure_data)


# ------------------------------------------------------------------------------ publishing


def test_publishing_never_overwrites_and_names_a_different_file_by_its_hash(tmp_path):
    source = tmp_path / "generated" / "a.png"
    source.parent.mkdir()
    source.write_bytes(b"image one")
    folder = tmp_path / "published"
    digest = sha256_file(source)

    path, action = publish_file(source, folder, "a.png", digest)
    assert (path, action) == (folder / "a.png", "linked")
    assert publish_file(source, folder, "a.png", digest) == (folder / "a.png", "exists")

    other = tmp_path / "generated" / "other" / "a.png"
    other.parent.mkdir()
    other.write_bytes(b"image two, same name")
    other_digest = sha256_file(other)
    path, action = publish_file(other, folder, "a.png", other_digest)
    assert path == folder / f"a-{other_digest[:16]}.png" and action == "linked"
    assert (folder / "a.png").read_bytes() == b"image one", "the first file is never overwritten"
    assert publish_file(other, folder, "a.png", other_digest) == (path, "exists")
    assert {p.name for p in folder.iterdir()} == {"a.png", f"a-{other_digest[:16]}.png"}


def test_publishing_copies_when_hard_links_are_impossible(tmp_path, monkeypatch):
    source = tmp_path / "a.png"
    source.write_bytes(b"pixels")
    calls = []

    def no_cross_device_link(src, dst, *args, **kwargs):
        calls.append((src, dst))
        if Path(src) == source:
            raise OSError(18, "Invalid cross-device link")
        return real_link(src, dst, *args, **kwargs)

    real_link = os.link
    monkeypatch.setattr(os, "link", no_cross_device_link)
    path, action = publish_file(source, tmp_path / "out", "a.png", sha256_file(source))
    assert action == "copied" and path.read_bytes() == b"pixels" and not os.path.samefile(path, source)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"], "no temp file is left behind"


# ------------------------------------------------------------------------------ with the real spine


@pytest.mark.slow
def test_quality_stages_after_the_real_reference_job(tmp_path):
    from tests.helpers import hydra_definitions, temp_settings
    from hydra_assets.definitions import local_resources

    write_demo_data(tmp_path / "roster", tmp_path / "storage" / "reference_images")
    layout = StorageLayout(tmp_path / "storage")
    write_night(layout, NIGHT, derived_images(tmp_path / "storage" / "reference_images"))
    resources = {**local_resources(temp_settings(tmp_path)), "aesthetic": ImageStatsAestheticProxy(),
                 "technical": ClassicalTechnical()}
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        spine = hydra_definitions(tmp_path).resolve_job_def("queen_reference_job")
        assert spine.execute_in_process(partition_key=SLUG, instance=instance).success
        result = dg.materialize([image_scores, approved_images, quality_report], resources=resources, instance=instance,
                                partition_key=queen_night_key(SLUG, NIGHT), selection=["image_scores", "approved_images"])
        assert result.success
        report = dg.materialize([quality_report], resources=resources, instance=instance, partition_key=NIGHT)
        assert report.success
    check_reasons(pd.read_parquet(layout.scores_path(NIGHT, SLUG)))
