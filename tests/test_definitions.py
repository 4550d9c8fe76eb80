from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from hydra_assets.settings import load_settings
from tests.helpers import hydra_definitions

REPO = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")


def test_definitions_hold_the_spine(tmp_path):
    defs = hydra_definitions(tmp_path)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"queen_profile", "reference_images", "reference_identity", "roster_index"} <= keys
    assert graph.get(dg.AssetKey("reference_identity")).parent_keys == {dg.AssetKey("reference_images")}
    assert defs.resolve_job_def("queen_reference_job").partitions_def.name == "queens"
    sensor = defs.resolve_sensor_def("roster_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    check_keys = {key.name for key in graph.asset_check_keys}
    assert "enough_reference_faces" in check_keys


def test_every_stage_is_in_the_one_definitions(tmp_path):
    defs = hydra_definitions(tmp_path)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"queen_lora", "generated_images", "image_scores", "approved_images", "quality_report", "voice_lines"} <= keys
    overnight = defs.resolve_job_def("overnight_job")
    assert overnight.tags["hydra/overnight"] == "true" and int(overnight.tags["dagster/priority"]) > 0
    assert {node.name for node in overnight.graph.node_dict.values()} == {
        "generated_images", "image_scores", "approved_images"}
    lora_tags = defs.resolve_job_def("queen_lora_job").partitioned_config.get_tags_for_partition_key("ada")
    assert lora_tags["hydra/lora-queen"] == "ada"
    assert defs.resolve_schedule_def("overnight_schedule").job_name == "overnight_generation_job"
    assert defs.resolve_sensor_def("lora_ready_sensor").job_name == "overnight_generation_job"
    assert defs.resolve_sensor_def("night_publish_sensor").job_name == "overnight_publish_job"
    for name, nodes in {"overnight_generation_job": {"generated_images"}, "night_scores_job": {"night_scores"},
                        "overnight_publish_job": {"image_scores", "approved_images"}}.items():
        job = defs.resolve_job_def(name)
        assert {node.name for node in job.graph.node_dict.values()} == nodes, name
    for name in ("lora_ready_sensor", "quality_report_automation_sensor", "night_publish_sensor", "low_approval_sensor",
                 "run_failure_sensor", "generation_task_sensor"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


def test_cluster_runs_gpu_steps_in_their_own_pod_and_queen_nights_in_their_run_pod(tmp_path):
    from dagster_k8s import k8s_job_executor

    from hydra_assets.definitions import build_definitions, cluster_resources

    defs = build_definitions(cluster_resources(), env="cluster")
    for name in ("night_scores_job", "queen_lora_job", "queen_voice_job", "chapter_job"):
        assert defs.resolve_job_def(name).executor_def is k8s_job_executor, name
    # what the automation sensor launches (night_scores, the report) runs with the Definitions' executor
    assert defs.resolve_implicit_global_asset_job_def().executor_def is k8s_job_executor
    for name in ("overnight_job", "overnight_generation_job", "overnight_publish_job"):
        assert defs.resolve_job_def(name).executor_def is dg.in_process_executor, name
    assert defs.resolve_sensor_def("roster_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_sensor_def("quality_report_automation_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_sensor_def("generation_task_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    assert build_definitions(cluster_resources(), env="local").resolve_job_def("overnight_job").executor_def is not k8s_job_executor


def test_unknown_environment_is_refused():
    with pytest.raises(ValueError, match="HYDRA_ENV must be one of local, cluster"):
        load_settings({"HYDRA_ENV": "staging"})


def run_validate(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "HYDRA_ROSTER_DIR": str(tmp_path / "roster"),
        "HYDRA_STORAGE_ROOT": str(tmp_path / "storage"),
        "HYDRA_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        **env,
    }
    return subprocess.run(
        [str(DAGSTER), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_dagster_definitions_validate_local(tmp_path):
    result = run_validate(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_dagster_definitions_validate_cluster(tmp_path):
    result = run_validate(
        tmp_path,
        HYDRA_ENV="cluster",
        HYDRA_INSIGHTFACE_ROOT="/models/insightface",
        HYDRA_CATALOG_URL="postgresql://hydra:secret@db:5432/hydra",
        HYDRA_WEBHOOK_URL="https://chat.example/hooks/dummy",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_loudness_target_setting_reaches_the_voice_backend():
    from hydra_assets.definitions import local_resources
    from hydra_assets.settings import load_settings

    handheld = local_resources(load_settings({"HYDRA_LOUDNESS_TARGET_LUFS": "-18", "HYDRA_NIGHTS_START": "2026-01-01"}))
    assert handheld["voice"].loudness_target_lufs == -18.0
    assert local_resources(load_settings({"HYDRA_NIGHTS_START": "2026-01-01"}))["voice"].loudness_target_lufs == -23.0


def test_a_nights_gpu_pods_and_model_loads_do_not_grow_with_its_queens():
    """bench/overnight_scale.py's count from the cluster Definitions: one GPU pod and one load of each
    scoring model per night, whatever N; before, two GPU pods and one load per queen."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("overnight_scale", REPO / "bench" / "overnight_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    small, large = bench.cluster_plan(5), bench.cluster_plan(100)
    for plan in (small, large):
        assert (plan["night"]["gpu_pods"], plan["night"]["step_pods"], plan["night"]["scoring_model_loads"]) == (1, 1, 1)
    assert (large["today"]["gpu_pods"], large["today"]["step_pods"], large["today"]["scoring_model_loads"]) == (200, 300, 100)
    assert large["night"]["run_pods"] == 2 * 100 + 1


def test_the_llm_endpoint_is_used_only_when_one_is_configured():
    from hydra_assets.definitions import local_resources
    from hydra_assets.settings import load_settings
    from resources.llm import OpenAIPromptExpander, TemplatePromptExpander

    base = {"HYDRA_NIGHTS_START": "2026-01-01"}
    assert isinstance(local_resources(load_settings(base))["prompt_expander"], TemplatePromptExpander)
    expander = local_resources(load_settings({**base, "HYDRA_LLM_BASE_URL": "http://127.0.0.1:5000", "HYDRA_LLM_MODEL": "m"}))["prompt_expander"]
    assert isinstance(expander, OpenAIPromptExpander) and (expander.base_url, expander.model) == ("http://127.0.0.1:5000", "m")
