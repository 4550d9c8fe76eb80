"""generated_images: the pure planning and manifest logic, the demo renderer, and the asset's
reuse and resume behaviour (with the DemoRenderer and with ComfyUI's protocol)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from hydra_assets.domain import comfy_workflow as wf
from hydra_assets.domain import generation as gen
from hydra_assets.domain.demo_data import DEMO_QUEENS, write_demo_queen
from hydra_assets.domain.images import process_reference_folder
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import StorageLayout, atomic_write_json, sha256_file
from hydra_assets.generation import CHECK_NAME, generate_partition, generated_images
from hydra_assets.gpu import GPU_CLASS_LABEL, GPU_RESOURCE, K8S_CONFIG_TAG, WORKLOAD_TAG
from hydra_assets.partitions import QUEENS, queen_night_key
from resources.catalog import CatalogResource
from resources.events import EventPublisher
from resources.face import DlibFaceBackend
from resources.image import (
    DEMO_RENDERER,
    ComfyUIBackend,
    DemoRenderer,
    DiffusersBackend,
    GenerationResult,
    ImageBackend,
    render_demo_image,
)
from resources.llm import OpenAIPromptExpander, PromptExpander, TemplatePromptExpander
from resources.metrics import MetricsPusher
from resources.storage import HydraStorage
from tests.comfy_server import FakeComfyUI

SLUG = "nova-sterling"
NIGHT = "2026-11-20"
SIZE = 192
"""Small images keep the asset tests fast; every code path is the same as at 1024."""
NOVA = Queen.model_validate(DEMO_QUEENS[0].roster)
DEMO_TOTAL = 4 + 3 + 2  # nova-sterling's target_portraits, target_expressions, target_poses


# --- pure parts ------------------------------------------------------------------------------

SPEC_LINKS = {
    ("2", "model", "1", 0), ("2", "clip", "1", 1),
    ("3", "clip", "2", 1), ("4", "clip", "2", 1),
    ("5", "model", "2", 0), ("5", "positive", "3", 0), ("5", "negative", "4", 0), ("5", "latent_image", "6", 0),
    ("7", "samples", "5", 0), ("7", "vae", "1", 2),
    ("8", "images", "7", 0),
}
SPEC_CLASSES = {
    "1": "CheckpointLoaderSimple", "2": "LoraLoader", "3": "CLIPTextEncode", "4": "CLIPTextEncode",
    "5": "KSampler", "6": "EmptyLatentImage", "7": "VAEDecode", "8": "SaveImage",
}


def _graph(**overrides):
    settings = dict(
        checkpoint="RealVisXL_V5.0.safetensors", positive="a portrait", negative="blurry", seed=42, steps=30, cfg=6.5,
        sampler_name="dpmpp_2m", scheduler="karras", width=768, height=1024, filename_prefix="hydra/x",
        lora_name="nova-sterling_lora.safetensors", lora_strength_model=0.8,
    )
    return wf.build_workflow(**{**settings, **overrides})


def test_workflow_graph_matches_spec():
    graph = _graph()
    assert {k: v["class_type"] for k, v in graph.items()} == SPEC_CLASSES
    assert wf.links(graph) == SPEC_LINKS
    lora = graph["2"]["inputs"]
    assert (lora["lora_name"], lora["strength_model"], lora["strength_clip"]) == ("nova-sterling_lora.safetensors", 0.8, 0.8)
    sampler = graph["5"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"], sampler["denoise"]) == (
        42, 30, 6.5, "dpmpp_2m", "karras", 1.0,
    )
    assert graph["6"]["inputs"] == {"width": 768, "height": 1024, "batch_size": 1}
    assert (graph["3"]["inputs"]["text"], graph["4"]["inputs"]["text"]) == ("a portrait", "blurry")


def test_workflow_without_lora_skips_node_and_rewires_to_checkpoint():
    graph = _graph(lora_name=None)
    assert "2" not in graph
    expected = {(c, n, "1" if s == "2" else s, o) for c, n, s, o in SPEC_LINKS if c != "2"}
    assert wf.links(graph) == expected
    assert all(source in graph for _, _, source, _ in wf.links(graph))


def test_nightly_counts_follow_targets_and_cap_at_budget():
    targets = {"portrait": 12, "expression": 8, "pose": 6}
    types = ["portrait", "expression", "pose"]
    assert gen.nightly_counts(targets, types, 100) == targets
    capped = gen.nightly_counts(targets, types, 13)
    assert sum(capped.values()) == 13 and all(capped[t] <= targets[t] for t in types)
    assert capped == {"portrait": 6, "expression": 4, "pose": 3}
    assert gen.nightly_counts(targets, ["portrait", "full_body"], 5) == {"portrait": 5, "full_body": 0}
    assert gen.nightly_counts(targets, types, 0) == {"portrait": 0, "expression": 0, "pose": 0}
    with pytest.raises(ValueError, match="budget"):
        gen.nightly_counts(targets, types, -1)
    assert gen.check_asset_types(["pose", "portrait", "pose"]) == ["pose", "portrait"]
    with pytest.raises(ValueError, match=r"\['\.\./x'\] must match"):
        gen.check_asset_types(["portrait", "../x"])


def test_seeds_are_deterministic_and_distinct():
    slots = [(q, n, t, i) for q in ("nova-sterling", "ada-marlowe") for n in ("2026-11-20", "2026-11-21")
             for t in gen.DEFAULT_ASSET_TYPES for i in range(100)]
    seeds = [gen.image_seed(*slot) for slot in slots]
    assert seeds == [gen.image_seed(*slot) for slot in slots]
    assert len(set(seeds)) == len(slots)
    assert all(0 <= s < 2**gen.SEED_BITS for s in seeds)


def _plan(**overrides):
    settings = dict(
        queen=NOVA, night=NIGHT, counts={"portrait": 2, "expression": 2, "pose": 1}, sampling=gen.Sampling(),
        model="RealVisXL_V5.0.safetensors", backend="comfyui", generative=True,
        lora=gen.LoraSpec("nova-sterling_lora.safetensors", 3, "ab" * 32, 0.8), reference_set_hash="r" * 64,
    )
    return gen.plan_night(**{**settings, **overrides})


def test_plan_prompts_params_and_files():
    plan = _plan()
    assert [r.image_id for r in plan] == [
        "nova-sterling-2026-11-20-portrait-000", "nova-sterling-2026-11-20-portrait-001",
        "nova-sterling-2026-11-20-expression-000", "nova-sterling-2026-11-20-expression-001",
        "nova-sterling-2026-11-20-pose-000",
    ]
    first = plan[0]
    assert "Nova Sterling" in first.prompt and "short wavy brown hair" in first.prompt
    assert gen.type_fragment("portrait", 0) in first.prompt and first.prompt.startswith("studio portrait photo")
    assert "cartoon" in first.negative and "watermark" in first.negative
    assert plan[2].prompt != plan[3].prompt  # expressions differ by more than the seed
    assert first.params["lora_name"] == "nova-sterling_lora.safetensors" and first.params["lora_version"] == 3
    assert first.file == f"portrait/{first.image_id}-{first.params_hash[:8]}.png"
    assert first.params_hash == gen.params_hash(first.params)
    # the hash follows everything that shapes the pixels
    assert _plan(sampling=gen.Sampling(steps=31))[0].params_hash != first.params_hash
    assert _plan(lora=gen.LoraSpec("nova-sterling_lora.safetensors", 4, "cd" * 32, 0.8))[0].params_hash != first.params_hash
    assert _plan(reference_set_hash="s" * 64)[0].params_hash != first.params_hash
    assert _plan()[0].params_hash == first.params_hash and _plan()[0].seed == first.seed


def test_png_text_chunk_round_trips():
    params = {**_plan()[0].params, "prompt": "portrait, warm smile — Åsa's café 東京"}
    details = {"degraded": "blur", "transform": {"flip": True}}
    image = Image.fromarray(np.arange(48 * 32 * 3, dtype=np.uint8).reshape(32, 48, 3) % 251, "RGB")
    data = gen.encode_png(image.convert("RGBA"), params, details)
    decoded, read_back = gen.decode_png(data)
    assert read_back == params and gen.png_details(decoded) == details
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), np.asarray(image))
    with pytest.raises(gen.InvalidImage):
        gen.decode_png(data[: len(data) // 2])
    with pytest.raises(gen.InvalidImage):
        gen.decode_png(b"GIF89a not a png")


def test_lora_info_must_name_version_hash_and_file(tmp_path):
    spec = gen.lora_spec_from_info({"version": 2, "sha256": "f" * 64, "file_name": "x_lora.safetensors"}, tmp_path, 0.7, tmp_path / "x.json")
    assert (spec.name, spec.version, spec.path) == ("x_lora.safetensors", 2, str(tmp_path / "x_lora.safetensors"))
    with pytest.raises(ValueError, match=r"x\.json: LoRA info is missing sha256"):
        gen.lora_spec_from_info({"version": 2, "file_name": "x"}, tmp_path, 0.7, tmp_path / "x.json")
    versioned = {"version": 3, "sha256": "f" * 64, "file_name": "x_lora.safetensors", "version_file": "versions/x/x_lora_v3.safetensors"}
    assert gen.lora_spec_from_info(versioned, tmp_path, 0.7, tmp_path / "x.json").name == "versions/x/x_lora_v3.safetensors"
    with pytest.raises(ValueError, match="must be a path inside"):
        gen.lora_spec_from_info({"version": 2, "sha256": "f", "file_name": "../../etc/x"}, tmp_path, 0.7, tmp_path / "x.json")


# --- demo renderer ---------------------------------------------------------------------------


def _astronaut() -> Image.Image:
    return Image.open(DEMO_QUEENS[0].photo()).convert("RGB")


def test_demo_renderer_degrades_on_purpose_and_faceless_crops_lose_the_face():
    source = _astronaut()
    rng = np.random.default_rng
    clean, clean_t = render_demo_image(source, 384, 384, rng(7), None)
    blurred, _ = render_demo_image(source, 384, 384, rng(7), "blur")
    noisy, noisy_t = render_demo_image(source, 384, 384, rng(7), "noise")
    faceless, faceless_t = render_demo_image(source, 384, 384, rng(7), "faceless")

    def sharpness(image):  # variance of a Laplacian: blur removes it
        g = np.asarray(image.convert("L"), dtype=np.float64)
        return float(np.var(g[1:-1, 1:-1] * 4 - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]))

    assert sharpness(blurred) < sharpness(clean) / 5
    assert sharpness(noisy) > sharpness(clean) * 3 and noisy_t["noise_sigma"] >= 35
    assert "corner" in faceless_t["crop"] and "crop_scale" in clean_t
    faces = DlibFaceBackend().embed_largest_faces([np.asarray(clean), np.asarray(faceless)])
    assert faces[0] is not None and faces[1] is None


def test_demo_renderer_is_deterministic_and_says_what_it_is(tmp_path):
    reference = tmp_path / "ref.png"
    _astronaut().save(reference)
    plan = gen.plan_night(
        queen=NOVA, night=NIGHT, counts={"portrait": 3, "pose": 3}, sampling=gen.Sampling(width=128, height=160),
        model=DemoRenderer().model_name(), backend=DEMO_RENDERER, generative=False, lora=None,
        reference_set_hash="r" * 64, references={"portrait": [str(reference)], "pose": [str(reference)]},
    )
    first = list(DemoRenderer().generate(plan))
    again = list(DemoRenderer().generate(plan[::-1]))[::-1]  # order and batch do not matter
    assert [r.error for r in first] == [None] * 6 and [r.image.size for r in first] == [(128, 160)] * 6
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(first, again))
    assert all(r.details["renderer"] == DEMO_RENDERER and r.details["generative"] is False for r in first)
    assert "not a generative model" in DemoRenderer().model_name() and DemoRenderer.generative is False
    assert all(r.details["degraded"] for r in DemoRenderer(degraded_share=1.0).generate(plan))
    assert not any(r.details["degraded"] for r in DemoRenderer(degraded_share=0.0).generate(plan))
    [missing] = DemoRenderer().generate([gen.GenerationRequest(**{**plan[0].__dict__, "references": ()})])
    assert missing.image is None and "materialize reference_images" in missing.error


# --- the asset -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_storage_template(tmp_path_factory) -> Path:
    """Roster and normalized references, as queen_profile and reference_images leave them."""
    root = tmp_path_factory.mktemp("demo-template")
    write_demo_queen(DEMO_QUEENS[0], root / "roster", root / "storage" / "reference_images")
    layout = StorageLayout(root / "storage")
    process_reference_folder(layout.reference_sources(SLUG), layout.normalized_references(SLUG))
    return root


@pytest.fixture
def demo_root(tmp_path, demo_storage_template) -> Path:
    shutil.copytree(demo_storage_template, tmp_path / "demo")
    return tmp_path / "demo"


@pytest.fixture
def instance():
    """In-memory: the asset's behaviour is under test, not the event log's SQLite file."""
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        yield instance


def _catalog_url(root: Path) -> str:
    return f"sqlite:///{root / 'catalog.db'}"


def _events(root: Path, run_id: str) -> list[tuple[str, str | None]]:
    """(type, imageId or the pipeline's status) of the run's events, in order."""
    publisher = EventPublisher(catalog_url=_catalog_url(root))
    try:
        return [
            (e.type.value, getattr(e.payload, "image_id", None) or getattr(e.payload, "status", None))
            for e in publisher.read(correlation_id=run_id)
        ]
    finally:
        publisher.dispose()


def _materialize(root: Path, instance, backend: ImageBackend, raise_on_error: bool = True, expander: PromptExpander | None = None, **config):
    resources = {
        "storage": HydraStorage(root=str(root / "storage"), roster_dir=str(root / "roster")),
        "image_backend": backend,
        "metrics": MetricsPusher(),
        "prompt_expander": expander or TemplatePromptExpander(),
        "catalog": CatalogResource(url=f"sqlite:///{root / 'catalog.db'}"),
        "events": EventPublisher(catalog_url=_catalog_url(root)),
    }
    return dg.materialize(
        [generated_images],
        partition_key=queen_night_key(SLUG, NIGHT),
        resources=resources,
        instance=instance,
        run_config={"ops": {"generated_images": {"config": {"width": SIZE, "height": SIZE, **config}}}},
        raise_on_error=raise_on_error,
    )


def _metadata(result) -> dict:
    [materialization] = result.asset_materializations_for_node("generated_images")
    return {key: value.value for key, value in materialization.metadata.items()}


def _folder(root: Path) -> Path:
    return StorageLayout(root / "storage").generated_dir(NIGHT, SLUG)


def _manifest(root: Path) -> dict:
    return json.loads((_folder(root) / gen.MANIFEST_NAME).read_text())


def test_generated_images_carries_gpu_profile_tags():
    [spec] = generated_images.specs
    op_tags = generated_images.op.tags
    assert op_tags[WORKLOAD_TAG] == "image-generation-sdxl"
    k8s = op_tags[K8S_CONFIG_TAG] if isinstance(op_tags[K8S_CONFIG_TAG], dict) else json.loads(op_tags[K8S_CONFIG_TAG])
    assert k8s["container_config"]["resources"]["limits"][GPU_RESOURCE] == "1"
    assert GPU_CLASS_LABEL in json.dumps(k8s["pod_spec_config"])
    assert generated_images.op.pool == "gpu-5070ti"
    assert {dep.asset_key.path[-1] for dep in spec.deps} == {"queen_profile", "queen_lora"}


def test_demo_renderer_end_to_end_for_a_demo_queen_night(demo_root, instance):
    result = _materialize(demo_root, instance, DemoRenderer())
    assert result.success
    meta = _metadata(result)
    assert meta["per_type"] == {
        t: {"planned": n, "present": n, "new": n, "reused": 0, "failed": 0} for t, n in {"portrait": 4, "expression": 3, "pose": 2}.items()
    }
    assert (meta["new"], meta["reused"], meta["failed"], meta["backend"], meta["generative"]) == (DEMO_TOTAL, 0, 0, DEMO_RENDERER, False)
    assert meta["degraded_on_purpose"] >= 1 and "data:image/png;base64," in meta["contact_sheet"]
    assert meta["review"].endswith(f"/nights/{NIGHT}/{SLUG}"), "the partition's review page"
    duration = f'hydra_generation_duration_seconds_count{{queen_slug="{SLUG}",task_type="generation"}}'
    assert meta["metrics"][duration] == 1 and meta["metrics_pushed"] is False
    assert "hydra_queue_depth" not in meta["metrics"]
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == CHECK_NAME and check.passed

    manifest = _manifest(demo_root)
    references = json.loads((StorageLayout(demo_root / "storage").reference_manifest(SLUG)).read_text())
    assert (manifest["queen"], manifest["night"], manifest["backend"], manifest["backend_kind"]) == (SLUG, NIGHT, DEMO_RENDERER, "demo")
    assert manifest["reference_set_hash"] == references["reference_set_hash"] and manifest["lora"] is None
    assert len(manifest["images"]) == DEMO_TOTAL and manifest["failed"] == []
    for entry in manifest["images"]:
        path = _folder(demo_root) / entry["file"]
        assert entry["file"].startswith(f"{entry['asset_type']}/") and entry["params_hash"][:8] in entry["file"]
        assert sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["size_bytes"]
        image, params = gen.decode_png(path.read_bytes())
        assert image.mode == "RGB" and image.size == (entry["width"], entry["height"]) == (SIZE, SIZE)
        assert params == entry["params"] and params["backend"] == DEMO_RENDERER and params["generative"] is False
        assert params["seed"] == entry["seed"] == gen.image_seed(SLUG, NIGHT, entry["asset_type"], entry["index"])
    version = result.asset_materializations_for_node("generated_images")[0].tags["dagster/data_version"]
    assert version == gen.images_data_version(manifest["images"])[:16]
    assert _events(demo_root, result.run_id) == [
        ("pipeline.overnight.started", "started"), *[("generation.image.created", e["image_id"]) for e in manifest["images"]],
    ]
    publisher = EventPublisher(catalog_url=_catalog_url(demo_root))
    created = publisher.read(correlation_id=result.run_id, types=["generation.image.created"])
    publisher.dispose()
    assert [e.payload.path for e in created] == [
        f"overnight/{NIGHT}/generated/{SLUG}/{entry['file']}" for entry in manifest["images"]
    ]
    assert (meta["events_written"], meta["events_catalog_failures"]) == (DEMO_TOTAL + 1, 0)


def test_rematerializing_after_two_deletions_makes_exactly_two(demo_root, instance):
    assert _materialize(demo_root, instance, DemoRenderer()).success
    before = {e["image_id"]: e["sha256"] for e in _manifest(demo_root)["images"]}
    deleted = _manifest(demo_root)["images"][1:3]
    for entry in deleted:
        (_folder(demo_root) / entry["file"]).unlink()

    again = _materialize(demo_root, instance, DemoRenderer())
    meta = _metadata(again)
    assert [i for t, i in _events(demo_root, again.run_id) if t == "generation.image.created"] == [
        e["image_id"] for e in deleted
    ], "only the images made again are created again"
    print(f"resume after deleting 2 of {DEMO_TOTAL}: new={meta['new']} reused={meta['reused']}")
    assert (meta["new"], meta["reused"], meta["images"]) == (2, DEMO_TOTAL - 2, DEMO_TOTAL)
    assert meta["per_type"]["portrait"] == {"planned": 4, "present": 4, "new": 2, "reused": 2, "failed": 0}
    assert {e["image_id"]: e["sha256"] for e in _manifest(demo_root)["images"]} == before  # the same pixels again


def test_changed_or_corrupted_images_are_remade_and_old_versions_kept(demo_root, instance):
    assert _materialize(demo_root, instance, DemoRenderer()).success
    first = _manifest(demo_root)["images"]
    (_folder(demo_root) / first[0]["file"]).write_bytes(b"\x89PNG damaged")
    meta = _metadata(_materialize(demo_root, instance, DemoRenderer()))
    assert (meta["new"], meta["reused"]) == (1, DEMO_TOTAL - 1)

    meta = _metadata(_materialize(demo_root, instance, DemoRenderer(), steps=12))  # new parameters: new files
    manifest = _manifest(demo_root)
    assert (meta["new"], meta["reused"]) == (DEMO_TOTAL, 0)
    assert {e["file"] for e in manifest["superseded"]} == {e["file"] for e in first}
    assert all((_folder(demo_root) / e["file"]).is_file() for e in first)


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, not even ``except Exception``."""


class _DiesAfter(DemoRenderer):
    images_before_death: int = 3

    def generate(self, requests, log=None):
        for count, result in enumerate(super().generate(requests, log)):
            if count == self.images_before_death:
                raise _Killed()
            yield result


def test_killed_run_resumes_where_it_stopped(demo_root):
    layout = StorageLayout(demo_root / "storage")
    references = json.loads(layout.reference_manifest(SLUG).read_text())
    plan = gen.plan_night(
        queen=NOVA, night=NIGHT, counts={"portrait": 4, "expression": 3, "pose": 2}, sampling=gen.Sampling(width=SIZE, height=SIZE),
        model=DemoRenderer().model_name(), backend=DEMO_RENDERER, generative=False, lora=None,
        reference_set_hash=references["reference_set_hash"],
        references=gen.references_by_type(references["entries"], layout.normalized_references(SLUG), gen.DEFAULT_ASSET_TYPES),
    )
    folder = layout.generated_dir(NIGHT, SLUG)
    with pytest.raises(_Killed):
        generate_partition(plan, folder, {"queen": SLUG}, _DiesAfter())
    assert len(json.loads((folder / gen.MANIFEST_NAME).read_text())["images"]) == 3

    run = generate_partition(plan, folder, {"queen": SLUG}, DemoRenderer())
    assert (len(run.reused), len(run.new)) == (3, DEMO_TOTAL - 3)

    # written but never listed (killed between the image and its manifest line): adopted, not redone
    (folder / gen.MANIFEST_NAME).unlink()
    run = generate_partition(plan, folder, {"queen": SLUG}, DemoRenderer())
    assert (len(run.reused), len(run.new)) == (DEMO_TOTAL, 0)


class _FailsPoses(DemoRenderer):
    def generate(self, requests, log=None):
        for result in super().generate(requests, log):
            if result.request.asset_type == "pose":
                yield GenerationResult(result.request, None, "pose model refused this prompt")
            else:
                yield result


class _FailsAll(DemoRenderer):
    def generate(self, requests, log=None):
        raise FileNotFoundError("SDXL model not found at /models/sdxl")
        yield  # pragma: no cover


def test_failed_images_are_recorded_and_only_a_total_failure_fails_the_asset(demo_root, instance):
    result = _materialize(demo_root, instance, _FailsPoses())
    assert result.success
    manifest = _manifest(demo_root)
    assert [f["image_id"] for f in manifest["failed"]] == [f"{SLUG}-{NIGHT}-pose-000", f"{SLUG}-{NIGHT}-pose-001"]
    assert manifest["failed"][0]["error"] == "pose model refused this prompt"
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN

    meta = _metadata(_materialize(demo_root, instance, DemoRenderer()))  # a retry makes only the failed two
    assert (meta["new"], meta["reused"], meta["failed"]) == (2, DEMO_TOTAL - 2, 0)

    shutil.rmtree(_folder(demo_root))
    result = _materialize(demo_root, instance, _FailsAll(), raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("generated_images").error.message
    assert "no image of nova-sterling" in failure and "/models/sdxl" in failure
    assert len(_manifest(demo_root)["failed"]) == DEMO_TOTAL
    assert _events(demo_root, result.run_id) == [("pipeline.overnight.started", "started"),
                                                 ("pipeline.overnight.completed", "failed")]


def test_missing_references_fail_with_the_path(demo_root, instance):
    shutil.rmtree(StorageLayout(demo_root / "storage").normalized_references(SLUG))
    result = _materialize(demo_root, instance, DemoRenderer(), raise_on_error=False)
    assert not result.success
    assert "manifest.json is missing: materialize reference_images" in result.failure_data_for_node("generated_images").error.message


def test_comfyui_run_records_the_lora_and_never_resubmits_saved_images(demo_root, instance, tmp_path):
    layout = StorageLayout(demo_root / "storage")
    lora_file = "nova-sterling_lora.safetensors"
    atomic_write_json(layout.lora_info_path(SLUG), {"version": 3, "sha256": "ab" * 32, "file_name": lora_file, "status": "ready"})
    with FakeComfyUI(tmp_path / "comfy-output", loras=[lora_file]) as server:
        backend = ComfyUIBackend(base_url=server.url, backoff_base_s=0.01, backoff_cap_s=0.02, poll_interval_s=0.05)
        meta = _metadata(_materialize(demo_root, instance, backend, per_night_budget=5, steps=4))
        assert (meta["new"], meta["lora_version"], meta["backend"]) == (5, 3, "comfyui")
        assert len(server.accepted) == 5
        graph = next(iter(server.accepted.values()))
        assert graph["2"]["inputs"]["lora_name"] == lora_file and graph["2"]["inputs"]["strength_model"] == 0.8

        manifest = _manifest(demo_root)
        assert manifest["lora"] == {"name": lora_file, "version": 3, "sha256": "ab" * 32, "strength": 0.8}
        entry = manifest["images"][0]
        assert (entry["params"]["lora_name"], entry["params"]["lora_version"], entry["params"]["model"]) == (
            lora_file, 3, "RealVisXL_V5.0.safetensors",
        )
        assert entry["details"]["prompt_id"] in server.accepted

        (_folder(demo_root) / manifest["images"][4]["file"]).unlink()
        meta = _metadata(_materialize(demo_root, instance, backend, per_night_budget=5, steps=4))
        assert (meta["new"], meta["reused"]) == (1, 4)
        assert len(server.accepted) == 6  # only the deleted image went to ComfyUI again


def test_diffusers_backend_names_a_missing_model_path(tmp_path):
    backend = DiffusersBackend(model_path=str(tmp_path / "models" / "sdxl"), device="cpu", dtype="float32")
    with pytest.raises(FileNotFoundError, match=r"SDXL model not found at .*models/sdxl: put an SDXL diffusers folder"):
        list(backend.generate(_plan()))


@pytest.mark.slow
def test_diffusers_backend_batches_and_applies_a_kohya_lora(tmp_path):
    """A tiny SDXL saved as a diffusers folder and a kohya-key LoRA (what queen_lora writes and
    ComfyUI's LoraLoader reads) through the real load_lora_weights path, on CPU."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from resources.lora_base import build_tiny_sdxl_components
    from resources.lora_files import peft_to_kohya, serialize_lora

    components = build_tiny_sdxl_components()
    StableDiffusionXLPipeline(**components).save_pretrained(tmp_path / "sdxl")
    unet = components["unet"]
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora_path = tmp_path / "loras" / "nova-sterling_lora.safetensors"
    lora_path.parent.mkdir()
    lora_path.write_bytes(serialize_lora(peft_to_kohya(get_peft_model_state_dict(unet), 4.0), {}))

    def requests_(with_lora: bool):
        lora = gen.LoraSpec(lora_path.name, 1, "x" * 64, 0.8, str(lora_path)) if with_lora else None
        return _plan(counts={"portrait": 3}, sampling=gen.Sampling(steps=2, width=64, height=64, sampler="euler"), lora=lora)

    def run(backend, with_lora):
        results = list(backend.generate(requests_(with_lora)))
        assert [r.error for r in results] == [None] * 3 and all(r.image.size == (64, 64) for r in results)
        return [np.asarray(r.image, dtype=np.int16) for r in results]

    batched = DiffusersBackend(model_path=str(tmp_path / "sdxl"), device="cpu", dtype="float32", batch_size=2)
    plain = run(batched, False)
    with_lora = run(batched, True)
    one_by_one = run(batched.model_copy(update={"batch_size": 1}), False)
    assert all(np.abs(a - b).mean() > 0.3 for a, b in zip(plain, with_lora))  # the LoRA changes every image
    assert all(np.abs(a - b).max() <= 2 for a, b in zip(plain, one_by_one))  # seeds per image, LoRA unloaded
    assert len({a.tobytes() for a in plain}) == 3


@pytest.mark.slow
def test_generated_images_after_the_real_reference_stages(tmp_path):
    """The spine's job writes the references (and identity), then the demo renderer uses them."""
    from tests.helpers import hydra_definitions

    write_demo_queen(DEMO_QUEENS[0], tmp_path / "roster", tmp_path / "storage" / "reference_images")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        job = hydra_definitions(tmp_path).resolve_job_def("queen_reference_job")
        assert job.execute_in_process(partition_key=SLUG, instance=instance).success
        result = _materialize(tmp_path, instance, DemoRenderer(degraded_share=0.0))
    assert result.success and _metadata(result)["images"] == DEMO_TOTAL
    sources = {e["details"]["source_reference"] for e in _manifest(tmp_path)["images"]}
    backdrop = json.loads(StorageLayout(tmp_path / "storage").reference_manifest(SLUG).read_text())
    faceless = {Path(e["normalized"]).name for e in backdrop["entries"] if e["source"] == "full_body/backdrop.png"}
    assert sources and not sources & faceless  # references without a face are not used for clean images
    faces = DlibFaceBackend().embed_largest_faces(
        [np.asarray(Image.open(_folder(tmp_path) / e["file"])) for e in _manifest(tmp_path)["images"]]
    )
    assert sum(face is not None for face in faces) >= DEMO_TOTAL - 2


def test_prompts_are_expanded_by_the_llm_and_a_rerun_asks_nothing(demo_root, instance):
    from tests.http_server import ScriptedServer, answer
    from tests.test_llm import ROUTE, chat_app

    with ScriptedServer() as server:
        server.script(ROUTE, chat_app())
        llm = OpenAIPromptExpander(base_url=server.url, timeout_s=5, backoff_base_s=0.01, backoff_cap_s=0.02)
        meta = _metadata(_materialize(demo_root, instance, DemoRenderer(), expander=llm, per_night_budget=3))
        assert meta["prompt_sources"] == {"llm": 3} and len(server.hits(ROUTE)) == 3
        manifest = _manifest(demo_root)
        for entry in manifest["images"]:
            params = entry["params"]
            assert params["prompt_source"] == "llm" and params["prompt_model"] == "tabby-llama-3.1-8b"
            assert params["prompt"].startswith(params["template_prompt"]) and "85mm lens" in params["prompt"]
            assert gen.decode_png((_folder(demo_root) / entry["file"]).read_bytes())[1] == params  # in the PNG too
        assert manifest["prompt_sources"] == {"llm": 3}

        meta = _metadata(_materialize(demo_root, instance, DemoRenderer(), expander=llm, per_night_budget=3))
        assert (meta["reused"], meta["new"]) == (3, 0) and len(server.hits(ROUTE)) == 3  # cached: nothing asked

        server.script(ROUTE, answer(200, b"{not json"))
        down = OpenAIPromptExpander(base_url=server.url, timeout_s=5, max_retries=0)
        meta = _metadata(_materialize(demo_root, instance, DemoRenderer(), expander=down, per_night_budget=4))
        assert meta["prompt_sources"] == {"llm": 3, "template": 1}  # the cached three, the new one from its template
        [fallback] = [e["params"] for e in _manifest(demo_root)["images"] if e["params"]["prompt_source"] == "template"]
        assert fallback["prompt_source"] == "template" and fallback["prompt"] == fallback["template_prompt"]
        assert "template prompt kept" in fallback["prompt_warning"]


class _DownOnce(DemoRenderer):
    """A server that is unreachable on the first attempt of the step and back for the next."""

    marker: str

    def generate(self, requests, log=None):
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text("down once")
            raise ConnectionError("ComfyUI at http://127.0.0.1:9 refused the connection")
        yield from super().generate(requests, log)


@pytest.mark.slow
def test_a_backend_down_for_a_while_is_retried_by_the_step_retry_policy(demo_root, instance, tmp_path):
    from hydra_assets.failures import BACKEND_DOWN_RETRY

    assert generated_images.op.retry_policy == BACKEND_DOWN_RETRY
    assert (BACKEND_DOWN_RETRY.max_retries, BACKEND_DOWN_RETRY.delay) == (3, 10)
    result = _materialize(demo_root, instance, _DownOnce(marker=str(tmp_path / "down")))
    assert result.success
    assert _metadata(result)["new"] == DEMO_TOTAL
    retried = [e for e in instance.all_logs(result.run_id) if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1


def test_a_backend_that_cannot_work_fails_at_once_without_retries(demo_root, instance):
    result = _materialize(demo_root, instance, _FailsAll(), raise_on_error=False)
    assert not result.success
    retried = [e for e in instance.all_logs(result.run_id) if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retried == []
