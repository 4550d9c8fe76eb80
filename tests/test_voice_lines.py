"""voice_lines end to end: files, manifest, incremental reuse, checks, catalog rows, failures."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import dagster as dg
import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import sqlalchemy as sa
import yaml
from scipy.signal import resample_poly

from hydra_assets.domain.demo_data import DEMO_QUEENS
from hydra_assets.domain.demo_dialogue import DEMO_DIALOGUE, write_demo_dialogue
from hydra_assets.domain.storage import sha256_file
from hydra_assets.queen_profile import queen_profile
from hydra_assets.voice import VoiceLinesConfig, voice_lines
from resources.catalog import CatalogResource
from resources.storage import HydraStorage
from resources.voice import EspeakBackend, GptSovitsBackend, KokoroBackend
from tests.voice_servers import VoiceTestServer, tone_wav

SLUG = "nova-sterling"
CHECKS = (
    "dialogue_valid", "every_line_has_audio", "audio_not_empty", "audio_not_silent", "duration_plausible",
    "loudness_on_target",
)


def measured_loudness(path: Path) -> tuple[float, float]:
    """Integrated LUFS (pyloudnorm, BS.1770) and 4x-oversampled true peak (dBTP) of a WAV on disk."""
    samples, rate = sf.read(str(path), dtype="float64")
    lufs = pyloudnorm.Meter(rate).integrated_loudness(samples)
    true_peak = 20 * np.log10(np.max(np.abs(resample_poly(samples, 4, 1))))
    return float(lufs), float(true_peak)


class Pipeline:
    """A roster, a storage root and a catalog under tmp_path, and one Dagster instance."""

    def __init__(self, tmp_path: Path, instance: dg.DagsterInstance):
        self.tmp = tmp_path
        self.instance = instance
        self.roster = tmp_path / "roster"
        self.roster.mkdir()
        self.storage = HydraStorage(root=str(tmp_path / "storage"), roster_dir=str(self.roster))
        self.catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
        self.voice_dir = tmp_path / "storage" / "assets" / "voice" / SLUG
        instance.add_dynamic_partitions("queens", [SLUG])

    def write_queen(self, **voice_dna) -> None:
        [demo] = [q for q in DEMO_QUEENS if q.slug == SLUG]
        roster = {**demo.roster, "voice_dna": {**demo.roster["voice_dna"], **voice_dna}}
        (self.roster / f"{SLUG}.yaml").write_text(yaml.safe_dump(roster))

    def write_dialogue(self, lines: list[dict]) -> None:
        (self.roster / f"{SLUG}.dialogue.yaml").write_text(yaml.safe_dump({"lines": lines}))

    def resources(self, voice) -> dict:
        return {"storage": self.storage, "catalog": CatalogResource(url=self.catalog_url), "voice": voice}

    def run(self, voice, *, profile: bool = False, config: dict | None = None) -> dg.MaterializeResult:
        """Invoke the assets directly (fast); ``materialize`` goes through a real run."""
        resources = self.resources(voice)
        if profile:
            queen_profile(self.context(), storage=resources["storage"], catalog=resources["catalog"])
        return voice_lines(self.context(), config=VoiceLinesConfig(**(config or {})), **resources)

    def context(self) -> dg.AssetExecutionContext:
        return dg.build_asset_context(partition_key=SLUG, instance=self.instance)

    def materialize(self, voice, *, profile: bool = False, config: dict | None = None, raise_on_error: bool = True):
        resources = self.resources(voice)
        return dg.materialize(
            [queen_profile, voice_lines] if profile else [voice_lines],
            partition_key=SLUG,
            resources=resources,
            instance=self.instance,
            run_config={"ops": {"voice_lines": {"config": config}}} if config else None,
            raise_on_error=raise_on_error,
        )

    def manifest(self) -> dict:
        return json.loads((self.voice_dir / "manifest.json").read_text())

    def query(self, sql: str) -> list[tuple]:
        engine = sa.create_engine(self.catalog_url)
        with engine.connect() as connection:
            rows = [tuple(r) for r in connection.execute(sa.text(sql)).all()]
        engine.dispose()
        return rows


def metadata(result) -> dict:
    """Metadata of a run's voice_lines materialization, or of a directly invoked result."""
    if isinstance(result, dg.MaterializeResult):
        raw = result.metadata or {}
    else:
        [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("voice_lines")]
        raw = event.materialization.metadata
    return {k: getattr(v, "value", v) for k, v in raw.items()}


def evaluations(result) -> list:
    if isinstance(result, dg.MaterializeResult):
        return list(result.check_results or [])
    return result.get_asset_check_evaluations()


