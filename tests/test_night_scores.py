"""night_scores: a night's images scored in one step across queens; image_scores then gates from its raw scores.

The images, manifest and identity are tests/test_quality_assets.py's (the generated_images contract);
the automation test stands in for the steps so it controls when each run ends.
"""

from __future__ import annotations

import json
import shutil
import threading

import dagster as dg
import numpy as np
import pandas as pd
import pytest

import resources.face
from hydra_assets.domain import quality
from hydra_assets.domain.raw_scores import raw_scores_path, status_path
from hydra_assets.domain.storage import atomic_write_json
from hydra_assets.partitions import QUEENS, nights_partitions, queen_night_key, queen_nights_partitions
from hydra_assets.quality import image_scores, night_scores
from resources.face import DlibFaceBackend
from resources.scoring import ClassicalTechnical, ImageStatsAestheticProxy
from tests.test_quality_assets import FACE, NIGHT, SLUG, check_reasons, image_id, metadata, scored_night  # noqa: F401

BROKEN = "ada-marlowe"


class UntouchableAesthetic(ImageStatsAestheticProxy):
    """The embedded aesthetic backend's identity, but scoring raises: proves nothing is scored."""

    def score_and_embed(self, images):
        raise AssertionError("image_scores scored an image night_scores had already scored")


class UntouchableTechnical(ClassicalTechnical):
    def score(self, images):
        raise AssertionError("image_scores scored an image night_scores had already scored")


class UntouchableFace(DlibFaceBackend):
    def embed_all_faces(self, images):
        raise AssertionError("image_scores looked for faces night_scores had already found")


@pytest.fixture
def fresh_night(scored_night, tmp_path):
    """The module's night (scored in-step once, by image_scores) copied without its score table,
    plus a second queen whose generated manifest is broken."""
    prepared, _, _ = scored_night
    root = tmp_path / "night"
    shutil.copytree(prepared, root)
    layout_root = root / "storage"
    in_step = pd.read_parquet(layout_root / "overnight" / NIGHT / "scores" / f"{SLUG}.parquet")
    (layout_root / "overnight" / NIGHT / "scores" / f"{SLUG}.parquet").unlink()
    broken = layout_root / "overnight" / NIGHT / "generated" / BROKEN / "manifest.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"queen": "ada-marlowe", "images": ')  # cut off mid-write
    from tests.test_quality_assets import quality_resources

    resources = quality_resources(root)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG, BROKEN])
        yield {"root": root, "resources": resources, "instance": instance, "in_step": in_step, "broken": broken}
    resources["catalog"].dispose()


