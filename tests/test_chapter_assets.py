"""Chapter assets end to end on the embedded backends: bundle, incremental rebuilds, failures."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import soundfile as sf

from hydra_assets.chapters.bundle import METADATA_FILE, RETIRING, repair_interrupted_swap, swap_in
from hydra_assets.definitions import local_resources
from hydra_assets.domain.demo_chapter import DEMO_CHAPTER, DEMO_SCRIPT, write_demo_chapter
from hydra_assets.domain.demo_data import DEMO_QUEENS, write_demo_data
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.demo_dialogue import write_demo_dialogue
from hydra_assets.domain.storage import sha256_file
from resources.alerts import WebhookNotifier
from resources.chapters import ChapterScripts
from resources.voice import EspeakBackend, VoiceBackend, VoiceLineError
from tests.helpers import hydra_definitions, temp_settings
from tests.test_alert_sensors import WebhookServer

SLUGS = [q.slug for q in DEMO_QUEENS]
QUEEN_JOBS = ("queen_reference_job", "queen_voice_job")
CHAPTER_ASSETS = ("chapter_script", "chapter_dialogue", "scene_images", "chapter_bundle")


class FailingOn(EspeakBackend):
    """eSpeak, except that lines containing ``marker`` fail the way a TTS server's 4xx does."""

    marker: str

    def synthesize_one(self, setup, params):
        if self.marker in params["text"]:
            raise VoiceLineError(f"test backend refuses lines containing {self.marker!r}")
        return super().synthesize_one(setup, params)


class Studio:
    """Demo queens with references, identity, profile and voice lines; chapters built on top."""

    def __init__(self, root: Path, instance: dg.DagsterInstance):
        self.root, self.instance = root, instance
        self.chapters = root / "chapters"
        self.chapters.mkdir()
        write_demo_data(root / "roster", root / "storage" / "reference_images")
        write_demo_dialogue(root / "roster")
        self.resources = {**local_resources(temp_settings(root)),
                          "chapter_scripts": ChapterScripts(chapters_dir=str(self.chapters))}
        self.defs = hydra_definitions(root)
        instance.add_dynamic_partitions("queens", SLUGS)
        for slug in SLUGS:
            for job in QUEEN_JOBS:
                result = self.defs.resolve_job_def(job).execute_in_process(partition_key=slug, instance=instance)
                assert result.success

    def write(self, chapter: str, text: str) -> Path:
        path = self.chapters / f"{chapter}.md"
        path.write_text(text)
        return path

    def build(self, chapter: str, *, voice: VoiceBackend | None = None, webhook_url: str | None = None,
              variator=None, raise_on_error: bool = True):
        if chapter not in self.instance.get_dynamic_partitions("chapters"):
            self.instance.add_dynamic_partitions("chapters", [chapter])
        assets = [a for a in self.defs.assets if isinstance(a, dg.AssetsDefinition) and a.key.path[-1] in CHAPTER_ASSETS]
        resources = {**self.resources, **({"voice": voice} if voice else {}),
                     **({"webhook": WebhookNotifier(url=webhook_url)} if webhook_url else {}),
                     **({"dialogue_variator": variator} if variator else {})}
        return dg.materialize(assets, partition_key=chapter, resources=resources, instance=self.instance,
                              raise_on_error=raise_on_error)

    def bundle(self, chapter: str) -> Path:
        return self.root / "storage" / "chapters" / chapter

    def metadata(self, chapter: str) -> dict:
        return json.loads((self.bundle(chapter) / METADATA_FILE).read_text())


