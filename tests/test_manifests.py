"""The step Jobs of GPU assets, as dagster-k8s builds them from deploy/values.yaml, against Kubernetes' schema."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import dagster as dg
import kubernetes_validate
import pytest
import yaml

from hydra_assets.domain.workloads import CPU_WORKLOADS, VOICE_REMOTE_PROFILE, WORKLOADS
from hydra_assets.gpu import GPU_CLASS_LABEL, GPU_RESOURCE, SAFE_TO_EVICT_ANNOTATION, WORKLOAD_LABEL, WORKLOAD_TAG, gpu_asset_kwargs

REPO = Path(__file__).resolve().parents[1]
K8S_VERSIONS = ("1.33", kubernetes_validate.latest_version())
"""The oldest Kubernetes the studio's nodes may run, and the newest the validator knows."""


def _load_renderer():
    spec = importlib.util.spec_from_file_location("hydra_render_manifests", REPO / "deploy" / "render_manifests.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


render = _load_renderer()


def _step_key(profile_name: str) -> str:
    return "gpu__" + profile_name.replace("-", "_")


def sample_definitions() -> dg.Definitions:
    """One GPU asset per profile (asset keys with a path, as the studio's may have), one CPU asset, one job."""
    assets = []
    for name in WORKLOADS:
        @dg.asset(key=["gpu", name.replace("-", "_")], **gpu_asset_kwargs(name))
        def gpu_asset() -> None:
            return None

        assets.append(gpu_asset)

    @dg.asset
    def roster_summary() -> None:
        return None

    overnight = dg.define_asset_job(
        "overnight_sample_job", selection=dg.AssetSelection.assets(["gpu", "image_generation_sdxl"], ["gpu", "quality_scoring"])
    )
    return dg.Definitions(assets=[*assets, roster_summary], jobs=[overnight])


SAMPLE_DEFS = sample_definitions()


@pytest.fixture(scope="module")
def helm():
    return render.HelmValues.load(REPO / "deploy" / "values.yaml")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, helm):
    out = tmp_path_factory.mktemp("manifests")
    paths = render.render_manifests(SAMPLE_DEFS, out, helm)
    return {step: yaml.safe_load(path.read_text()) for step, path in paths.items()}


def _pod(manifest):
    return manifest["spec"]["template"]["spec"]


def _container(manifest):
    (container,) = _pod(manifest)["containers"]
    return container


def test_every_gpu_asset_and_only_those_get_a_manifest(rendered):
    assert set(rendered) == {_step_key(name) for name in WORKLOADS}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_manifest_validates_against_kubernetes(rendered, name, version):
    manifest = rendered[_step_key(name)]
    assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
    kubernetes_validate.validate(manifest, version, strict=True)


def test_the_validator_catches_a_broken_manifest(rendered):
    manifest = copy.deepcopy(rendered[_step_key("quality-scoring")])
    _pod(manifest)["activeDeadlineSeconds"] = "1h"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSIONS[0], strict=True)
    manifest = copy.deepcopy(rendered[_step_key("quality-scoring")])
    _pod(manifest)["nodeSelectr"] = _pod(manifest).pop("nodeSelector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_manifest_carries_the_workload_profile(rendered, name):
    profile = WORKLOADS[name]
    manifest = rendered[_step_key(name)]
    pod, container = _pod(manifest), _container(manifest)

    assert container["resources"] == {
        "limits": {"cpu": profile.cpu_limit, "memory": profile.memory_limit, GPU_RESOURCE: str(profile.gpus)},
        "requests": {"cpu": profile.cpu_request, "memory": profile.memory_request},
    }
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    if len(profile.gpu_classes) == 1:
        assert pod["nodeSelector"] == {GPU_CLASS_LABEL: profile.gpu_classes[0]}
        assert "affinity" not in pod
    else:
        assert "nodeSelector" not in pod
        affinity = pod["affinity"]["nodeAffinity"]
        terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchExpressions": [{"key": GPU_CLASS_LABEL, "operator": "In", "values": list(profile.gpu_classes)}]}]
        best = max(affinity["preferredDuringSchedulingIgnoredDuringExecution"], key=lambda entry: entry["weight"])
        assert best["preference"]["matchExpressions"][0]["values"] == [profile.gpu_classes[0]]
    if profile.max_duration_seconds:
        assert pod["activeDeadlineSeconds"] == profile.max_duration_seconds
    else:
        assert "activeDeadlineSeconds" not in pod
    metadata = manifest["spec"]["template"]["metadata"]
    assert metadata["labels"][WORKLOAD_LABEL] == name
    assert metadata["labels"]["dagster/op"] == _step_key(name)
    assert (metadata.get("annotations", {}).get(SAFE_TO_EVICT_ANNOTATION) == "false") == (not profile.preemptible)


def test_manifest_carries_the_cluster_wiring_from_the_helm_values(rendered, helm):
    deployment = helm.deployment()
    for manifest in rendered.values():
        pod, container = _pod(manifest), _container(manifest)
        assert container["image"] == helm.image(deployment)
        assert container["args"] == ["dagster", "api", "execute_step"]
        env = {item["name"]: item for item in container["env"]}
        assert env["HYDRA_ENV"]["value"] == "cluster"
        assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "dagster-postgresql-secret", "key": "postgresql-password",
        }
        assert {"secretRef": {"name": "hydra-secrets"}} in container["envFrom"]
        # The same PVCs come from the run launcher and the user deployment: dagster-k8s must dedupe them.
        volume_names = [volume["name"] for volume in pod["volumes"]]
        assert sorted(volume_names) == ["hydra-models", "hydra-storage"]
        mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
        assert len(mounts) == len(container["volumeMounts"]) == 2
        assert mounts["hydra-models"]["readOnly"] is True and mounts["hydra-storage"]["mountPath"] == "/mnt/hydra"
        assert manifest["metadata"]["namespace"] == helm.namespace
        assert pod["restartPolicy"] == "Never" and manifest["spec"]["backoffLimit"] == 0
    generation = rendered[_step_key("image-generation-sdxl")]["metadata"]["labels"]
    assert generation["dagster/job"] == "overnight_sample_job"
    assert generation["dagster/code-location"] == "hydra-assets"


