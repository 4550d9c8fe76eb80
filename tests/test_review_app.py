"""The review app's routes with FastAPI's TestClient, over a night scored by the real image_scores."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from hydra_assets.domain import overrides
from hydra_assets.domain.demo_data import write_demo_data
from hydra_assets.domain.roster import load_queen
from hydra_assets.domain.storage import StorageLayout, atomic_write_json, read_json
from hydra_assets.partitions import QUEENS, queen_night_key
from hydra_assets.quality import approved_images, image_scores
from hydra_assets.review.app import create_app
from hydra_assets.review.config import ReviewConfig
from hydra_assets.review.launcher import DagsterLauncher
from hydra_assets.review.links import partition_review_url
from tests.test_quality_assets import NIGHT, SLUG, derived_images, image_id, quality_resources, write_identity, write_night
from tests.test_webserver_graphql import free_port

GRID = f"/nights/{NIGHT}/{SLUG}"


def build_night(root: Path) -> None:
    """Demo roster and references, a night of images, and image_scores + approved_images run for real."""
    references = root / "storage" / "reference_images"
    write_demo_data(root / "roster", references)
    layout = StorageLayout(root / "storage")
    write_identity(layout, references)
    write_night(layout, NIGHT, derived_images(references))
    resources = quality_resources(root)
    resources["catalog"].upsert_queen(load_queen(root / "roster" / f"{SLUG}.yaml"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        result = dg.materialize([image_scores, approved_images], partition_key=queen_night_key(SLUG, NIGHT),
                                resources=resources, instance=instance)
        assert result.success
    resources["catalog"].dispose()


@pytest.fixture(scope="module")
def built_night(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("review")
    build_night(root)
    return root


@pytest.fixture
def night(built_night, tmp_path) -> Path:
    root = tmp_path / "night"
    shutil.copytree(built_night, root)
    return root


def config_for(root: Path, **changes) -> ReviewConfig:
    values = dict(storage_root=root / "storage", roster_dir=root / "roster", cache_dir=root / "cache",
                  dagster_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there: GraphQL is down
    values.update(changes)
    return ReviewConfig(**values)


@pytest.fixture
def client(night) -> TestClient:
    return TestClient(create_app(config_for(night)), raise_server_exceptions=False)


def scores(root: Path) -> pd.DataFrame:
    return pd.read_parquet(StorageLayout(root / "storage").scores_path(NIGHT, SLUG)).set_index("image_id")


def files_under(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in (root / "storage").rglob("*") if p.is_file()}


def tile_of(page: str, image: str) -> str:
    [tile] = [t.split("</li>")[0] for t in page.split('<li class="tile')[1:] if f'data-image-id="{image}"' in t]
    return tile


def form_for(root: Path, short: str, decision: str) -> dict[str, str]:
    return {"decision": decision, "file_hash": scores(root).loc[image_id(short), "file_hash"], "reason": "wrong outfit"}


def test_the_pages_list_the_night_its_queen_and_every_image(client, night):
    assert NIGHT in client.get("/").text
    assert f'href="{GRID}"' in client.get(f"/nights/{NIGHT}").text
    page = client.get(GRID)
    assert page.status_code == 200
    frame = scores(night)
    for image in frame.index:
        assert f'data-image-id="{image}"' in page.text
        assert f"{image}/thumb.jpg" in page.text
    approved = frame.index[frame["approved"]]
    assert page.text.count('data-status="approved"') == len(approved) == 2
    assert page.text.count('data-status="rejected"') == 7
    for reason in ("technical&lt;70", "no_face", "face&lt;0.7", "near_duplicate", "unreadable", "aesthetic&lt;6.5"):
        assert reason in page.text
    assert "near-duplicate of" in page.text and "≥ 6.5" in page.text and "≥ 0.7" in page.text
    assert page.text.count('class="facebox"') == int(frame["face_bbox"].notna().sum()) > 0


def test_filters_by_status_reason_and_type(client, night):
    frame = scores(night)
    rejected = client.get(GRID, params={"status": "rejected"}).text
    assert rejected.count("<li class=\"tile") == 7 and 'data-status="approved"' not in rejected
    technical = client.get(GRID, params={"reason": "technical<70"}).text
    assert technical.count("<li class=\"tile") == int((frame["rejection_reason"] == "technical<70").sum()) == 2
    poses = client.get(GRID, params={"type": "pose"}).text
    assert poses.count("<li class=\"tile") == 3 and image_id("portrait-000") not in poses.split("<ul class=\"grid\">")[1]


def test_thumbnails_are_real_jpegs_cached_and_the_full_view_shows_lineage(client, night):
    first = client.get(f"{GRID}/images/{image_id('pose-002')}/thumb.jpg")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert first.headers["x-thumbnail-cache"] == "miss"
    with Image.open(io.BytesIO(first.content)) as thumb:
        assert thumb.size == (320, 320)
    again = client.get(f"{GRID}/images/{image_id('pose-002')}/thumb.jpg")
    assert again.headers["x-thumbnail-cache"] == "hit" and again.content == first.content
    broken = client.get(f"{GRID}/images/{image_id('expression-002')}/thumb.jpg")
    assert broken.status_code == 200 and Image.open(io.BytesIO(broken.content)).size == (320, 320)

    page = client.get(f"{GRID}/images/{image_id('pose-002')}").text
    manifest = read_json(StorageLayout(night / "storage").generated_dir(NIGHT, SLUG) / "manifest.json")
    entry = next(e for e in manifest["images"] if e["image_id"] == image_id("pose-002"))
    assert entry["params"]["prompt"] in page and f"<td>{entry['seed']}</td>" in page
    assert "face box:" in page and "detector confidence" in page and 'class="facebox"' in page
    full = client.get(f"{GRID}/images/{image_id('pose-002')}/file")
    assert full.status_code == 200 and Image.open(io.BytesIO(full.content)).size == (512, 512)


@pytest.mark.parametrize(
    "path",
    [
        "/nights/2026-02-30",  # not a date
        "/nights/not-a-night",
        "/nights/2026-01-01",  # a date with nothing stored
        "/nights/..%2F..%2Fetc",
        "/nights/%2e%2e",
        f"/nights/{NIGHT}/Nova-Sterling",  # not a slug
        f"/nights/{NIGHT}/ada-marlowe",  # a queen with no images that night
        f"/nights/{NIGHT}/..%2F..%2F..%2Froster",
        f"/nights/{NIGHT}/{SLUG}/images/{SLUG}-{NIGHT}-portrait-999",
        f"/nights/{NIGHT}/{SLUG}/images/..%2Fmanifest.json",
        f"/nights/{NIGHT}/{SLUG}/images/..%2F..%2F..%2F..%2Froster%2Fnova-sterling.yaml/file",
        f"/nights/{NIGHT}/{SLUG}/images/%2e%2e/thumb.jpg",
        f"/nights/{NIGHT}/{SLUG}/images/manifest.json/file",
        "/nights/..%2F..%2F..%2F..%2Fetc%2Fpasswd/x/images/y/file",
        "/static/..%2F..%2Fapp.py",
    ],
)
def test_unknown_or_hostile_paths_are_a_clear_404(client, path):
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert "Traceback" not in response.text and "root:" not in response.text


def test_a_manifest_entry_pointing_outside_its_folder_is_neither_listed_nor_served(client, night):
    folder = StorageLayout(night / "storage").generated_dir(NIGHT, SLUG)
    manifest = read_json(folder / "manifest.json")
    manifest["images"].append({"image_id": f"{SLUG}-{NIGHT}-pose-009", "asset_type": "pose", "file": "../../../../../roster/nova-sterling.yaml"})
    atomic_write_json(folder / "manifest.json", manifest)
    assert f"{SLUG}-{NIGHT}-pose-009" not in client.get(GRID).text
    assert client.get(f"{GRID}/images/{SLUG}-{NIGHT}-pose-009/file").status_code == 404


def test_reject_writes_the_override_says_the_run_was_not_started_and_the_next_run_honours_it(client, night):
    layout = StorageLayout(night / "storage")
    kept = scores(night).index[scores(night)["approved"]][0]
    short = kept.split(f"{NIGHT}-")[1]
    before = files_under(night)
    response = client.post(f"{GRID}/images/{kept}/decision", data=form_for(night, short, "reject"),
                           headers={"X-Forwarded-User": "maria"}, follow_redirects=False)
    assert response.status_code == 303 and "launch_error=" in response.headers["location"]
    changed = {k for k, v in files_under(night).items() if before.get(k) != v}
    assert changed == {str(layout.overrides_path(NIGHT, SLUG).relative_to(night))}, "only the overrides file is written"

    [override] = overrides.load_overrides(layout.overrides_path(NIGHT, SLUG)).values()
    assert (override.image_id, override.decision, override.by, override.reason) == (kept, "reject", "maria", "wrong outfit")
    assert override.at and override.at.startswith("20")
    page = client.get(response.headers["location"]).text
    assert "The run could not be started" in page and "/graphql" in page
    assert "override pending: reject by maria" in page

    # a second decision keeps the first; the file stays what image_scores parses
    other = image_id("portrait-002")
    assert client.post(f"{GRID}/images/{other}/decision", data=form_for(night, "portrait-002", "approve"),
                       follow_redirects=False).status_code == 303
    assert set(overrides.load_overrides(layout.overrides_path(NIGHT, SLUG))) == {kept, other}

    resources = quality_resources(night)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        assert dg.materialize([image_scores, approved_images], partition_key=queen_night_key(SLUG, NIGHT),
                              resources=resources, instance=instance).success
    resources["catalog"].dispose()
    after = scores(night)
    assert after.loc[kept, ["approved", "approval_method", "decided_by"]].tolist() == [False, "manual", "maria"]
    assert bool(after.loc[other, "approved"])
    tile = tile_of(client.get(GRID).text, kept)
    assert 'data-status="rejected"' in tile and "manual · maria" in tile and "override pending" not in tile
    # people's decisions feed the learned-threshold suggestions (shown, not applied)
    suggestions = client.get(GRID).text.split('class="suggestions"')[1].split("</details>")[0]
    assert "face_match" in suggestions and "technical" in suggestions


def test_a_decision_on_an_image_that_changed_is_refused(client, night):
    form = form_for(night, "pose-002", "reject")
    path = next(StorageLayout(night / "storage").generated_dir(NIGHT, SLUG).glob(f"pose/{image_id('pose-002')}-*.png"))
    Image.open(path).rotate(5).save(path)
    response = client.post(f"{GRID}/images/{image_id('pose-002')}/decision", data=form)
    assert response.status_code == 409 and "changed since the page was rendered" in response.text
    assert not StorageLayout(night / "storage").overrides_path(NIGHT, SLUG).exists()


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"decision": "maybe"}, 400, "decision must be one of approve, reject"),
        ({"file_hash": "abc"}, 400, "64 hex digits"),
        ({"file_hash": "0" * 64}, 409, "changed since the page was rendered"),
        ({"file_hash": None}, 400, "missing or invalid: file_hash"),
        ({"reason": "x" * 201}, 400, "longer than 200"),
    ],
)
def test_bad_decision_forms_are_4xx_and_write_nothing(client, night, change, status, message):
    form = {**form_for(night, "pose-002", "reject"), **change}
    before = files_under(night)
    response = client.post(f"{GRID}/images/{image_id('pose-002')}/decision", data={k: v for k, v in form.items() if v is not None})
    assert response.status_code == status and message in response.text and "Traceback" not in response.text
    assert files_under(night) == before


def test_unknown_image_cross_site_post_and_hostile_overrides_file(client, night):
    layout = StorageLayout(night / "storage")
    form = form_for(night, "pose-002", "reject")
    assert client.post(f"{GRID}/images/{SLUG}-{NIGHT}-pose-077/decision", data=form).status_code == 404
    assert client.post(f"/nights/..%2F..%2F/{SLUG}/images/{image_id('pose-002')}/decision", data=form).status_code == 404
    forged = client.post(f"{GRID}/images/{image_id('pose-002')}/decision", data=form, headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403 and not layout.overrides_path(NIGHT, SLUG).exists()

    layout.overrides_path(NIGHT, SLUG).parent.mkdir(parents=True)
    hostile = "!!python/object/apply:os.system ['echo hacked']\n"
    layout.overrides_path(NIGHT, SLUG).write_text(hostile)
    response = client.post(f"{GRID}/images/{image_id('pose-002')}/decision", data=form)
    assert response.status_code == 409 and "not replaced" in response.text
    assert layout.overrides_path(NIGHT, SLUG).read_text() == hostile
    assert "Overrides file unreadable" in client.get(GRID).text


def test_on_the_cluster_a_request_without_the_proxy_user_is_refused(night):
    client = TestClient(create_app(config_for(night, require_user_header=True, user_header="X-Auth-Request-User")))
    form = form_for(night, "pose-002", "reject")
    refused = client.post(f"{GRID}/images/{image_id('pose-002')}/decision", data=form)
    assert refused.status_code == 401 and "X-Auth-Request-User" in refused.text
    ok = client.post(f"{GRID}/images/{image_id('pose-002')}/decision", data=form,
                     headers={"X-Auth-Request-User": "li@studio"}, follow_redirects=False)
    assert ok.status_code == 303
    text = StorageLayout(night / "storage").overrides_path(NIGHT, SLUG).read_text()
    assert yaml.safe_load(text)[image_id("pose-002")]["by"] == "li@studio"


def test_the_launcher_reports_a_down_webserver_within_its_timeout():
    launcher = DagsterLauncher(f"http://127.0.0.1:{free_port()}", timeout_s=3)
    result = launcher.launch(SLUG, NIGHT, "maria", image_id("pose-002"))
    assert result.run_id is None and "/graphql" in result.error


def test_partition_links_point_at_the_grid():
    assert partition_review_url("http://127.0.0.1:3100/", NIGHT, SLUG) == f"http://127.0.0.1:3100{GRID}"


def test_the_review_deployment_validates_and_runs_the_cli_with_settings_it_reads():
    import kubernetes_validate

    from hydra_assets.settings import load_settings

    documents = list(yaml.safe_load_all((Path(__file__).resolve().parents[1] / "deploy" / "review.yaml").read_text()))
    assert [d["kind"] for d in documents] == ["Deployment", "Service"]
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    [container] = documents[0]["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["hydra", "review"]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = load_settings(env)
    assert (settings.env, settings.dagster_url, settings.review_user_header) == (
        "cluster", "http://hydra-dagster-webserver:80", "X-Forwarded-User")
    assert ReviewConfig.from_settings(settings).require_user_header


def test_the_file_index_follows_the_manifest(client, night):
    url = f"{GRID}/images/{image_id('pose-002')}/thumb.jpg"
    assert client.get(url).status_code == 200
    folder = StorageLayout(night / "storage").generated_dir(NIGHT, SLUG)
    manifest = read_json(folder / "manifest.json")
    manifest["images"] = [e for e in manifest["images"] if e["image_id"] != image_id("pose-002")]
    manifest["note"] = "rewritten"  # a different size even within the same mtime tick
    atomic_write_json(folder / "manifest.json", manifest)
    assert client.get(url).status_code == 404
