"""Cluster steps: a workload profile becomes the asset's op tags, concurrency pool and run priority.

A GPU profile asks for its cards, tolerates the GPU taint and is placed on its classes' nodes;
a CPU profile (``CPU_WORKLOADS``) asks for none of that, and its pod carries the reason.

The tags are inert in-process (local); under dagster-k8s's ``k8s_job_executor`` the
``dagster-k8s/config`` op tag shapes each step's pod (job-level tags reach only the run pod).
Assets call ``gpu_asset_kwargs(profile)`` and splat the result into ``@dg.asset``; jobs add
``run_priority_tags(profile)`` to their tags so the run queue serves urgent work first.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY, UserDefinedDagsterK8sConfig, get_user_defined_k8s_config

from hydra_assets.domain.workloads import CPU_WORKLOADS, GPU_CLASSES, WORKLOADS, WorkloadProfile, validate_workloads

WORKLOAD_TAG = "hydra/workload"
K8S_CONFIG_TAG = USER_DEFINED_K8S_CONFIG_KEY  # "dagster-k8s/config"
PRIORITY_TAG = "dagster/priority"
"""Read by the QueuedRunCoordinator (run order) and by pool slot claims and step order (op tag)."""
GPU_RESOURCE = "nvidia.com/gpu"
GPU_CLASS_LABEL = "hydra.io/gpu-class"
WORKLOAD_LABEL = "hydra.io/workload"
SAFE_TO_EVICT_ANNOTATION = "cluster-autoscaler.kubernetes.io/safe-to-evict"
WORKLOAD_REASON_ANNOTATION = "hydra.io/workload-reason"

validate_workloads()


def profile(name: str) -> WorkloadProfile:
    try:
        return WORKLOADS.get(name) or CPU_WORKLOADS[name]
    except KeyError:
        known = ", ".join(sorted({*WORKLOADS, *CPU_WORKLOADS}))
        raise KeyError(f"unknown workload profile {name!r}; known: {known}") from None


def pool_for_class(gpu_class: str) -> str:
    return f"gpu-{gpu_class}"


def gpu_pool(name: str) -> str:
    """The pool of the profile's first preferred class, so two steps never fight for one card.

    A step may land on a later class of its list (image generation on the 4090); it still holds
    the first class's slot, which errs on the side of fewer steps at once. A profile that names
    its own pool (every CPU profile) holds that one.
    """
    p = profile(name)
    return p.pool or pool_for_class(p.gpu_classes[0])


def gpu_pools() -> dict[str, str]:
    """Pool name → GPU class, one per class in the SPEC (what ``deploy/pool_limits.sh`` sets)."""
    return {pool_for_class(name): name for name in GPU_CLASSES}


def run_priority(*names: str) -> int:
    """SPEC priority of the most urgent of the given profiles (a run is as urgent as its top step)."""
    if not names:
        raise ValueError("run_priority needs at least one workload profile name")
    return max(profile(name).priority for name in names)


def run_priority_tags(name: str, *more: str) -> dict[str, str]:
    """``{"dagster/priority": "100"}`` for a job whose GPU steps use these profiles."""
    return {PRIORITY_TAG: str(run_priority(name, *more))}


def _node_placement(p: WorkloadProfile) -> dict[str, Any]:
    """One class → a node selector; a list → required node affinity over all of them, best first preferred."""
    if len(p.gpu_classes) == 1:
        return {"node_selector": {GPU_CLASS_LABEL: p.gpu_classes[0]}}
    ranked = len(p.gpu_classes)
    return {
        "affinity": {
            "node_affinity": {
                "required_during_scheduling_ignored_during_execution": {
                    "node_selector_terms": [
                        {"match_expressions": [{"key": GPU_CLASS_LABEL, "operator": "In", "values": list(p.gpu_classes)}]}
                    ]
                },
                "preferred_during_scheduling_ignored_during_execution": [
                    {
                        "weight": round(100 * (ranked - rank) / ranked),
                        "preference": {
                            "match_expressions": [{"key": GPU_CLASS_LABEL, "operator": "In", "values": [gpu_class]}]
                        },
                    }
                    for rank, gpu_class in enumerate(p.gpu_classes)
                ],
            }
        }
    }


def _build_cpu_step_config(p: WorkloadProfile) -> dict[str, Any]:
    """No GPU, no GPU toleration, no GPU node placement: the pod goes wherever CPU is free."""
    pod_spec: dict[str, Any] = {}
    if p.max_duration_seconds:
        pod_spec["active_deadline_seconds"] = p.max_duration_seconds
    annotations = {WORKLOAD_REASON_ANNOTATION: p.reason}
    if not p.preemptible:
        annotations[SAFE_TO_EVICT_ANNOTATION] = "false"
    config: dict[str, Any] = {
        "container_config": {
            "resources": {
                "requests": {"cpu": p.cpu_request, "memory": p.memory_request},
                "limits": {"cpu": p.cpu_limit, "memory": p.memory_limit},
            }
        },
        "pod_template_spec_metadata": {"labels": {WORKLOAD_LABEL: p.name}, "annotations": annotations},
    }
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return config


def _build_step_config(name: str) -> dict[str, Any]:
    p = profile(name)
    if p.gpus == 0:
        return _build_cpu_step_config(p)
    pod_spec: dict[str, Any] = {
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        **_node_placement(p),
    }
    if p.max_duration_seconds:
        # On the pod, not the Job: the clock starts once the pod runs, so time spent Pending
        # while a card is busy does not count against the step.
        pod_spec["active_deadline_seconds"] = p.max_duration_seconds
    metadata: dict[str, Any] = {"labels": {WORKLOAD_LABEL: p.name}}
    if not p.preemptible:
        metadata["annotations"] = {SAFE_TO_EVICT_ANNOTATION: "false"}
    return {
        "container_config": {
            "resources": {
                "requests": {"cpu": p.cpu_request, "memory": p.memory_request},
                "limits": {"cpu": p.cpu_limit, "memory": p.memory_limit, GPU_RESOURCE: str(p.gpus)},
            }
        },
        "pod_template_spec_metadata": metadata,
        "pod_spec_config": pod_spec,
    }


def parse_step_config(config: dict[str, Any]) -> UserDefinedDagsterK8sConfig:
    """Parse a ``dagster-k8s/config`` value exactly as the k8s step handler does.

    dagster-k8s checks the top-level keys against its schema and every nested key against the
    Kubernetes client models, so a misspelt field fails here rather than on the cluster.
    """
    return get_user_defined_k8s_config({K8S_CONFIG_TAG: json.dumps(config)})


@functools.lru_cache(maxsize=None)
def _checked_step_config(name: str) -> dict[str, Any]:
    config = _build_step_config(name)
    try:
        parse_step_config(config)
    except Exception as exc:
        raise ValueError(f"workload profile {name!r} builds a dagster-k8s/config that dagster-k8s rejects: {exc}") from exc
    return config


def k8s_step_config(name: str) -> dict[str, Any]:
    """The ``dagster-k8s/config`` op tag value for a profile (a fresh copy each call)."""
    return copy.deepcopy(_checked_step_config(name))


def gpu_asset_kwargs(name: str) -> dict[str, Any]:
    """``op_tags`` and ``pool`` for an asset whose step runs as the profile says (GPU or CPU profile)."""
    return {
        "op_tags": {
            WORKLOAD_TAG: name,
            PRIORITY_TAG: str(profile(name).priority),
            K8S_CONFIG_TAG: k8s_step_config(name),
        },
        "pool": gpu_pool(name),
    }