def test_real_definitions_get_a_valid_manifest_for_each_gpu_step(tmp_path, helm):
    from hydra_assets.definitions import defs

    global_job = defs.resolve_implicit_global_asset_job_def()
    tagged = {key for key, node in render._op_nodes(global_job.graph) if WORKLOAD_TAG in node.tags}
    paths = render.render_manifests(defs, tmp_path, helm)
    # image_scores gates from night_scores' raw scores on the CPU; night_scores is the night's one scoring pod
    assert tagged == {"queen_lora", "generated_images", "night_scores", "voice_lines", "chapter_dialogue", "scene_images"}
    assert set(paths) == tagged
    for path in paths.values():
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), K8S_VERSIONS[-1], strict=True)


def test_cluster_voice_step_with_a_tts_server_gets_a_valid_cpu_only_manifest(tmp_path, helm):
    from hydra_assets.definitions import build_definitions, cluster_resources

    defs = build_definitions(cluster_resources(), env="cluster")
    paths = render.render_manifests(defs, tmp_path, helm)
    assert set(paths) == {"queen_lora", "generated_images", "night_scores", "voice_lines", "chapter_dialogue", "scene_images"}
    for step in ("voice_lines", "chapter_dialogue"):
        _assert_cpu_only_voice_step(yaml.safe_load(paths[step].read_text()))
    # The GPU steps are unchanged by the voice backend.
    lora = _container(yaml.safe_load(paths["queen_lora"].read_text()))
    assert lora["resources"]["limits"][GPU_RESOURCE] == "1"


def _assert_cpu_only_voice_step(voice: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(voice, version, strict=True)
    profile = CPU_WORKLOADS[VOICE_REMOTE_PROFILE]
    pod, container = _pod(voice), _container(voice)
    assert container["resources"] == {
        "limits": {"cpu": profile.cpu_limit, "memory": profile.memory_limit},
        "requests": {"cpu": profile.cpu_request, "memory": profile.memory_request},
    }
    assert "nodeSelector" not in pod and "affinity" not in pod
    assert all(t.get("key") != GPU_RESOURCE for t in pod.get("tolerations") or [])
    metadata = voice["spec"]["template"]["metadata"]
    assert metadata["labels"][WORKLOAD_LABEL] == VOICE_REMOTE_PROFILE
    assert metadata["annotations"]["hydra.io/workload-reason"] == profile.reason


def test_cli_writes_into_manifests_dir_and_clears_only_its_own_stale_files(tmp_path, monkeypatch, capsys):
    (tmp_path / "gone_step.yaml").write_text(render.HEADER + " earlier\nkind: Job\n")
    (tmp_path / "notes.yaml").write_text("kind: ConfigMap\n")
    monkeypatch.setenv("MANIFESTS_DIR", str(tmp_path))
    assert render.main(["--definitions", "tests.test_manifests:SAMPLE_DEFS"]) == 0
    written = {path.name for path in tmp_path.glob("*.yaml")}
    assert written == {f"{_step_key(name)}.yaml" for name in WORKLOADS} | {"notes.yaml"}
    assert _step_key("voice-synthesis") in capsys.readouterr().out


def test_the_instance_the_chart_configures_loads_in_dagster_with_the_spec_limits(tmp_path, helm):
    config = helm.instance_config()
    config["run_launcher"]["config"].update(
        load_incluster_config=False, kubeconfig_file=render._render_kubeconfig(str(tmp_path), helm.namespace)
    )
    with dg.instance_for_test(overrides=config) as instance:
        launcher = instance.run_launcher
        assert type(launcher).__name__ == "K8sRunLauncher"
        assert launcher.env_secrets == ["hydra-secrets"]
        assert {volume["name"] for volume in launcher.volumes} == {"hydra-storage", "hydra-models"}
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        concurrency = instance.get_concurrency_config()
        limits = {limit["key"]: limit for limit in concurrency.run_queue_config.tag_concurrency_limits}
        assert limits["hydra/overnight"]["limit"] == 1
        assert limits["hydra/lora-queen"] == {"key": "hydra/lora-queen", "limit": 1, "value": {"applyLimitPerUniqueValue": True}}
        assert concurrency.pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled


def test_queue_limits_set_twice_would_break_the_instance(tmp_path, helm):
    """Why values.yaml empties queuedRunCoordinator: the chart then writes a limit Dagster refuses."""
    values = copy.deepcopy(dict(helm.values))
    values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["dequeueUseThreads"] = True
    config = render.HelmValues(values, helm.release, helm.namespace).instance_config()
    assert config["run_coordinator"]["config"]["max_concurrent_runs"] == -1
    config["run_launcher"]["config"].update(
        load_incluster_config=False, kubeconfig_file=render._render_kubeconfig(str(tmp_path), helm.namespace)
    )
    with pytest.raises(dg.DagsterInvalidConfigError, match="incompatible with the `concurrency > runs` config"):
        with dg.instance_for_test(overrides=config):
            pass