def checks(result) -> dict[str, bool]:
    return {c.check_name: c.passed for c in evaluations(result)}


@pytest.fixture(scope="module")
def instance():
    """One instance for the module: each test has its own roster, storage and catalog."""
    with dg.instance_for_test() as shared:
        yield shared


@pytest.fixture
def pipeline(tmp_path, instance):
    return Pipeline(tmp_path, instance)


def test_espeak_lines_are_written_checked_and_redone_incrementally(pipeline, capsys):
    pipeline.write_queen()
    write_demo_dialogue(pipeline.roster)
    demo_ids = [line["id"] for line in DEMO_DIALOGUE[SLUG]]

    first = pipeline.materialize(EspeakBackend(), profile=True)
    meta = metadata(first)
    assert (meta["synthesized"], meta["reused"], meta["failed"]) == (len(demo_ids), 0, 0)
    assert checks(first) == dict.fromkeys(CHECKS, True)
    assert meta["backend"].startswith("espeak-ng-") and 0 < meta["realtime_factor"] < 1
    manifest = pipeline.manifest()
    assert sorted(manifest["lines"]) == sorted(demo_ids)
    for line_id, entry in manifest["lines"].items():
        path = pipeline.voice_dir / f"{line_id}.wav"
        info = sf.info(str(path))
        assert (info.channels, info.subtype, info.samplerate) == (1, "PCM_16", entry["sample_rate"])
        assert entry["sha256"] == sha256_file(path) and entry["duration"] == pytest.approx(info.duration, abs=1e-3)
        lufs, true_peak = measured_loudness(path)
        assert lufs == pytest.approx(-23.0, abs=1.0) and true_peak <= -1.0, (line_id, lufs, true_peak)
        assert entry["loudness_lufs"] == pytest.approx(lufs, abs=0.01)
        assert entry["true_peak_dbtp"] == pytest.approx(true_peak, abs=0.1)
    assert meta["total_audio_seconds"] == pytest.approx(sum(e["duration"] for e in manifest["lines"].values()), abs=0.01)
    assert not list(pipeline.voice_dir.glob(".*.tmp")), "no temp files left behind"
    before = {p.name: p.stat().st_mtime_ns for p in pipeline.voice_dir.glob("*.wav")}

    # Change one line's text, delete another: exactly one line is synthesised, one reported removed.
    lines = [dict(line) for line in DEMO_DIALOGUE[SLUG] if line["id"] != "question"]
    [weather] = [line for line in lines if line["id"] == "weather"]
    weather["text"] = "The forecast says light rain after four o'clock."
    lines[0]["level"] = 5  # a tag only: the audio is reused
    pipeline.write_dialogue(lines)
    second = pipeline.materialize(EspeakBackend())
    meta = metadata(second)
    counts = {k: meta[k] for k in ("synthesized", "reused", "failed")}
    with capsys.disabled():
        print(f"\nincremental re-materialize: {counts}, removed {meta['removed_lines']}")
    assert counts == {"synthesized": 1, "reused": len(demo_ids) - 2, "failed": 0}
    assert meta["removed_lines"] == ["question"]
    assert checks(second) == dict.fromkeys(CHECKS, True)
    after = {p.name: p.stat().st_mtime_ns for p in pipeline.voice_dir.glob("*.wav")}
    assert (pipeline.voice_dir / "question.wav").exists(), "a removed line's file is kept"
    assert {n for n in after if after[n] != before[n]} == {"weather.wav"}
    manifest = pipeline.manifest()
    assert manifest["removed"] == ["question"]
    assert manifest["lines"]["weather"]["text"] == weather["text"]
    assert manifest["lines"][lines[0]["id"]]["level"] == 5

    # Catalog: one voice model row, one row per line, the queen's count of good lines.
    assert pipeline.query("select model_type, status from voice_models") == [("espeak", "ready")]
    assert pipeline.query("select voice_line_count from queens") == [(len(demo_ids) - 1,)]
    rows = pipeline.query("select file_path, approved, prompt_used from generated_assets where asset_type='voice_line'")
    assert len(rows) == len(demo_ids) and all(approved for _, approved, _ in rows)
    assert (str(pipeline.voice_dir / "weather.wav"), 1, weather["text"]) in rows


