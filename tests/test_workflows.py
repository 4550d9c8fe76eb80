"""Workflow templates: slots by title, filling, refusals, preflight and reference choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from hydra_assets.domain import comfy_workflow
from hydra_assets.domain import workflows as wf
from hydra_assets.domain.demo_data import DEMO_QUEENS
from hydra_assets.domain.roster import Queen

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "workflows"


def values(**overrides) -> wf.Fill:
    settings = dict(
        checkpoint="RealVisXL_V5.0.safetensors", positive="a portrait", negative="blurry", seed=42, steps=30, cfg=6.5,
        sampler_name="dpmpp_2m", scheduler="karras", width=768, height=1024, filename_prefix="hydra/x",
        lora_name="nova-sterling_lora.safetensors", lora_strength=0.8,
    )
    return wf.Fill(**{**settings, **overrides})


def strip(graph: wf.Graph) -> wf.Graph:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in graph.items()}


@pytest.mark.parametrize("lora", ["nova-sterling_lora.safetensors", None])
def test_shipped_sdxl_template_fills_to_the_spec_graph(lora):
    filled = wf.fill(wf.load_template(SHIPPED, wf.DEFAULT_WORKFLOW), values(lora_name=lora))
    expected = comfy_workflow.build_workflow(
        checkpoint="RealVisXL_V5.0.safetensors", positive="a portrait", negative="blurry", seed=42, steps=30, cfg=6.5,
        sampler_name="dpmpp_2m", scheduler="karras", width=768, height=1024, filename_prefix="hydra/x",
        lora_name=lora, lora_strength_model=0.8,
    )
    assert strip(filled.graph) == expected  # without a LoRA, node 2 is bypassed exactly as the SPEC graph leaves it out
    assert filled.checkpoints == ["RealVisXL_V5.0.safetensors"] and filled.loras == ([lora] if lora else [])
    assert filled.sha256 == wf.canonical_sha256(filled.graph)
    assert wf.fill(wf.load_template(SHIPPED, "sdxl"), values(seed=43, lora_name=lora)).sha256 != filled.sha256


def test_instantid_example_binds_face_and_style_references():
    template = wf.load_template(SHIPPED, "sdxl-instantid")
    assert template.needs_face and template.style_slots == ["hydra.reference.style"]
    filled = wf.fill(template, values(face_image="hydra-face.png", style_images=["hydra-style.png"]))
    assert filled.graph["13"]["inputs"]["image"] == "hydra-face.png" and filled.graph["21"]["inputs"]["image"] == "hydra-style.png"
    assert filled.graph["2"]["inputs"]["lora_name"] == "nova-sterling_lora.safetensors"
    with pytest.raises(wf.WorkflowError, match=r"sdxl-instantid.json: node 13 slot 'hydra.reference.face': the queen has no face reference"):
        wf.fill(template, values(style_images=["s.png"]))
    with pytest.raises(wf.WorkflowError, match=r"node 21 slot 'hydra.reference.style': the queen has no style references"):
        wf.fill(template, values(face_image="f.png"))


def write(folder: Path, name: str, graph) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(graph))
    return path


SAVE = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}, "_meta": {"title": "hydra.output"}}


def test_bad_templates_are_refused_naming_file_node_and_slot(tmp_path):
    write(tmp_path, "typo", {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}, "_meta": {"title": "hydra.sise"}}, "2": SAVE})
    with pytest.raises(wf.WorkflowError, match=r"typo.json: node 1 \(EmptyImage\) has unknown slot title 'hydra.sise'"):
        wf.load_template(tmp_path, "typo")
    write(tmp_path, "noinput", {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}, "_meta": {"title": "hydra.size"}}, "2": SAVE})
    with pytest.raises(wf.WorkflowError, match=r"noinput.json: node 1 \(EmptyImage\) slot 'hydra.size' lacks input\(s\) height"):
        wf.load_template(tmp_path, "noinput")
    write(tmp_path, "nooutput", {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}})
    with pytest.raises(wf.WorkflowError, match=r"nooutput.json: no node titled 'hydra.output'"):
        wf.load_template(tmp_path, "nooutput")
    write(tmp_path, "ui", {"nodes": [], "links": []})
    with pytest.raises(wf.WorkflowError, match=r"ui.json: node nodes has no class_type/inputs .*Export \(API\)"):
        wf.load_template(tmp_path, "ui")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(wf.WorkflowError, match=r"broken.json: unreadable workflow"):
        wf.load_template(tmp_path, "broken")
    with pytest.raises(wf.WorkflowError, match=r"absent.json not found \(workflows there: \['broken', 'noinput'"):
        wf.load_template(tmp_path, "absent")
    with pytest.raises(wf.WorkflowError, match=r"workflow name '../etc/passwd' must be a slug"):
        wf.load_template(tmp_path, "../etc/passwd")


def test_roster_names_workflows_per_type_with_slug_rules():
    roster = dict(DEMO_QUEENS[0].roster)
    config = {**roster.get("generation_config", {}), "workflows": {"portrait": "sdxl-instantid"}}
    queen = Queen.model_validate({**roster, "generation_config": config})
    assert queen.generation_config.workflows == {"portrait": "sdxl-instantid"}
    assert Queen.model_validate(roster).generation_config.workflows == {}  # unnamed types: the SPEC graph
    with pytest.raises(ValidationError, match="workflows"):
        Queen.model_validate({**roster, "generation_config": {**config, "workflows": {"portrait": "../Bad Name"}}})


def test_preflight_lists_classes_and_values_missing_in_both_combo_forms():
    graph = wf.fill(wf.load_template(SHIPPED, "sdxl-instantid"), values(face_image="f.png", style_images=["s.png"])).graph
    info = {
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["other.safetensors"], {}]}}},
        "LoraLoader": {"input": {"required": {"lora_name": ["COMBO", {"options": ["a.safetensors", "b.safetensors"]}]}}},
        "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {}]}}},
        "ControlNetLoader": {"input": {"required": {"control_net_name": [["instantid/diffusion_pytorch_model.safetensors"]]}}},
        "LoadImage": {"input": {"required": {"image": [["f.png", "s.png"], {"image_upload": True}]}}},
        "EmptyLatentImage": {"input": {"required": {}}}, "KSampler": {"input": {"required": {}}},
        "VAEDecode": {"input": {"required": {}}}, "SaveImage": {"input": {"required": {}}},
    }
    missing = wf.preflight([("sdxl-instantid", graph)], info)
    assert sorted(missing.node_classes) == ["ApplyInstantID", "IPAdapter", "IPAdapterUnifiedLoader", "InstantIDFaceAnalysis", "InstantIDModelLoader"]
    assert missing.values == {
        ("CheckpointLoaderSimple", "ckpt_name"): {"RealVisXL_V5.0.safetensors": ["sdxl-instantid"]},
        ("LoraLoader", "lora_name"): {"nova-sterling_lora.safetensors": ["sdxl-instantid"]},
    }
    message = wf.describe_missing(missing, "http://comfy:8188", info, "put it in assets/loras/")
    assert "LoRAs not on the server: 'nova-sterling_lora.safetensors' (used by sdxl-instantid); the server has: a.safetensors, b.safetensors; put it in assets/loras/" in message
    assert "checkpoints not on the server: 'RealVisXL_V5.0.safetensors' (used by sdxl-instantid); the server has: other.safetensors" in message
    assert not wf.preflight([("sdxl-instantid", graph)], {**info, **{c: {"input": {}} for c in missing.node_classes},
                                                          "CheckpointLoaderSimple": {"input": {}}, "LoraLoader": {"input": {}}})


def test_face_reference_is_the_best_identity_portrait_or_the_named_one(tmp_path):
    entries = [
        {"source": "a.jpg", "status": "accepted", "normalized": "a.png", "category": "portraits"},
        {"source": "b.jpg", "status": "accepted", "normalized": "b.png", "category": "portraits"},
        {"source": "c.jpg", "status": "accepted", "normalized": "c.png", "category": "portraits"},
        {"source": "d.jpg", "status": "accepted", "normalized": "d.png", "category": "full_body"},
        {"source": "e.jpg", "status": "rejected", "normalized": None, "category": "portraits"},
    ]
    identity = {"similarity_to_mean": {"a.jpg": 0.81, "b.jpg": 0.93, "c.jpg": 0.97, "d.jpg": 0.99}, "off_identity": ["c.jpg"], "no_face": []}
    assert wf.face_reference(entries, identity, tmp_path) == str(tmp_path / "b.png")  # c is off-identity, d not a portrait
    assert wf.face_reference(entries, identity, tmp_path, preferred="a.jpg") == str(tmp_path / "a.png")
    assert wf.face_reference(entries, identity, tmp_path, preferred="c.jpg") == str(tmp_path / "b.png")  # never off-identity
    assert wf.face_reference(entries, {}, tmp_path) is None  # no identity yet: no face slot can be filled
    assert wf.style_set(["z.png", "b.png", "a.png", "c.png", "d.png"], 3) == ["a.png", "b.png", "c.png"]


def test_a_deeply_nested_workflow_file_is_refused_naming_the_file(tmp_path):
    from hydra_assets.domain.workflows import WorkflowError, load_template

    (tmp_path / "deep.json").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(WorkflowError, match=r"deep\.json: unreadable workflow \(.*nest"):
        load_template(tmp_path, "deep")