def asset_metadata(result, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with dg.instance_for_test() as instance:
        yield Studio(tmp_path_factory.mktemp("studio"), instance)


@pytest.mark.slow
def test_demo_chapter_bundle_is_complete_and_metadata_matches_the_files(studio):
    write_demo_chapter(studio.chapters)
    started = time.perf_counter()
    with WebhookServer() as webhook:
        result = studio.build(DEMO_CHAPTER, webhook_url=webhook.url)
    print(f"demo chapter built in {time.perf_counter() - started:.2f}s")
    [body] = webhook.bodies
    assert body["text"].startswith("*Chapter 1 assets ready*") and "10 lines" in body["text"]
    assert body["hydra"]["event"] == "chapter_ready" and body["hydra"]["lines"] == 10
    folder = studio.bundle(DEMO_CHAPTER)
    meta = studio.metadata(DEMO_CHAPTER)
    assert (folder / "script.md").read_text() == DEMO_SCRIPT
    assert [s["id"] for s in meta["scenes"]] == ["arrival", "deck"]
    assert len(meta["lines"]) == 10 and {line["speaker"] for line in meta["lines"]} == {"narrator", "player", *SLUGS}
    assert [line["file"] for line in meta["lines"]] == [f"audio/dialogue_{n:03d}.wav" for n in range(1, 11)]
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {METADATA_FILE}
    assert on_disk == set(meta["files"])
    for name, entry in meta["files"].items():
        assert sha256_file(folder / name) == entry["sha256"], name
    for line in meta["lines"]:
        info = sf.info(folder / line["file"])
        assert line["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-3)
        assert line["duration"] > 0.5 and line["sha256"] == meta["files"][line["file"]]["sha256"]
        data, rate = sf.read(folder / line["file"])
        assert np.sqrt(np.mean(data**2)) > 0.01  # speech, not silence
    for scene in meta["scenes"]:
        if scene["image"] is not None:
            assert scene["image"]["file"] == f"images/scene_{scene['number']:02d}_{scene['id']}.png"
            assert scene["image"]["sha256"] == meta["files"][scene["image"]["file"]]["sha256"]
    assert meta["totals"]["images"] + len(meta["missing"]) == 2
    assert body["hydra"]["missing"] == meta["missing"] and body["hydra"]["images"] == meta["totals"]["images"]
    lineage = asset_metadata(result, "chapter_script")["cast_lineage"]
    for slug in SLUGS:
        assert lineage[slug]["roster_sha256"] == sha256_file(studio.root / "roster" / f"{slug}.yaml")
        assert lineage[slug]["profile_data_version"]  # the queen_profile materialization this chapter saw
    assert meta["cast_lineage"] == lineage
    dialogue = asset_metadata(result, "chapter_dialogue")
    # Nova's "Good morning..." line is the same text and voice as her voice_lines greeting.
    assert dialogue["shared_with_voice_lines"] == 1 and dialogue["new"] == 9
    # Scene candidates are kept beside the chosen one.
    selection = json.loads((studio.root / "storage/assets/chapters" / DEMO_CHAPTER / "images/selection.json").read_text())
    assert all(len(ids) == 3 for ids in selection["candidates"].values())
    for scene in meta["scenes"]:
        scores = {i: selection["scores"][i] for i in selection["candidates"][scene["id"]]}
        passing = {i: v["composite"] for i, v in scores.items() if v["passed"]}
        chosen = scene["image"]["image_id"] if scene["image"] else None
        assert chosen == (max(passing, key=passing.get) if passing else None)
        assert all((v["reason"] is None) == v["passed"] for v in scores.values())
    # The line's emotion reaches the backend: eSpeak's request is the one it plans for that emotion.
    manifest = json.loads((studio.root / "storage/assets/chapters" / DEMO_CHAPTER / "dialogue/manifest.json").read_text())
    calm = manifest["lines"]["arrival-04"]
    voice = EspeakBackend()
    line = DialogueLine(id="arrival-04", text=calm["params"]["text"], level=1, emotion="calm")
    assert calm["params"] == voice.line_params(calm["voice"], line, "en")
    assert calm["params"] != voice.line_params(calm["voice"], line.model_copy(update={"emotion": "neutral"}), "en")


@pytest.mark.slow
def test_editing_one_line_revoices_only_that_line(studio):
    studio.write("edit-one", DEMO_SCRIPT)
    studio.build("edit-one")
    before = studio.metadata("edit-one")
    edited = DEMO_SCRIPT.replace("About forty minutes", "About fifty minutes")
    studio.write("edit-one", edited)
    started = time.perf_counter()
    result = studio.build("edit-one")
    print(f"rebuilt after a one-line edit in {time.perf_counter() - started:.2f}s")
    dialogue = asset_metadata(result, "chapter_dialogue")
    assert dialogue["synthesized"] == ["deck-04"] and dialogue["reused"] == 9
    assert asset_metadata(result, "scene_images")["new"] == 0
    after = studio.metadata("edit-one")
    changed = [b["id"] for b, a in zip(before["lines"], after["lines"]) if b["sha256"] != a["sha256"]]
    assert changed == ["deck-04"]
    assert after["lines"][8]["text"] == "About fifty minutes, if the wind stays with us."
    assert (studio.bundle("edit-one") / "script.md").read_text() == edited


@pytest.mark.slow
def test_the_same_words_in_the_same_voice_are_synthesised_once(studio):
    # Words no other chapter of this module says: made here once (the studio shares its voice index).
    said = "**player** (calm): It was a long way round the headland."
    twice = DEMO_SCRIPT.replace("**player** (2): How long until we reach the first buoy?", said).replace(
        "**player** (calm): It was. Thank you for waiting for me.", said
    )
    studio.write("said-twice", twice)
    dialogue = asset_metadata(studio.build("said-twice"), "chapter_dialogue")
    meta = studio.metadata("said-twice")
    assert "deck-03" not in dialogue["synthesized"] and "arrival-03" in dialogue["synthesized"]
    assert meta["lines"][2]["sha256"] == meta["lines"][7]["sha256"]


@pytest.mark.slow
def test_removed_scene_leaves_the_new_bundle(studio):
    studio.write("two-scenes", DEMO_SCRIPT)
    studio.build("two-scenes")
    assert any(p.name.startswith("scene_02_deck") for p in (studio.bundle("two-scenes") / "images").iterdir()) or \
        studio.metadata("two-scenes")["scenes"][1]["image"] is None
    studio.write("two-scenes", DEMO_SCRIPT[: DEMO_SCRIPT.index("## deck")])
    studio.build("two-scenes")
    meta = studio.metadata("two-scenes")
    folder = studio.bundle("two-scenes")
    assert [s["id"] for s in meta["scenes"]] == ["arrival"] and len(meta["lines"]) == 5
    assert not any("deck" in p.name for p in folder.rglob("*"))
    assert sorted(p.name for p in (folder / "audio").iterdir()) == [f"dialogue_{n:03d}.wav" for n in range(1, 6)]
    assert not list(folder.parent.glob(".*two-scenes*"))  # no staging or retired folder left behind


@pytest.mark.slow
def test_failed_line_leaves_the_previous_bundle_in_place(studio):
    studio.write("fails", DEMO_SCRIPT)
    studio.build("fails")
    folder = studio.bundle("fails")
    before = {p.relative_to(folder): sha256_file(p) for p in folder.rglob("*") if p.is_file()}
    studio.write("fails", DEMO_SCRIPT.replace("Then let us be on our way.", "Then let us be on our way, quickly."))
    result = studio.build("fails", voice=FailingOn(marker="quickly"), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "deck-05" in str(failure.event_specific_data.error) and "previous chapter bundle stays" in str(failure.event_specific_data.error)
    after = {p.relative_to(folder): sha256_file(p) for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert not any(e.asset_key == dg.AssetKey("chapter_bundle") for e in result.get_asset_materialization_events())
    # A bundle materialized on its own refuses to ship dialogue older than the script.
    with pytest.raises(dg.Failure, match="no audio|not made from the current chapter_script"):
        from hydra_assets.chapters.bundle import chapter_bundle
        chapter_bundle(dg.build_asset_context(partition_key="fails", instance=studio.instance),
                       storage=studio.resources["storage"], webhook=studio.resources["webhook"])
    assert {p.relative_to(folder): sha256_file(p) for p in folder.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_scene_without_a_passing_image_is_reported_missing(studio):
    extra = "\n## quay: The empty quay\nSetting: An empty quay at night.\nQueens: none\n\n**narrator**: Nobody was there.\n"
    with WebhookServer() as webhook:
        studio.write("with-quay", DEMO_SCRIPT + extra)
        result = studio.build("with-quay", webhook_url=webhook.url)
    meta = studio.metadata("with-quay")
    # The demo renderer derives from a queen's references: a scene without queens gets no image.
    assert meta["scenes"][2]["image"] is None and "scene quay: no image passed the quality gate" in meta["missing"]
    assert meta["lines"][-1]["text"] == "Nobody was there." and len(meta["lines"]) == 11
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "every_scene_has_image"]
    assert not check.passed
    [body] = webhook.bodies
    assert "missing: scene quay: no image passed the quality gate" in body["text"]


@pytest.mark.slow
def test_an_ask_line_is_voiced_from_the_llm_variation_and_cached(studio):
    from resources.llm import OpenAIDialogueVariator
    from tests.http_server import ScriptedServer
    from tests.test_llm import ROUTE, chat_app

    asked = DEMO_SCRIPT.replace("**player** (calm): It was. Thank you for waiting for me.\n",
                                "**player** (calm): It was. Thank you for waiting for me.\n~ ask: make it warmer\n")
    studio.write("asked", asked)
    with ScriptedServer() as server:
        server.script(ROUTE, chat_app(lambda body: "It really was. Thank you so much for waiting."))
        variator = OpenAIDialogueVariator(base_url=server.url, timeout_s=2, backoff_base_s=0.05, backoff_cap_s=0.1)
        first = studio.build("asked", variator=variator)
        line = studio.metadata("asked")["lines"][2]
        assert (line["text"], line["script_text"], line["text_source"]) == (
            "It really was. Thank you so much for waiting.", "It was. Thank you for waiting for me.", "llm")
        assert "arrival-03" in asset_metadata(first, "chapter_dialogue")["synthesized"]
        again = studio.build("asked", variator=variator)
        assert len(server.hits(ROUTE)) == 1  # the variation is cached by content key
        assert asset_metadata(again, "chapter_dialogue")["synthesized"] == []
    # Without an endpoint the writer's line is voiced.
    studio.build("asked")
    line = studio.metadata("asked")["lines"][2]
    assert (line["text"], line["text_source"]) == ("It was. Thank you for waiting for me.", "writer")


def test_swap_replaces_the_whole_folder_and_an_interrupted_swap_is_repaired(tmp_path):
    live, staged = tmp_path / "chapter-01", tmp_path / ".building-chapter-01-x"
    (live / "audio").mkdir(parents=True)
    (live / "audio" / "dialogue_009.wav").write_bytes(b"old")
    staged.mkdir()
    (staged / "metadata.json").write_text("{}")
    swap_in(staged, live)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chapter-01"]
    assert [p.name for p in live.iterdir()] == ["metadata.json"]
    # A crash between the two renames: no live folder, the old one under its retiring name.
    os.rename(live, tmp_path / f"{RETIRING}chapter-01-abcd1234")
    (tmp_path / ".building-chapter-01-half").mkdir()
    repair_interrupted_swap(live)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chapter-01"] and (live / "metadata.json").is_file()