def test_damaged_or_deleted_files_are_synthesised_again(pipeline):
    pipeline.write_queen()
    pipeline.write_dialogue(DEMO_DIALOGUE[SLUG][:3])
    pipeline.run(EspeakBackend(), profile=True)
    first, second, third = (line["id"] for line in DEMO_DIALOGUE[SLUG][:3])
    (pipeline.voice_dir / f"{first}.wav").write_bytes(b"<html>not audio</html>")
    (pipeline.voice_dir / f"{second}.wav").unlink()
    meta = metadata(pipeline.run(EspeakBackend()))
    assert (meta["synthesized"], meta["reused"]) == (2, 1)
    assert sf.info(str(pipeline.voice_dir / f"{first}.wav")).subtype == "PCM_16"
    assert metadata(pipeline.run(EspeakBackend(), config={"resynthesize": True}))["synthesized"] == 3
    # Another voice setting is another key: every line is redone.
    pipeline.write_queen(pitch="high")
    meta = metadata(pipeline.run(EspeakBackend(), profile=True))
    assert (meta["synthesized"], meta["reused"]) == (3, 0)


def test_http_backend_lines_one_refused_one_not_audio_the_rest_written(pipeline):
    clip = pipeline.tmp / "refs" / "nova.wav"
    clip.parent.mkdir()
    clip.write_bytes(tone_wav(4.0, 32000))
    pipeline.write_queen(reference_clips=[str(clip)])
    lines = [
        {"id": "hello", "text": "Hello, nice to meet you.", "level": 0, "emotion": "neutral"},
        {"id": "refused", "text": "Please say zzyzx for me.", "level": 0, "emotion": "neutral"},
        {"id": "bye", "text": "See you tomorrow morning.", "level": 1, "emotion": "calm", "speed": 1.2},
    ]
    pipeline.write_dialogue(lines)
    with VoiceTestServer("gpt-sovits") as server:
        server.knobs.reject_text = "zzyzx"
        backend = GptSovitsBackend(url=server.url, backoff_base_s=0.01, backoff_cap_s=0.02, seed=7)
        result = pipeline.run(backend, profile=True)
        meta = metadata(result)
        assert (meta["synthesized"], meta["failed"]) == (2, 1)
        assert checks(result) == {**dict.fromkeys(CHECKS, True), "every_line_has_audio": False}
        assert not (pipeline.voice_dir / "refused.wav").exists()
        manifest = pipeline.manifest()
        assert sorted(manifest["lines"]) == ["bye", "hello"]
        hello = manifest["lines"]["hello"]
        assert hello["sample_rate"] == 32000 and hello["backend"] == "gpt-sovits-api-v2"
        assert hello["duration"] < hello["source_duration"] - 0.4, "server's leading/trailing silence is trimmed"
        assert hello["params"]["seed"] == 7 and hello["params"]["ref_audio_path"] == str(clip)

        # A body that is HTML instead of audio: rejected, nothing written, the old lines kept.
        server.knobs.reject_text = None
        server.knobs.body = "html"
        pipeline.write_dialogue([*lines, {"id": "new", "text": "One more line.", "level": 2, "emotion": "neutral"}])
        result = pipeline.run(backend)
        meta = metadata(result)
        assert (meta["synthesized"], meta["reused"], meta["failed"]) == (0, 2, 2)
        assert not (pipeline.voice_dir / "new.wav").exists() and sorted(pipeline.manifest()["lines"]) == ["bye", "hello"]
        assert "not a RIFF/WAVE file: got HTML" in meta["lines"]
    [(clips, seconds, status)] = pipeline.query("select reference_clips, total_reference_duration, status from voice_models")
    assert json.loads(clips) == [str(clip)] and seconds == pytest.approx(4.65, abs=0.01) and status == "ready"
    assert pipeline.query("select seed from generated_assets") == [(7,), (7,)]


def test_checks_catch_silent_and_implausibly_long_audio(pipeline):
    clip = pipeline.tmp / "nova.wav"
    clip.write_bytes(tone_wav(4.0, 32000))
    pipeline.write_queen(reference_clips=[str(clip)])
    pipeline.write_dialogue([{"id": "short", "text": "Yes.", "level": 0, "emotion": "neutral"}])
    with VoiceTestServer("gpt-sovits") as server:
        server.knobs.silent = True
        server.knobs.tone_seconds = 20.0
        result = pipeline.run(GptSovitsBackend(url=server.url), profile=True)
    assert checks(result) == {
        **dict.fromkeys(CHECKS, True), "audio_not_silent": False, "duration_plausible": False,
        "loudness_on_target": False,
    }
    [loudness] = [c for c in evaluations(result) if c.check_name == "loudness_on_target"]
    assert "line short: silent: no 400 ms block above BS.1770's -70 LUFS gate" in loudness.description
    assert pipeline.manifest()["lines"]["short"]["loudness_lufs"] is None
    assert pipeline.query("select approved, rejection_reason from generated_assets") == [(0, "silent")]
    assert pipeline.query("select voice_line_count from queens") == [(0,)]


