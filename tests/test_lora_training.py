"""queen_lora: settings, captions and versioning; the tiny model really trains, and its file
loads where the studio loads LoRAs (diffusers' load_lora_weights, ComfyUI's key map)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import sqlalchemy as sa
import torch
import yaml
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql
from PIL import Image

from hydra_assets.domain import images as reference_images
from hydra_assets.domain import lora as domain
from hydra_assets.domain.demo_data import DEMO_QUEENS
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.storage import StorageLayout, atomic_write_bytes, atomic_write_json, sha256_file
from hydra_assets.lora import queen_lora
from hydra_assets.partitions import QUEENS
from resources.catalog import CatalogResource
from resources.events import EventPublisher
from resources.lora_base import TINY_BASE_MODEL, BaseModelMissingError, build_tiny_sdxl_components
from resources.lora_files import read_lora_header, serialize_lora
from resources.lora_training import LORA_TARGET_MODULES, LoraTrainer, TrainingImage
from resources.storage import HydraStorage

SLUG = "nova-sterling"
RANK, ALPHA = 4, 8.0  # alpha != rank, so a lost or mis-scaled alpha shows up
TRAIN_STEPS = 16


def demo_roster(slug: str = SLUG, **lora_training) -> dict:
    roster = json.loads(json.dumps(next(d.roster for d in DEMO_QUEENS if d.slug == slug)))
    roster["generation_config"]["lora_training"] = lora_training
    return roster


def demo_queen(**lora_training) -> Queen:
    return Queen.model_validate(demo_roster(**lora_training))


def synthetic_photo(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * 255 // size[0], y * 255 // size[1], np.full_like(x, seed * 40 % 255)], axis=-1)
    noise = rng.integers(0, 40, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), mode="RGB")


def settings(**changes) -> domain.LoraTrainingSettings:
    base = domain.LoraTrainingSettings(
        rank=RANK, alpha=ALPHA, steps=TRAIN_STEPS, learning_rate=2e-3, resolution=64, seed=0, caption_template="{name}"
    )
    return domain.LoraTrainingSettings(**{**base.to_dict(), **changes})


def tiny_trainer(**fields) -> LoraTrainer:
    return LoraTrainer(base_model="tiny", max_resolution=64, batch_size=2, log_every=8, cpu_threads=1, **fields)


def example(sha: str, caption: str = "a photo of Nova Sterling") -> domain.TrainingExample:
    return domain.TrainingExample(
        source=f"portraits/{sha}.png", path=Path(sha), sha256=sha, category="portraits", caption=caption
    )


# ---------------------------------------------------------------- pure logic


def test_settings_come_from_the_queen_with_roster_defaults_and_trainer_caps():
    queen = demo_queen(rank=8, steps=900, resolution=1000)
    full = domain.training_settings(queen)
    assert (full.rank, full.alpha, full.steps, full.learning_rate) == (8, 16.0, 900, 1e-4)
    assert full.resolution == 960, "sides snap down to a multiple of 64"
    capped = domain.training_settings(queen, max_steps=20, max_resolution=100)
    assert (capped.steps, capped.resolution, capped.rank) == (20, 64, 8)
    assert domain.training_settings(demo_queen(resolution=64), max_resolution=128).resolution == 64


def test_captions_fill_the_template_and_name_a_bad_field():
    queen = demo_queen()
    assert domain.render_caption("a photo of {name}, {title}", queen) == "a photo of Nova Sterling, Orbital Dawn"
    untitled = Queen.model_validate({**demo_roster(), "title": ""})
    assert domain.render_caption("a photo of {name}, {title}", untitled) == "a photo of Nova Sterling"
    caption = domain.render_caption("{category} of {name}, {appearance}", queen, "expressions")
    assert caption.startswith("facial expression of Nova Sterling, ") and "short wavy brown hair" in caption
    with pytest.raises(domain.CaptionTemplateError, match=r"\{nickname\}.*\{name\}"):
        domain.render_caption("photo of {nickname}", queen)
    with pytest.raises(domain.CaptionTemplateError, match="caption_template"):
        domain.render_caption("photo of {name", queen)


def test_training_hash_follows_references_settings_base_and_captions_but_not_order():
    examples = [example("aa"), example("bb")]
    reference = domain.training_hash("refs", settings(), "base", examples)
    assert domain.training_hash("refs", settings(), "base", examples[::-1]) == reference
    assert domain.training_hash("refs2", settings(), "base", examples) != reference
    assert domain.training_hash("refs", settings(rank=8), "base", examples) != reference
    assert domain.training_hash("refs", settings(), "other-base", examples) != reference
    assert domain.training_hash("refs", settings(), "base", [example("aa"), example("bb", "other")]) != reference
    assert domain.training_hash("refs", settings(), "base", examples[:1]) != reference


def test_version_plan_reuses_a_known_hash_and_never_reuses_a_number():
    assert domain.plan_version("h1", {}) == domain.VersionPlan(1, reuse=False)
    assert domain.plan_version("h1", {1: "h1"}) == domain.VersionPlan(1, reuse=True)
    assert domain.plan_version("h1", {1: "h1", 2: "h2"}) == domain.VersionPlan(1, reuse=True)
    assert domain.plan_version("h3", {1: "h1", 2: "h2"}) == domain.VersionPlan(3, reuse=False)
    assert domain.plan_version("h1", {1: "h1"}, force=True) == domain.VersionPlan(2, reuse=False)
    assert domain.plan_version("h1", {1: None, 2: "h2"}) == domain.VersionPlan(3, reuse=False)
    names = ["nova-sterling_lora_v2.safetensors", "nova-sterling_lora_v10.safetensors", "other_lora_v3.safetensors",
             "nova-sterling_lora_v0.safetensors", ".nova-sterling_lora_v4.safetensors.x.tmp"]
    assert domain.versions_on_disk(SLUG, names) == {2: names[0], 10: names[1]}


def test_status_only_moves_up_the_ladder():
    assert domain.advanced_status("reference_ready", "lora_training") == "lora_training"
    assert domain.advanced_status("lora_training", "lora_ready") == "lora_ready"
    assert domain.advanced_status("lora_ready", "lora_training") is None
    assert domain.advanced_status("generation_active", "lora_ready") is None


def test_training_set_leaves_out_references_without_the_queens_face(tmp_path):
    manifest = {
        "entries": [
            {"source": f"portraits/{n}.png", "status": "accepted", "category": "portraits", "sha256": n,
             "normalized": f"portraits/{n}.png", "normalized_sha256": n * 2}
            for n in ("a", "b", "c")
        ]
        + [{"source": "portraits/bad.png", "status": "rejected", "category": "portraits", "sha256": "x"}]
    }
    identity = {"with_face": ["portraits/a.png", "portraits/c.png"], "off_identity": ["portraits/c.png"]}
    chosen, skipped = domain.select_training_examples(manifest, identity, demo_queen(), tmp_path)
    assert [e.source for e in chosen] == ["portraits/a.png"] and chosen[0].sha256 == "aa"
    assert chosen[0].path == tmp_path / "portraits/a.png"
    assert skipped == {
        "portraits/b.png": "no face found",
        "portraits/c.png": "face does not match the queen's identity",
    }
    every, _ = domain.select_training_examples(manifest, identity, demo_queen(), tmp_path, faces_only=False)
    assert len(every) == 3


def test_a_missing_sdxl_base_names_the_path_and_how_to_provide_it(tmp_path):
    absent = tmp_path / "models" / "sdxl-base"
    with pytest.raises(BaseModelMissingError) as raised:
        LoraTrainer(base_model="sdxl", model_path=str(absent)).check_base_model()
    assert str(absent / "model_index.json") in str(raised.value) and "model_path" in str(raised.value)
    assert isinstance(raised.value, FileNotFoundError)
    with pytest.raises(BaseModelMissingError, match="needs model_path"):
        LoraTrainer(base_model="sdxl").train([TrainingImage(synthetic_photo(0), "x")], settings())
    (absent / "unet").mkdir(parents=True)
    (absent / "model_index.json").write_text("{}")
    with pytest.raises(BaseModelMissingError, match="incomplete: no vae, text_encoder"):
        LoraTrainer(base_model="sdxl", model_path=str(absent)).check_base_model()


# ---------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def trained():
    """One tiny training shared by the model tests: (result, progress reports, file bytes)."""
    reports = []
    images = [TrainingImage(synthetic_photo(seed), f"a photo of queen {seed}") for seed in range(4)]
    result = tiny_trainer().train(images, settings(), progress=reports.append)
    header = {"hydra.version": "1", "hydra.training_hash": "abc", "format": "pt"}
    return result, reports, serialize_lora(result.state_dict, header)


def test_tiny_training_lowers_the_loss_and_reports_progress(trained):
    result, reports, _ = trained
    assert result.final_loss < result.initial_loss
    assert len(result.losses) == TRAIN_STEPS and all(np.isfinite(result.losses))
    assert [r.step for r in reports] == [8, 16] and all(r.steps_per_second > 0 for r in reports)
    assert result.base_model == TINY_BASE_MODEL and result.steps_per_second > 0


def comfyui_unet_lora_keys(unet) -> set[str]:
    """The kohya names ComfyUI's model_lora_keys_unet maps for a diffusers-named UNet weight:
    ``lora_unet_`` + the diffusers key without ``.weight``, dots as underscores."""
    return {
        "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        for key in unet.state_dict()
        if key.endswith(".weight")
    }


def test_lora_keys_are_the_kohya_names_comfyui_maps(trained, tmp_path):
    result, _, data = trained
    path = atomic_write_bytes(tmp_path / "q_lora.safetensors", data)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    unet = build_tiny_sdxl_components()["unet"]
    mapped = comfyui_unet_lora_keys(unet)
    modules = {key.split(".", 1)[0] for key in tensors}
    assert modules <= mapped, sorted(modules - mapped)[:3]
    for module in modules:
        assert {k for k in tensors if k.startswith(module + ".")} == {
            f"{module}.lora_up.weight", f"{module}.lora_down.weight", f"{module}.alpha"
        }
        assert float(tensors[f"{module}.alpha"]) == ALPHA
        assert tensors[f"{module}.lora_down.weight"].shape[0] == RANK
    attention = re.compile(r"_attn[12]_(to_q|to_k|to_v|to_out_0)$")
    assert all(attention.search(module) for module in modules)
    targeted = {
        "lora_unet_" + name.replace(".", "_")
        for name, _ in unet.named_modules()
        if any(name.endswith("." + target) for target in LORA_TARGET_MODULES) and ".attn" in name
    }
    assert modules == targeted
    assert read_lora_header(path)["hydra.training_hash"] == "abc"


def test_the_file_loads_with_load_lora_weights_and_matches_comfyuis_math(trained, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    _, _, data = trained
    path = atomic_write_bytes(tmp_path / "q_lora.safetensors", data)
    pipeline = StableDiffusionXLPipeline(**build_tiny_sdxl_components())
    pipeline.set_progress_bar_config(disable=True)

    def render():
        generator = torch.Generator().manual_seed(3)
        images = pipeline("a photo", num_inference_steps=2, height=32, width=32, generator=generator, output_type="np")
        return images.images

    def unet_output(unet):
        generator = torch.Generator().manual_seed(5)
        sample = torch.randn(1, 4, 16, 16, generator=generator)
        text = torch.randn(1, 77, 64, generator=generator)
        cond = {
            "text_embeds": torch.randn(1, 32, generator=generator),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        }
        with torch.no_grad():
            return unet(sample, torch.tensor([500]), text, added_cond_kwargs=cond).sample

    before = render()
    pipeline.load_lora_weights(str(path), adapter_name="queen")
    after = render()
    assert np.abs(after - before).max() > 1e-3, "the LoRA must change what the pipeline draws"

    # ComfyUI patches each weight with strength * alpha / rank * up @ down; diffusers must agree.
    merged = build_tiny_sdxl_components()["unet"]
    tensors = load_file(str(path))
    modules = dict(merged.named_modules())
    for key in [k for k in tensors if k.endswith(".lora_down.weight")]:
        module = key.split(".", 1)[0]
        down, up = tensors[key], tensors[f"{module}.lora_up.weight"]
        scale = float(tensors[f"{module}.alpha"]) / down.shape[0]
        name = next(n for n in modules if "lora_unet_" + n.replace(".", "_") == module)
        with torch.no_grad():
            modules[name].weight += scale * (up @ down)
    torch.testing.assert_close(unet_output(pipeline.unet), unet_output(merged), rtol=1e-4, atol=1e-5)


def test_training_is_reproducible_for_a_seed(trained):
    result, _, _ = trained
    again = tiny_trainer().train(
        [TrainingImage(synthetic_photo(seed), f"a photo of queen {seed}") for seed in range(4)], settings()
    )
    assert again.initial_loss == result.initial_loss and again.losses == result.losses
    for key, tensor in result.state_dict.items():
        assert torch.equal(tensor, again.state_dict[key]), key


@pytest.mark.slow
def test_sdxl_base_loads_from_a_local_diffusers_folder(tmp_path):
    """The cluster path, on a diffusers folder saved from the tiny model: nothing is fetched."""
    from diffusers import StableDiffusionXLPipeline

    folder = tmp_path / "store" / "sdxl-tiny"
    StableDiffusionXLPipeline(**build_tiny_sdxl_components()).save_pretrained(str(folder))
    trainer = LoraTrainer(base_model="sdxl", model_path=str(folder), max_resolution=64, device="cpu")
    assert trainer.base_model_id() == "sdxl:sdxl-tiny"
    result = trainer.train([TrainingImage(synthetic_photo(1), "a photo")], settings(steps=2))
    assert len(result.losses) == 2 and result.state_dict


# ---------------------------------------------------------------- the asset


def write_upstream(layout: StorageLayout, roster_dir: Path, seeds: list[int], faceless: int | None = None) -> str:
    """What reference_images and reference_identity would have written for SLUG; returns the set hash."""
    roster_dir.mkdir(parents=True, exist_ok=True)
    (roster_dir / f"{SLUG}.yaml").write_text(yaml.safe_dump(demo_roster(steps=6, learning_rate=2e-3, rank=RANK)))
    entries = []
    for seed in seeds:
        png = reference_images.encode_png(synthetic_photo(seed))
        path = atomic_write_bytes(layout.normalized_references(SLUG) / "portraits" / f"p{seed}.png", png)
        digest = sha256_file(path)
        entries.append({"source": f"portraits/p{seed}.jpg", "category": "portraits", "sha256": digest,
                        "status": "accepted", "reason": None, "normalized": f"portraits/p{seed}.png",
                        "normalized_sha256": digest})
    set_hash = reference_images.reference_set_hash([e["sha256"] for e in entries])
    atomic_write_json(layout.reference_manifest(SLUG), {"reference_set_hash": set_hash, "entries": entries})
    sources = [e["source"] for e in entries]
    atomic_write_json(
        layout.identity_dir(SLUG) / "identity.json",
        {"reference_set_hash": set_hash, "with_face": [s for s in sources if s != f"portraits/p{faceless}.jpg"],
         "no_face": [], "off_identity": []},
    )
    return set_hash


def lora_rows(url: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "select version, status, training_images, final_loss is not null, model_size"
                " from lora_models order by version"
            )
        ).all()
        status = connection.execute(sa.text("select status from queens")).scalar_one()
    engine.dispose()
    return [tuple(r) for r in rows], status


@pytest.fixture
def lora_env(tmp_path):
    layout = StorageLayout(tmp_path / "storage")
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    resources = {
        "storage": HydraStorage(root=str(layout.root), roster_dir=str(tmp_path / "roster")),
        "catalog": CatalogResource(url=url),
        "lora_trainer": tiny_trainer(),
        "events": EventPublisher(catalog_url=url),
    }
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        yield layout, url, resources, instance, tmp_path / "roster"
    resources["catalog"].dispose()
    resources["events"].dispose()


def training_events(resources) -> list[tuple[str, int, int, bool]]:
    """(type, step, totalSteps, has outputPath) of every event so far, and all from one run per training."""
    return [
        (e.type.value, e.payload.step, e.payload.total_steps, e.payload.output_path is not None)
        for e in resources["events"].read()
    ]


def materialize(resources, instance, **config):
    run_config = {"ops": {"queen_lora": {"config": config}}} if config else None
    result = dg.materialize(
        [queen_lora], partition_key=SLUG, resources=resources, instance=instance, run_config=run_config
    )
    [event] = result.asset_materializations_for_node("queen_lora")
    return {key: value.value for key, value in event.metadata.items()}, event


def test_queen_lora_reuses_an_unchanged_version_and_keeps_v1_when_references_change(lora_env):
    layout, url, resources, instance, roster_dir = lora_env
    write_upstream(layout, roster_dir, seeds=[1, 2, 3], faceless=3)
    resources["catalog"].upsert_queen(demo_queen())

    first, event = materialize(resources, instance)
    v1 = layout.lora_versions_dir(SLUG) / f"{SLUG}_lora_v1.safetensors"
    assert first["version"] == 1 and first["reused"] is False and first["training_images"] == 2
    assert first["previous_version"] is None and first["current_changed"] is True
    assert first["final_loss"] < first["initial_loss"] and first["steps"] == 6
    assert "loss_curve" in first and first["steps_per_second"] > 0
    assert sha256_file(layout.lora_path(SLUG)) == sha256_file(v1) == first["sha256"]
    info = json.loads(layout.lora_info_path(SLUG).read_text())
    assert info["version"] == 1 and info["training_hash"] == first["training_hash"] and info["strength"] == 0.8
    assert info["file_name"] == f"{SLUG}_lora.safetensors" and info["rank"] == RANK
    assert event.tags["dagster/data_version"] == first["training_hash"][:16]
    header = read_lora_header(v1)
    assert header["hydra.reference_set_hash"] == first["reference_set_hash"] and header["ss_network_dim"] == str(RANK)
    v1_mtime = v1.stat().st_mtime_ns
    assert training_events(resources) == [
        ("training.lora.started", 0, 6, False), ("training.lora.progress", 6, 6, False),
        ("training.lora.completed", 6, 6, True),
    ]
    trained = resources["events"].read()
    assert len({e.correlation_id for e in trained}) == 1 and trained[-1].payload.loss == pytest.approx(first["final_loss"])
    assert trained[-1].payload.output_path == str(v1) and trained[0].payload.queen_id is not None
    assert (first["events_written"], first["events_catalog_failures"]) == (3, 0)

    again, _ = materialize(resources, instance)
    assert again["reused"] is True and again["version"] == 1 and "loss_curve" not in again
    assert again["current_changed"] is False  # lora_ready_sensor must not regenerate tonight
    assert len(training_events(resources)) == 3 and again["events_emitted"] == 0, "nothing trained, nothing emitted"
    assert v1.stat().st_mtime_ns == v1_mtime
    assert sorted(p.name for p in v1.parent.glob("*.safetensors")) == [v1.name]

    write_upstream(layout, roster_dir, seeds=[1, 2, 4])
    second, _ = materialize(resources, instance)
    v2 = v1.with_name(f"{SLUG}_lora_v2.safetensors")
    assert second["version"] == 2 and second["reused"] is False and second["training_images"] == 3
    assert second["training_hash"] != first["training_hash"]
    assert v1.is_file() and sha256_file(v1) == first["sha256"], "v1 must stay on disk untouched"
    assert sha256_file(layout.lora_path(SLUG)) == sha256_file(v2)
    assert json.loads(layout.lora_info_path(SLUG).read_text())["version"] == 2
    versions = [r.data for r in second["versions"].records]
    assert [(v["version"], v["current"]) for v in versions] == [(2, True), (1, False)]
    assert versions[1]["final_loss"] == pytest.approx(first["final_loss"], rel=1e-5)
    assert versions[0]["training_hash"] == second["training_hash"][:16]
    rows, status = lora_rows(url)
    assert rows == [(1, "ready", 2, 1, v1.stat().st_size), (2, "ready", 3, 1, v2.stat().st_size)]
    assert status == "lora_ready"

    # Back to the first reference set: v1's hash is on disk, so it is republished, not retrained.
    write_upstream(layout, roster_dir, seeds=[1, 2, 3], faceless=3)
    back, _ = materialize(resources, instance)
    assert back["reused"] is True and back["version"] == 1
    assert (back["previous_version"], back["current_changed"]) == (2, True)  # tonight must follow v1
    assert sha256_file(layout.lora_path(SLUG)) == first["sha256"]
    assert sorted(p.name for p in v1.parent.glob("*.safetensors")) == [v1.name, v2.name]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA to make training fail")
def test_a_failed_training_is_recorded_and_publishes_nothing(lora_env):
    layout, url, resources, instance, roster_dir = lora_env
    write_upstream(layout, roster_dir, seeds=[1, 2])
    resources["catalog"].upsert_queen(demo_queen())
    resources = {**resources, "lora_trainer": tiny_trainer(device="cuda")}
    with pytest.raises(RuntimeError, match="no CUDA device"):
        materialize(resources, instance)
    assert not layout.lora_path(SLUG).exists() and not layout.lora_versions_dir(SLUG).exists()
    rows, status = lora_rows(url)
    assert rows == [(1, "failed", 2, 0, None)]
    assert [t for t, *_ in training_events(resources)] == ["training.lora.started", "training.lora.failed"]
    assert status == "draft", "a failed first training leaves the queen where she was"


def test_a_second_training_of_the_same_queen_waits_for_the_first(lora_env):
    """A run launched from the asset graph has no hydra/lora-queen tag: the asset itself refuses to overlap."""
    layout, url, resources, instance, roster_dir = lora_env
    write_upstream(layout, roster_dir, seeds=[1, 2])
    resources["catalog"].upsert_queen(demo_queen())

    @dg.op
    def train() -> None:
        return None

    @dg.job(name="queen_lora_job")
    def running_elsewhere() -> None:
        train()

    other = instance.create_run_for_job(
        running_elsewhere, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": SLUG}
    )
    with pytest.raises(dg.Failure, match=f"run {other.run_id} is already training"):
        materialize(resources, instance)
    assert not layout.lora_versions_dir(SLUG).exists()

    instance.report_run_failed(other)  # the other run ended: training goes on
    metadata, _ = materialize(resources, instance)
    assert metadata["version"] == 1 and metadata["reused"] is False


STALE_STATUS_QUERY = """
query LoraStaleStatus($partition: String!) {
  assetNodes(assetKeys: [{path: ["queen_lora"]}]) { staleStatus(partition: $partition) }
}
"""


def lora_stale_status(instance: dg.DagsterInstance, tmp_path: Path) -> str:
    """What the UI's asset page shows for the LoRA partition: the webserver's GraphQL schema,
    answered from a code server of the same definitions (FRESH, STALE or MISSING)."""
    module = tmp_path / "ui_definitions.py"
    module.write_text(
        "import sys\nfrom pathlib import Path\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from tests.helpers import hydra_definitions\n"
        f"defs = hydra_definitions(Path({str(tmp_path)!r}))\n"
    )
    with define_out_of_process_context(str(module), None, instance) as context:
        result = execute_dagster_graphql(context, STALE_STATUS_QUERY, {"partition": SLUG})
    assert not result.errors, result.errors
    [node] = result.data["assetNodes"]
    return node["staleStatus"]


@pytest.mark.slow
def test_queen_lora_end_to_end_on_the_demo_queen(tmp_path):
    """Roster → references → identity (dlib) → LoRA, as the embedded deployment runs it."""
    from hydra_assets.definitions import local_resources
    from hydra_assets.domain.demo_data import write_demo_data
    from tests.helpers import hydra_definitions, temp_settings

    write_demo_data(tmp_path / "roster", tmp_path / "storage" / "reference_images")
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions(QUEENS, [SLUG])
        spine = hydra_definitions(tmp_path).resolve_job_def("queen_reference_job")
        assert spine.execute_in_process(partition_key=SLUG, instance=instance).success
        resources = {**local_resources(temp_settings(tmp_path)), "lora_trainer": tiny_trainer(max_steps=8)}
        metadata, _ = materialize(resources, instance)
        assert lora_stale_status(instance, tmp_path) == "FRESH"

        # A new reference photo: once reference_images picks it up, the UI shows the LoRA stale.
        photos = tmp_path / "storage" / "reference_images" / SLUG / "portraits"
        synthetic_photo(7, size=(640, 640)).save(photos / "new_angle.png")
        assert spine.execute_in_process(
            partition_key=SLUG, instance=instance, asset_selection=[dg.AssetKey("reference_images")]
        ).success
        assert lora_stale_status(instance, tmp_path) == "STALE"
    assert metadata["version"] == 1 and metadata["training_images"] == 6
    assert "full_body/backdrop.png" in metadata["skipped_references"]
    layout = StorageLayout(tmp_path / "storage")
    assert read_lora_header(layout.lora_path(SLUG))["hydra.steps"] == "8"
    rows, status = lora_rows(f"sqlite:///{tmp_path / 'catalog.db'}")
    assert rows[0][:3] == (1, "ready", 6) and status == "lora_ready"
