"""ComfyUIBackend against the real ComfyUI server (tests/comfy_real.py starts it) with
weight-free workflow templates; the SPEC and InstantID examples can only fail preflight there."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from PIL import Image

from hydra_assets.domain import generation as gen
from hydra_assets.domain import workflows as wf
from hydra_assets.domain.demo_data import DEMO_QUEENS, write_demo_queen
from hydra_assets.domain.images import process_reference_folder
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import StorageLayout, atomic_write_json
from hydra_assets.generation import generate_partition, generated_images
from hydra_assets.partitions import QUEENS, queen_night_key
from resources.catalog import CatalogResource
from resources.events import EventPublisher
from resources.image import ComfyUIBackend, ComfyUIPreflightError, upload_name
from resources.llm import TemplatePromptExpander
from resources.metrics import MetricsPusher
from resources.storage import HydraStorage
from tests.comfy_real import EMPTY_BATCH, FACE_SCALE, REPO, SCALED, SERVER_CHECKPOINT, SERVER_LORA, real_comfy, write_workflow  # noqa: F401

NOVA = Queen.model_validate(DEMO_QUEENS[0].roster)
NIGHT = "2026-11-20"


def backend(server, workflows: Path, **fields) -> ComfyUIBackend:
    settings = dict(
        base_url=server.url, workflows_dir=str(workflows), request_timeout_s=10.0, poll_interval_s=0.1,
        backoff_base_s=0.2, backoff_cap_s=1.0, image_timeout_s=600.0,
    )
    return ComfyUIBackend(**{**settings, **fields})


def plan(workflow: str, count: int, face: Path | None = None, size: int = 64, batch_size: int = 1, night: str = NIGHT):
    return gen.plan_night(
        queen=NOVA, night=night, counts={"portrait": count}, sampling=gen.Sampling(steps=1, width=size, height=size),
        model="none", backend="comfyui", generative=True, lora=None, reference_set_hash="r" * 64,
        workflows={"portrait": workflow}, batch_size=batch_size, face_reference=str(face) if face else None,
    )


def pattern(path: Path, seed: int, size: int = 64) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return pixels


def test_face_reference_is_uploaded_once_and_reaches_loadimage(real_comfy, tmp_path):
    name = write_workflow(tmp_path / "wf", "face-scale", FACE_SCALE)
    face = tmp_path / "face.png"
    expected = pattern(face, 7)
    client = backend(real_comfy, tmp_path / "wf")
    requests_ = plan(name, 2, face)
    results = list(client.generate(requests_))

    assert [r.error for r in results] == [None, None]
    uploaded = upload_name(face.read_bytes())
    assert (real_comfy.input_dir / uploaded).read_bytes() == face.read_bytes()  # named by its hash, bytes intact
    for result in results:
        assert np.abs(np.asarray(result.image, dtype=int) - expected.astype(int)).max() <= 1  # the face, through LoadImage
        graph = client.fill(client.template(name), result.request, {str(face): uploaded}).graph
        assert graph["1"]["inputs"]["image"] == uploaded
        assert result.details["workflow"] == {"name": name, "sha256": wf.canonical_sha256(graph)}
        assert result.details["model"] is None and result.details["loras"] == []  # this graph loads neither
        assert result.request.params["workflow"] == name
    before = (real_comfy.input_dir / uploaded).stat().st_mtime_ns

    again = list(client.generate(requests_))  # the same prompts again: ComfyUI serves them from its cache
    assert [r.error for r in again] == [None, None]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(results, again))
    assert (real_comfy.input_dir / uploaded).stat().st_mtime_ns == before  # not uploaded twice
    assert sorted(p.name for p in real_comfy.input_dir.glob("hydra-*")) == [uploaded]


def test_an_upload_never_overwrites_a_different_file(real_comfy, tmp_path):
    face = tmp_path / "face.png"
    pattern(face, 11)
    squatter = real_comfy.input_dir / upload_name(face.read_bytes())
    squatter.write_bytes(b"someone else's file")
    name = write_workflow(tmp_path / "wf", "face-scale", FACE_SCALE)
    [result] = list(backend(real_comfy, tmp_path / "wf").generate(plan(name, 1, face)))
    assert result.error is None
    assert squatter.read_bytes() == b"someone else's file"
    stored = [p for p in real_comfy.input_dir.glob(f"{squatter.stem}*") if p != squatter]
    assert len(stored) == 1 and stored[0].read_bytes() == face.read_bytes()


def test_batch_of_two_gives_two_images_each_with_its_own_manifest_line(real_comfy, tmp_path):
    name = write_workflow(tmp_path / "wf", "empty-batch", EMPTY_BATCH)
    requests_ = plan(name, 2, batch_size=2)
    run = generate_partition(requests_, tmp_path / "night", {"queen": NOVA.slug}, backend(real_comfy, tmp_path / "wf"))
    document = run.manifest.to_document()
    ids = [e["image_id"] for e in document["images"]]
    first, second = (r.image_id for r in requests_)
    assert ids == [first, f"{first}-o1", second, f"{second}-o1"] and document["failed"] == []
    assert [e.get("output_index", 0) for e in document["images"]] == [0, 1, 0, 1]
    assert len({e["file"] for e in document["images"]}) == 4
    for entry in document["images"]:
        assert (tmp_path / "night" / entry["file"]).is_file() and entry["params"]["batch_size"] == 2
        assert entry["details"]["output_node"] == "2" and entry["details"]["workflow"]["name"] == name
    rerun = generate_partition(requests_, tmp_path / "night", {"queen": NOVA.slug}, backend(real_comfy, tmp_path / "wf"))
    assert rerun.new == [] and len(rerun.manifest.to_document()["images"]) == 4  # every output reused


def test_spec_graph_fails_preflight_naming_checkpoint_and_lora_and_what_the_server_has(real_comfy, tmp_path):
    requests_ = gen.plan_night(
        queen=NOVA, night=NIGHT, counts={"portrait": 2}, sampling=gen.Sampling(steps=1, width=64, height=64),
        model="RealVisXL_V5.0.safetensors", backend="comfyui", generative=True,
        lora=gen.LoraSpec("nova-sterling_lora.v3.safetensors", 3, "ab" * 32, 0.8), reference_set_hash="r" * 64,
        workflows={"portrait": "sdxl"},
    )
    started = len(list(real_comfy.output_dir.rglob("*.png")))
    with pytest.raises(ComfyUIPreflightError) as caught:
        list(backend(real_comfy, REPO / "workflows").generate(requests_))
    message = str(caught.value)
    assert f"preflight against {real_comfy.url}/object_info failed" in message
    assert f"checkpoints not on the server: 'RealVisXL_V5.0.safetensors' (used by sdxl); the server has: {SERVER_CHECKPOINT}" in message
    assert f"LoRAs not on the server: 'nova-sterling_lora.v3.safetensors' (used by sdxl); the server has: {SERVER_LORA}" in message
    assert "storage's assets/loras/" in message and "extra_model_paths.yaml" in message
    assert len(list(real_comfy.output_dir.rglob("*.png"))) == started  # nothing was queued


def test_instantid_example_fails_preflight_with_its_missing_node_classes(real_comfy, tmp_path):
    face = tmp_path / "face.png"
    pattern(face, 3)
    requests_ = plan("sdxl-instantid", 1, face)
    with pytest.raises(ComfyUIPreflightError) as caught:
        list(backend(real_comfy, REPO / "workflows").generate([gen.GenerationRequest(**{**requests_[0].__dict__, "style_references": (str(face),)})]))
    message = str(caught.value)
    for cls in ("ApplyInstantID", "InstantIDFaceAnalysis", "InstantIDModelLoader", "IPAdapter", "IPAdapterUnifiedLoader"):
        assert f"{cls} (used by sdxl-instantid)" in message
    assert "node classes not installed" in message and "CheckpointLoaderSimple (" not in message


def test_a_missing_node_class_in_a_studio_template_fails_preflight(real_comfy, tmp_path):
    graph = {**EMPTY_BATCH, "3": {"class_type": "StudioFaceDetailer", "inputs": {"image": ["1", 0]}}}
    name = write_workflow(tmp_path / "wf", "detailer", graph)
    with pytest.raises(ComfyUIPreflightError, match=r"node classes not installed: StudioFaceDetailer \(used by detailer\)"):
        list(backend(real_comfy, tmp_path / "wf").generate(plan(name, 1)))


@pytest.mark.slow  # ~20 s: a real server start inside
def test_restart_mid_batch_loses_no_image_and_does_not_wait_out_the_timeout(real_comfy, tmp_path):
    name = write_workflow(tmp_path / "wf", "scaled", SCALED)
    requests_ = plan(name, 6, size=1536, night="2026-11-21")  # big enough that the queue holds some when it dies
    client = backend(real_comfy, tmp_path / "wf", max_in_flight=6, max_retries=200, backoff_base_s=0.25, backoff_cap_s=0.5)
    results, restarted = [], {}

    def restart() -> None:
        time.sleep(0.5)  # down for a moment: the backend's calls meet a closed port
        restarted["start_s"] = real_comfy.start()

    began = time.monotonic()
    thread = None
    for result in client.generate(requests_):
        results.append(result)
        if thread is None:
            real_comfy.kill()  # the prompts already queued are gone with its memory
            killed_at = time.monotonic()
            thread = threading.Thread(target=restart)
            thread.start()
        elif "first_after" not in restarted:
            restarted["first_after"] = time.monotonic() - killed_at
    thread.join()
    elapsed = time.monotonic() - began

    assert [r.error for r in results] == [None] * 6
    assert sorted(r.request.image_id for r in results) == sorted(r.image_id for r in requests_)
    assert any(r.details.get("resubmitted") for r in results)  # lost prompts came back by resubmission
    assert elapsed < 120 < client.image_timeout_s
    print(f"\nrestart cost: {restarted['first_after']:.1f}s from kill to the next image (server start {restarted['start_s']:.1f}s); batch {elapsed:.1f}s")


# --- the asset, end to end ---------------------------------------------------------------------


def test_queen_with_a_face_workflow_renders_her_best_identity_portrait(real_comfy, tmp_path):
    roster, storage = tmp_path / "roster", tmp_path / "storage"
    write_demo_queen(DEMO_QUEENS[0], roster, storage / "reference_images")
    layout = StorageLayout(storage)
    process_reference_folder(layout.reference_sources(NOVA.slug), layout.normalized_references(NOVA.slug))
    entries = json.loads(layout.reference_manifest(NOVA.slug).read_text())["entries"]
    portraits = [e for e in entries if e["status"] == "accepted" and e["category"] == "portraits"]
    assert len(portraits) >= 2
    best = portraits[-1]  # reference_identity found this one closest to her mean identity
    atomic_write_json(layout.identity_dir(NOVA.slug) / "identity.json", {
        "no_face": [], "off_identity": [], "similarity_to_mean": {e["source"]: (0.95 if e is best else 0.8) for e in portraits},
    })
    path = roster / f"{NOVA.slug}.yaml"
    document = yaml.safe_load(path.read_text())
    document["generation_config"]["workflows"] = {"portrait": "face-scale"}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    write_workflow(tmp_path / "wf", "face-scale", FACE_SCALE)

    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(QUEENS, [NOVA.slug])
        result = dg.materialize(
            [generated_images], partition_key=queen_night_key(NOVA.slug, NIGHT), instance=instance,
            resources={
                "storage": HydraStorage(root=str(storage), roster_dir=str(roster)),
                "image_backend": backend(real_comfy, tmp_path / "wf"),
                "metrics": MetricsPusher(),
                "prompt_expander": TemplatePromptExpander(),
                "catalog": CatalogResource(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
                "events": EventPublisher(catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}"),
            },
            run_config={"ops": {"generated_images": {"config": {"width": 64, "height": 64, "asset_types": ["portrait"], "per_night_budget": 2}}}},
        )
    assert result.success
    manifest = json.loads((layout.generated_dir(NIGHT, NOVA.slug) / gen.MANIFEST_NAME).read_text())
    assert manifest["workflows"] == {"portrait": "face-scale"} and len(manifest["images"]) == 2

    def small(file: Path) -> np.ndarray:
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BOX), dtype=float)

    for entry in manifest["images"]:
        made = small(layout.generated_dir(NIGHT, NOVA.slug) / entry["file"])
        distance = {e["source"]: np.abs(made - small(layout.normalized_references(NOVA.slug) / e["normalized"])).mean() for e in portraits}
        assert min(distance, key=distance.get) == best["source"]  # her best-identity portrait reached LoadImage
        assert entry["params"]["workflow"] == "face-scale" and len(entry["details"]["workflow"]["sha256"]) == 64
        assert entry["params"]["model"] == "none (the workflow loads no checkpoint)"
        assert entry["params"]["prompt_source"] == "template"
    for entry in portraits:  # only the face slot's image was uploaded
        name = upload_name((layout.normalized_references(NOVA.slug) / entry["normalized"]).read_bytes())
        assert (real_comfy.input_dir / name).is_file() == (entry is best)


def test_the_fake_server_answers_an_unknown_node_and_object_info_as_the_real_one(real_comfy, tmp_path):
    import requests

    from tests.comfy_server import FakeComfyUI

    graph = {"1": {"class_type": "InstantIDModelLoader", "inputs": {}}, "2": EMPTY_BATCH["2"]}
    with FakeComfyUI(tmp_path / "fake") as fake:
        answers = [requests.post(f"{url}/prompt", json={"prompt": graph}, timeout=10) for url in (real_comfy.url, fake.url)]
        assert [a.status_code for a in answers] == [400, 400]
        assert answers[0].json() == answers[1].json()  # invalid_prompt, same message, same details
        real, mine = (requests.get(f"{url}/object_info", timeout=30).json() for url in (real_comfy.url, fake.url))
        for cls in mine:  # the fake's catalogue is a subset in the real shape
            assert mine[cls]["output"] == real[cls]["output"] and mine[cls]["output_node"] == real[cls]["output_node"]
            assert set(mine[cls]["input"]["required"]) <= set(real[cls]["input"]["required"])
