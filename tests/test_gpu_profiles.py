"""The workload table and the op tags, pools and run priorities GPU steps get from it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from hydra_assets.domain.workloads import (
    CPU_WORKLOADS,
    GPU_CLASSES,
    PRIORITIES,
    VOICE_IN_POD_PROFILE,
    VOICE_REMOTE_PROFILE,
    WORKLOADS,
    profile_problems,
    validate_workloads,
)
from hydra_assets.gpu import (
    GPU_CLASS_LABEL,
    GPU_RESOURCE,
    K8S_CONFIG_TAG,
    PRIORITY_TAG,
    SAFE_TO_EVICT_ANNOTATION,
    WORKLOAD_LABEL,
    WORKLOAD_REASON_ANNOTATION,
    WORKLOAD_TAG,
    gpu_asset_kwargs,
    gpu_pool,
    gpu_pools,
    k8s_step_config,
    parse_step_config,
    run_priority_tags,
)

REPO = Path(__file__).resolve().parents[1]
POOL_SCRIPT = REPO / "deploy" / "pool_limits.sh"
DAGSTER = Path(sys.executable).with_name("dagster")


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_preferred_class_has_the_vram_the_profile_needs(name):
    profile = WORKLOADS[name]
    assert profile.gpu_classes, name
    for gpu_class in profile.gpu_classes:
        available = GPU_CLASSES[gpu_class].vram_mb * profile.gpus
        assert available >= profile.min_vram_mb, f"{name} on {gpu_class}: {available} MB < {profile.min_vram_mb} MB"
    assert profile_problems(profile) == []


def test_the_spec_table_passes_validation_and_multi_gpu_vram_is_a_total():
    validate_workloads()
    llm = WORKLOADS["llm-inference-70b"]
    # 48000 MB fits no single card of the SPEC; it is the total over the profile's two GPUs.
    assert llm.min_vram_mb > max(gpu.vram_mb for gpu in GPU_CLASSES.values())
    assert llm.vram_per_gpu_mb == 24000 <= GPU_CLASSES["4090"].vram_mb


def test_a_class_too_small_for_the_profile_is_refused_with_names_and_numbers():
    lora_on_3060 = replace(WORKLOADS["lora-training-sdxl"], gpu_classes=("5070ti", "3060"))
    problems = profile_problems(lora_on_3060)
    assert problems == [
        "workload profile 'lora-training-sdxl': GPU class 3060 has 1 x 12288 MB of VRAM, "
        "below the profile's minimum of 14000 MB"
    ]
    with pytest.raises(ValueError, match="GPU class 3060 has 1 x 12288 MB"):
        validate_workloads({"lora-training-sdxl": lora_on_3060})


def test_other_broken_rules_are_each_reported():
    broken = replace(
        WORKLOADS["quality-scoring"],
        gpu_classes=("3060", "a100"),
        cpu_request="4",
        memory_limit="lots",
        priority_class="batch-urgent",
    )
    problems = "\n".join(profile_problems(broken))
    assert "unknown GPU class 'a100'" in problems
    assert "cpu request 4 exceeds its limit 2" in problems
    assert "'4Gi'/'lots' is not a Kubernetes quantity" in problems
    assert "priority class 'batch-urgent' must end in one of" in problems


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_step_config_is_accepted_by_dagster_k8s_and_carries_the_profile(name):
    profile = WORKLOADS[name]
    parsed = parse_step_config(k8s_step_config(name))
    resources = parsed.container_config["resources"]
    assert resources["limits"][GPU_RESOURCE] == str(profile.gpus)
    assert resources["limits"]["cpu"] == profile.cpu_limit and resources["limits"]["memory"] == profile.memory_limit
    assert resources["requests"] == {"cpu": profile.cpu_request, "memory": profile.memory_request}
    pod = parsed.pod_spec_config
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    if len(profile.gpu_classes) == 1:
        assert pod["node_selector"] == {GPU_CLASS_LABEL: profile.gpu_classes[0]}
        assert "affinity" not in pod
    else:
        required = pod["affinity"]["node_affinity"]["required_during_scheduling_ignored_during_execution"]
        (term,) = required["node_selector_terms"]
        assert term["match_expressions"] == [
            {"key": GPU_CLASS_LABEL, "operator": "In", "values": list(profile.gpu_classes)}
        ]
        preferred = pod["affinity"]["node_affinity"]["preferred_during_scheduling_ignored_during_execution"]
        weights = [entry["weight"] for entry in preferred]
        assert weights == sorted(weights, reverse=True) and all(1 <= w <= 100 for w in weights)
        assert preferred[0]["preference"]["match_expressions"][0]["values"] == [profile.gpu_classes[0]]
        assert "node_selector" not in pod
    assert pod.get("active_deadline_seconds") == profile.max_duration_seconds
    metadata = parsed.pod_template_spec_metadata
    assert metadata["labels"] == {WORKLOAD_LABEL: name}
    assert (metadata.get("annotations", {}).get(SAFE_TO_EVICT_ANNOTATION) == "false") == (not profile.preemptible)


@pytest.mark.parametrize("name", sorted(CPU_WORKLOADS))
def test_a_cpu_profile_asks_for_no_gpu_and_says_why(name):
    profile = CPU_WORKLOADS[name]
    assert profile_problems(profile) == [] and profile.gpus == 0 and profile.reason
    parsed = parse_step_config(k8s_step_config(name))
    resources = parsed.container_config["resources"]
    assert resources["limits"] == {"cpu": profile.cpu_limit, "memory": profile.memory_limit}
    assert resources["requests"] == {"cpu": profile.cpu_request, "memory": profile.memory_request}
    assert not {"tolerations", "node_selector", "affinity"} & set(parsed.pod_spec_config)
    assert parsed.pod_template_spec_metadata["labels"] == {WORKLOAD_LABEL: name}
    assert parsed.pod_template_spec_metadata["annotations"][WORKLOAD_REASON_ANNOTATION] == profile.reason
    assert gpu_pool(name) == profile.pool and profile.pool not in gpu_pools()


def test_a_cpu_profile_must_not_name_gpus_and_must_say_why():
    broken = replace(CPU_WORKLOADS[VOICE_REMOTE_PROFILE], gpu_classes=("3060",), reason=" ", pool=None)
    assert profile_problems(broken) == [
        "workload profile 'voice-synthesis-remote': asks for no GPU, so it takes no GPU classes and no VRAM",
        "workload profile 'voice-synthesis-remote': asks for no GPU and must say why (reason)",
        "workload profile 'voice-synthesis-remote': asks for no GPU, so it must name its pool",
    ]


def test_voice_backends_pick_the_profile_by_where_their_model_runs():
    from resources.voice import EspeakBackend, GptSovitsBackend, KokoroBackend, XttsBackend

    assert EspeakBackend.runs_in_pod and EspeakBackend.workload_profile() == VOICE_IN_POD_PROFILE
    for backend in (GptSovitsBackend, KokoroBackend, XttsBackend):
        assert not backend.runs_in_pod and backend.workload_profile() == VOICE_REMOTE_PROFILE
    assert WORKLOADS[VOICE_IN_POD_PROFILE].gpus == 1 and CPU_WORKLOADS[VOICE_REMOTE_PROFILE].gpus == 0
    # Same urgency either way: only where the model runs differs.
    assert CPU_WORKLOADS[VOICE_REMOTE_PROFILE].priority == WORKLOADS[VOICE_IN_POD_PROFILE].priority


def test_dagster_k8s_rejects_a_misspelt_field_so_the_check_is_real():
    config = k8s_step_config("quality-scoring")
    config["pod_spec_config"]["node_selectr"] = config["pod_spec_config"].pop("node_selector")
    with pytest.raises(Exception, match="node_selectr"):
        parse_step_config(config)


def test_step_config_is_a_fresh_copy_each_time():
    first = k8s_step_config("voice-synthesis")
    first["container_config"]["resources"]["limits"][GPU_RESOURCE] = "8"
    assert k8s_step_config("voice-synthesis")["container_config"]["resources"]["limits"][GPU_RESOURCE] == "1"


def test_pools_follow_the_first_preferred_class_and_cover_every_class():
    assert gpu_pool("image-generation-sdxl") == "gpu-5070ti"
    assert gpu_pool("lora-training-sdxl") == "gpu-5070ti"
    assert gpu_pool("voice-synthesis") == gpu_pool("quality-scoring") == "gpu-3060"
    assert gpu_pool("llm-inference-70b") == "gpu-5090"
    assert set(gpu_pools().values()) == set(GPU_CLASSES)
    assert {gpu_pool(name) for name in WORKLOADS} <= set(gpu_pools())
    with pytest.raises(KeyError, match="unknown workload profile 'sdxl'; known: image-generation-sdxl"):
        gpu_pool("sdxl")


def test_run_priority_follows_the_spec_priority_map():
    assert run_priority_tags("llm-inference-70b") == {PRIORITY_TAG: str(PRIORITIES["critical"])}
    assert run_priority_tags("image-generation-sdxl") == {PRIORITY_TAG: "100"}
    assert run_priority_tags("lora-training-sdxl") == {PRIORITY_TAG: "10"}
    assert run_priority_tags("quality-scoring") == {PRIORITY_TAG: "1"}
    # A run is as urgent as its most urgent GPU step (the overnight job generates, then scores).
    assert run_priority_tags("quality-scoring", "image-generation-sdxl") == {PRIORITY_TAG: "100"}


def test_gpu_kwargs_make_a_real_asset_whose_tags_are_inert_in_process():
    @dg.asset(**gpu_asset_kwargs("quality-scoring"))
    def scored_batch() -> int:
        return 3

    node = dg.Definitions(assets=[scored_batch]).resolve_implicit_global_asset_job_def().graph.node_named("scored_batch")
    tags = node.tags
    assert tags[WORKLOAD_TAG] == "quality-scoring"
    assert tags[PRIORITY_TAG] == "1"
    assert json.loads(tags[K8S_CONFIG_TAG]) == k8s_step_config("quality-scoring")
    assert node.definition.pool == "gpu-3060"
    with dg.instance_for_test() as instance:
        result = dg.materialize([scored_batch], instance=instance)
        assert result.success and result.output_for_node("scored_batch") == 3


def test_pool_script_names_exactly_the_spec_gpu_classes():
    match = re.search(r"^GPU_CLASSES=\(([^)]*)\)", POOL_SCRIPT.read_text(), flags=re.MULTILINE)
    assert match, f"{POOL_SCRIPT} must define GPU_CLASSES=(...)"
    assert match.group(1).split() == list(GPU_CLASSES)
    assert os.access(POOL_SCRIPT, os.X_OK)


def test_pool_script_sets_one_pool_per_class_with_the_card_counts(tmp_path):
    log = tmp_path / "calls.log"
    recorder = tmp_path / "dagster"
    recorder.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    recorder.chmod(0o755)
    env = {**os.environ, "DAGSTER": str(recorder), "GPU_5070TI": "2"}
    result = subprocess.run(["bash", str(POOL_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "instance concurrency set gpu-5090 1",
        "instance concurrency set gpu-4090 1",
        "instance concurrency set gpu-5070ti 2",
        "instance concurrency set gpu-3060 1",
        "instance concurrency get --all",
    ]


@pytest.mark.slow
def test_pool_script_sets_every_pool_on_an_instance(tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text((REPO / "instance" / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "DAGSTER": str(DAGSTER), "GPU_3060": "2"}
    result = subprocess.run(["bash", str(POOL_SCRIPT)], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        slots = {pool: instance.event_log_storage.get_concurrency_info(pool).slot_count for pool in gpu_pools()}
    assert slots == {"gpu-5090": 1, "gpu-4090": 1, "gpu-5070ti": 1, "gpu-3060": 2}


def test_pool_script_refuses_a_count_that_is_not_a_number():
    env = {**os.environ, "DAGSTER": "false", "GPU_4090": "two"}
    result = subprocess.run(["bash", str(POOL_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "GPU_4090 must be a whole number of cards, got 'two'" in result.stderr