def counting_loader(monkeypatch) -> list[tuple]:
    """Every call of dlib's model loader (the embedded profile's only model) from here on."""
    calls: list[tuple] = []
    real = resources.face.load_dlib_models

    def counted(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(resources.face, "load_dlib_models", counted)
    return calls


def test_one_broken_queen_is_reported_and_the_other_scored_then_gated_without_any_model(fresh_night, monkeypatch):
    night, layout_root = fresh_night, fresh_night["root"] / "storage"
    from hydra_assets.domain.storage import StorageLayout

    layout = StorageLayout(layout_root)
    loads = counting_loader(monkeypatch)
    result = dg.materialize([night_scores], partition_key=NIGHT, resources=night["resources"], instance=night["instance"])
    assert result.success, "one queen's broken manifest must not fail the night"
    meta = metadata(result, "night_scores")
    assert set(meta["failed_queens"]) == {BROKEN} and str(night["broken"]) in meta["failed_queens"][BROKEN]
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN and BROKEN in check.description
    status = json.loads(status_path(layout, NIGHT).read_text())
    assert status[BROKEN]["status"] == "failed" and status[SLUG]["status"] == "scored" and status[SLUG]["changed"]
    assert not raw_scores_path(layout, NIGHT, BROKEN).exists()
    raw = pd.read_parquet(raw_scores_path(layout, NIGHT, SLUG))
    readable = set(night["in_step"]["image_id"]) - {image_id("expression-002")}  # not a PNG: image_scores reports it
    assert set(raw.dropna(subset=[quality.AESTHETIC])["image_id"]) == readable
    assert status[SLUG]["unreadable"] == [image_id("expression-002")]
    assert len(loads) <= 1  # once per process at most (the module's in-step run may have loaded it already)

    # image_scores after night_scores: no model loaded, no backend touched, the in-step run's scores and decisions
    loads.clear()
    night["resources"].update(aesthetic=UntouchableAesthetic(), technical=UntouchableTechnical(),
                              face=UntouchableFace(upsample_times=FACE.upsample_times))
    gated = dg.materialize([image_scores], partition_key=queen_night_key(SLUG, NIGHT), resources=night["resources"],
                           instance=night["instance"])
    assert gated.success and loads == []
    gate_meta = metadata(gated, "image_scores")
    assert (gate_meta["scored"], gate_meta["from_night_scores"], gate_meta["reused"]) == (0, len(readable), len(readable))
    scores = pd.read_parquet(layout.scores_path(NIGHT, SLUG))
    check_reasons(scores)
    columns = ["image_id", *quality.SCORE_COLUMNS, "approved", "rejection_reason", "near_duplicate_of", "face_bbox"]
    pd.testing.assert_frame_equal(
        scores[columns].sort_values("image_id").reset_index(drop=True).astype(str),
        night["in_step"][columns].sort_values("image_id").reset_index(drop=True).astype(str),
    )
    assert all(np.allclose(a, b) for a, b in zip(scores.sort_values("image_id")["embedding"].dropna(),
                                                night["in_step"].sort_values("image_id")["embedding"].dropna()))


def test_a_rerun_scores_only_changed_images_and_image_scores_falls_back_for_a_left_out_queen(fresh_night):
    night = fresh_night
    from hydra_assets.domain.storage import StorageLayout

    layout = StorageLayout(night["root"] / "storage")
    run = lambda: metadata(  # noqa: E731
        dg.materialize([night_scores], partition_key=NIGHT, resources=night["resources"], instance=night["instance"]),
        "night_scores",
    )
    first = run()
    assert first["scored"] == 8
    again = run()
    assert (again["scored"], again["reused"]) == (0, 8) and not again["status"][SLUG]["changed"]
    # her identity changes (references re-processed): every face match is stale, so every image is rescored
    identity = layout.identity_dir(SLUG) / "identity.npz"
    with np.load(identity) as archive:
        mean = archive["mean"]
    np.savez(identity, mean=mean, note=np.array([1]))  # same vector, another file → a new identity hash
    third = run()
    assert third["scored"] == 8

    # a queen left out of the night batch (raw file gone) is still scored by image_scores itself
    raw_scores_path(layout, NIGHT, SLUG).unlink()
    gated = dg.materialize([image_scores], partition_key=queen_night_key(SLUG, NIGHT), resources=night["resources"],
                           instance=night["instance"])
    assert gated.success
    gate_meta = metadata(gated, "image_scores")
    assert (gate_meta["scored"], gate_meta["from_night_scores"]) == (8, 0)
    check_reasons(pd.read_parquet(layout.scores_path(NIGHT, SLUG)))


def test_automation_scores_the_night_once_after_both_queens_then_publishes_each(tmp_path):
    """night_scores' condition as the automation sensor evaluates it, against real runs of stand-in steps;
    then night_publish_sensor turns its materialization into one publish run per queen that needs one."""
    from tests.helpers import hydra_definitions

    defs = hydra_definitions(tmp_path)
    night = "2026-11-20"
    cursor: dict = {}
    bea_running, bea_may_finish = threading.Event(), threading.Event()

    def evaluate(instance) -> set[str | None]:
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets("night_scores"),
            cursor=cursor.get("last"),
        )
        cursor["last"] = result.cursor
        return set(result.get_requested_partitions(dg.AssetKey("night_scores")))

    @dg.asset(name="generated_images", partitions_def=queen_nights_partitions)
    def generation(context) -> None:
        if context.partition_key.keys_by_dimension["queen"] == "bea":
            bea_running.set()
            assert bea_may_finish.wait(timeout=60)

    def generate(instance, queen: str) -> None:
        assert dg.materialize([generation], partition_key=queen_night_key(queen, night), instance=instance).success

    status = {"ada": {"status": "scored", "changed": True}, "bea": {"status": "failed", "error": "bad manifest"},
              "cora": {"status": "scored", "changed": False}}

    @dg.asset(name="night_scores", partitions_def=nights_partitions)
    def scoring() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"status": dg.MetadataValue.json(status)})

    sensor = defs.resolve_sensor_def("night_publish_sensor")
    assert defs.resolve_sensor_def("quality_report_automation_sensor").asset_selection.resolve(
        defs.resolve_asset_graph()) == {dg.AssetKey("night_scores"), dg.AssetKey("quality_report")}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada", "bea", "cora"])
        started = sensor(dg.build_sensor_context(instance=instance))
        assert evaluate(instance) == set()
        bea = threading.Thread(target=generate, args=(instance, "bea"))
        bea.start()
        try:
            assert bea_running.wait(timeout=60)
            generate(instance, "ada")
            assert evaluate(instance) == set(), "not scored while a queen of the night is still generating"
        finally:
            bea_may_finish.set()
            bea.join(timeout=60)
        assert evaluate(instance) == {night}, "scored once both queens are generated"
        assert evaluate(instance) == set(), "not once per queen"

        assert dg.materialize([scoring], partition_key=night, instance=instance).success
        assert evaluate(instance) == set(), "its own materialization requests nothing"
        ticked = sensor(dg.build_sensor_context(instance=instance, cursor=started.cursor))
        requests = ticked.run_requests
        assert {r.partition_key.keys_by_dimension["queen"] for r in requests} == {"ada", "bea"}  # cora: unchanged
        assert {r.job_name for r in requests} == {"overnight_publish_job"}
        assert all(r.partition_key.keys_by_dimension["night"] == night for r in requests)
        assert not sensor(dg.build_sensor_context(instance=instance, cursor=ticked.cursor)).run_requests

        generate(instance, "ada")  # a morning re-generation of one queen scores the night once more
        assert evaluate(instance) == {night}
        assert evaluate(instance) == set()