def test_unreachable_backend_fails_the_run_and_keeps_every_file(pipeline):
    pipeline.write_queen()
    pipeline.write_dialogue(DEMO_DIALOGUE[SLUG][:2])
    pipeline.run(EspeakBackend(), profile=True)
    before = {p.name: sha256_file(p) for p in pipeline.voice_dir.iterdir()}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(dg.Failure) as failure:
        pipeline.run(KokoroBackend(url=f"http://127.0.0.1:{port}", max_retries=0))
    assert f"127.0.0.1:{port}/v1/audio/speech: cannot connect" in failure.value.description
    assert "run again once the backend works" in failure.value.description
    after = {p.name: sha256_file(p) for p in pipeline.voice_dir.iterdir() if p.name != "manifest.json"}
    assert after == {k: v for k, v in before.items() if k != "manifest.json"}
    assert sorted(pipeline.manifest()["lines"]) == sorted(line["id"] for line in DEMO_DIALOGUE[SLUG][:2])


def test_bad_and_missing_dialogue(pipeline):
    pipeline.write_queen()
    fine = {"id": "fine", "text": "This line is fine.", "level": 0, "emotion": "neutral"}
    odd = {"id": "odd", "text": "This one is not.", "level": 0, "emotion": "calm"}
    pipeline.write_dialogue([fine, odd])
    assert metadata(pipeline.run(EspeakBackend(), profile=True))["synthesized"] == 2
    pipeline.write_dialogue([fine, {**odd, "emotion": "ecstatic"}])
    result = pipeline.run(EspeakBackend())
    meta = metadata(result)
    assert (meta["line_count"], meta["invalid_lines"], meta["synthesized"], meta["reused"]) == (1, 1, 0, 1)
    assert (pipeline.voice_dir / "odd.wav").exists()
    [evaluation] = [c for c in evaluations(result) if c.check_name == "dialogue_valid"]
    assert not evaluation.passed and "line odd: emotion: unknown emotion 'ecstatic'" in evaluation.description
    assert meta["removed_lines"] == []

    (pipeline.roster / f"{SLUG}.dialogue.yaml").unlink()
    result = pipeline.run(EspeakBackend())
    [evaluation] = [c for c in evaluations(result) if c.check_name == "dialogue_valid"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "no dialogue file" in evaluation.description
    assert metadata(result)["removed_lines"] == ["fine", "odd"] and (pipeline.voice_dir / "fine.wav").exists()

    (pipeline.roster / f"{SLUG}.dialogue.yaml").write_text("lines: [oops\n")
    with pytest.raises(dg.Failure, match="dialogue.yaml: is not valid YAML at line 2"):
        pipeline.run(EspeakBackend())
    assert (pipeline.voice_dir / "fine.wav").exists()


def test_voice_lines_asset_is_tagged_for_the_voice_synthesis_gpu():
    assert voice_lines.op.tags["hydra/workload"] == "voice-synthesis"
    assert voice_lines.op.pool == "gpu-3060"
    assert [spec.name for spec in voice_lines.check_specs] == list(CHECKS)


def test_voice_lines_on_the_cluster_ask_for_a_gpu_only_when_the_model_runs_in_the_pod():
    from hydra_assets.definitions import build_definitions, cluster_resources, local_resources

    def voice_node(resources):
        defs = build_definitions(resources, env="cluster")
        return defs.resolve_implicit_global_asset_job_def().graph.node_named("voice_lines")

    remote = voice_node(cluster_resources())  # GPT-SoVITS: the model runs in the TTS server's pod
    assert remote.tags["hydra/workload"] == "voice-synthesis-remote" and remote.definition.pool == "voice-tts"
    pod = json.loads(remote.tags["dagster-k8s/config"])
    assert "nvidia.com/gpu" not in pod["container_config"]["resources"]["limits"]
    assert "node_selector" not in pod.get("pod_spec_config", {})
    assert "GPU" in pod["pod_template_spec_metadata"]["annotations"]["hydra.io/workload-reason"]
    in_pod = voice_node(local_resources())  # eSpeak: the synthesis runs in the step's own process
    assert in_pod.tags["hydra/workload"] == "voice-synthesis" and in_pod.definition.pool == "gpu-3060"
    assert json.loads(in_pod.tags["dagster-k8s/config"])["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("target", [-23.0, -18.0])
def test_every_line_is_on_the_loudness_target_measured_on_the_wav(pipeline, target):
    pipeline.write_queen()
    lines = [*DEMO_DIALOGUE[SLUG], {"id": "short", "text": "Yes.", "level": 0, "emotion": "neutral", "speed": 2.0}]
    pipeline.write_dialogue(lines)
    result = pipeline.run(EspeakBackend(loudness_target_lufs=target), profile=True)
    assert checks(result) == dict.fromkeys(CHECKS, True)
    manifest = pipeline.manifest()
    assert manifest["lines"]["short"]["source_duration"] < 0.6
    for line in lines:
        path = pipeline.voice_dir / f"{line['id']}.wav"
        assert sf.info(str(path)).duration >= 0.4, "shorter than a BS.1770 block: padded so it can be measured"
        lufs, true_peak = measured_loudness(path)
        assert abs(lufs - target) <= 1.0 and true_peak <= -1.0, (line["id"], lufs, true_peak)
    assert {e["postprocess"]["loudness_target_lufs"] for e in manifest["lines"].values()} == {target}


def test_a_line_the_ceiling_keeps_off_target_fails_the_loudness_check(pipeline):
    pipeline.write_queen()
    pipeline.write_dialogue(DEMO_DIALOGUE[SLUG][:3])
    # -10 LUFS cannot be reached with peaks at -1 dBTP for speech: the ceiling wins, the check fails.
    result = pipeline.run(EspeakBackend(loudness_target_lufs=-10.0), profile=True)
    assert checks(result) == {**dict.fromkeys(CHECKS, True), "loudness_on_target": False}
    [evaluation] = [c for c in evaluations(result) if c.check_name == "loudness_on_target"]
    off_target = evaluation.metadata["off_target"].value
    assert sorted(off_target) == sorted(line["id"] for line in DEMO_DIALOGUE[SLUG][:3])
    assert "more than 1 LU from the -10 LUFS target" in evaluation.description
    for line_id in off_target:
        lufs, true_peak = measured_loudness(pipeline.voice_dir / f"{line_id}.wav")
        assert lufs < -11.0 and true_peak <= -0.95  # never clipped to reach the target
    assert {r for (r,) in pipeline.query("select rejection_reason from generated_assets")} == {"loudness_off_target"}


def test_a_line_with_the_same_key_is_shared_through_the_index_not_synthesised_again(pipeline):
    from hydra_assets.domain.voice_synthesis import Mastering, ReuseIndex, synthesize_lines
    from hydra_assets.domain.dialogue import DialogueLine
    from hydra_assets.domain.roster import VoiceDNA

    pipeline.write_queen()
    pipeline.write_dialogue(DEMO_DIALOGUE[SLUG][:2])
    pipeline.run(EspeakBackend(), profile=True)
    greeting = DEMO_DIALOGUE[SLUG][0]
    # What a chapter's dialogue does: its own ids and folder, the same voice and text.
    backend = EspeakBackend()
    [demo] = [q for q in DEMO_QUEENS if q.slug == SLUG]
    lines = [
        DialogueLine(id="dialogue_001", text=greeting["text"], level=3, emotion=greeting["emotion"]),
        DialogueLine(id="dialogue_002", text="A line no queen has said yet.", level=3, emotion="neutral"),
    ]
    plan = backend.plan(SLUG, VoiceDNA(**demo.roster["voice_dna"]), "en", lines)
    layout = pipeline.storage.layout
    out = pipeline.tmp / "storage" / "chapters" / "chapter-01" / "audio"
    outcome = synthesize_lines(
        backend, plan, {line.id: out / f"{line.id}.wav" for line in lines},
        mastering=Mastering(), index=ReuseIndex(layout.voice_index_dir(), layout.root),
    )
    shared, new = outcome.lines["dialogue_001"], outcome.lines["dialogue_002"]
    assert (shared.status, new.status) == ("reused", "new") and outcome.aborted is None
    assert shared.reused_from == str(pipeline.voice_dir / "greeting.wav")
    assert (out / "dialogue_001.wav").read_bytes() == (pipeline.voice_dir / "greeting.wav").read_bytes()
    assert shared.record["level"] == 3 and shared.record["file"] == "dialogue_001.wav"
    assert new.record["sha256"] == sha256_file(out / "dialogue_002.wav")
    # ... and the queen's next run finds the chapter's line in the index too.
    pipeline.write_dialogue([*DEMO_DIALOGUE[SLUG][:2], {"id": "unsaid", "text": lines[1].text, "level": 0, "emotion": "neutral"}])
    meta = metadata(pipeline.run(EspeakBackend()))
    assert (meta["synthesized"], meta["reused"]) == (0, 3)
