"""The SPEC's workload profiles and GPU classes: the one table cluster steps are tagged from.

Pure data and the rules the table must keep; ``hydra_assets/gpu.py`` turns a profile into
Dagster op tags and a dagster-k8s step pod. ``WORKLOADS`` is the SPEC's GPU table;
``CPU_WORKLOADS`` holds steps of a GPU kind that need no card of their own, each with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuClass:
    name: str
    vram_mb: int
    node: str


GPU_CLASSES = {
    gpu.name: gpu
    for gpu in (
        GpuClass("5090", 32768, "hydra-ai"),
        GpuClass("4090", 24576, "hydra-ai"),
        GpuClass("5070ti", 16384, "hydra-compute"),
        GpuClass("3060", 12288, "hydra-compute"),
    )
}

PRIORITIES = {"critical": 1000, "high": 100, "normal": 10, "low": 1, "idle": 0}
"""SPEC task priorities; a profile's ``priority_class`` ends in one of these levels."""


@dataclass(frozen=True)
class WorkloadProfile:
    name: str
    gpus: int
    min_vram_mb: int
    """Across all of the step's GPUs (llm-inference-70b needs 48000 MB on two cards)."""
    gpu_classes: tuple[str, ...]
    """Preferred classes, best first."""
    exclusive: bool
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    priority_class: str
    preemptible: bool
    max_duration_seconds: int | None
    reason: str = ""
    """Why the profile is as it is; required when it asks for no GPU."""
    pool: str | None = None
    """Concurrency pool; default: the first preferred GPU class's pool."""

    @property
    def priority_level(self) -> str:
        """``generation-high`` → ``high``."""
        return self.priority_class.rsplit("-", 1)[-1]

    @property
    def priority(self) -> int:
        """The numeric SPEC priority of ``priority_class`` (``generation-high`` → 100)."""
        return PRIORITIES[self.priority_level]

    @property
    def vram_per_gpu_mb(self) -> int:
        return math.ceil(self.min_vram_mb / self.gpus) if self.gpus else 0


WORKLOADS = {
    profile.name: profile
    for profile in (
        WorkloadProfile("image-generation-sdxl", 1, 10000, ("5070ti", "4090"), False, "2", "4", "16Gi", "32Gi",
                        "generation-high", True, None),
        WorkloadProfile("lora-training-sdxl", 1, 14000, ("5070ti",), True, "4", "8", "32Gi", "48Gi",
                        "training-normal", True, 4 * 3600),
        WorkloadProfile("voice-synthesis", 1, 8000, ("3060",), False, "2", "4", "8Gi", "16Gi",
                        "generation-high", True, None),
        WorkloadProfile("quality-scoring", 1, 4000, ("3060",), False, "1", "2", "4Gi", "8Gi",
                        "batch-low", True, 3600),
        WorkloadProfile("llm-inference-70b", 2, 48000, ("5090", "4090"), True, "4", "8", "32Gi", "64Gi",
                        "inference-critical", False, None),
    )
}


VOICE_IN_POD_PROFILE = "voice-synthesis"
"""Voice steps whose backend's model runs in the step's own process (and pod)."""
VOICE_REMOTE_PROFILE = "voice-synthesis-remote"
"""Voice steps that send every line to a TTS server (GPT-SoVITS, Kokoro, XTTS)."""
TTS_SERVER_POOL = "voice-tts"

CPU_WORKLOADS = {
    profile.name: profile
    for profile in (
        WorkloadProfile(
            VOICE_REMOTE_PROFILE, 0, 0, (), False, "500m", "2", "2Gi", "4Gi", "generation-high", True, None,
            reason=(
                "the TTS server's own pod holds the GPU and the model; this step only sends text and masters "
                "the returned WAVs, so a GPU here would reserve a 3060 nothing uses"
            ),
            # One step at a time per server: api_v2 and xtts-api-server synthesise one request at a
            # time, so parallel steps would only queue there and run into their read timeouts.
            pool=TTS_SERVER_POOL,
        ),
    )
}


def profile_problems(profile: WorkloadProfile, gpu_classes: Mapping[str, GpuClass] = GPU_CLASSES) -> list[str]:
    """Every rule of the table this profile breaks, as sentences naming the profile.

    The VRAM rule is the one that bites on the cluster: a step scheduled onto a class whose
    cards are too small dies of out-of-memory hours into its work, not at admission.
    """
    # Imported here: the kubernetes client takes a second to import and only validation needs it.
    from kubernetes.utils.quantity import parse_quantity

    where = f"workload profile {profile.name!r}"
    problems: list[str] = []
    if profile.gpus < 0:
        problems.append(f"{where}: gpus must be 0 or more, got {profile.gpus}")
        return problems
    if profile.gpus == 0:
        if profile.gpu_classes or profile.min_vram_mb:
            problems.append(f"{where}: asks for no GPU, so it takes no GPU classes and no VRAM")
        if not profile.reason.strip():
            problems.append(f"{where}: asks for no GPU and must say why (reason)")
        if not profile.pool:
            problems.append(f"{where}: asks for no GPU, so it must name its pool")
    elif not profile.gpu_classes:
        problems.append(f"{where}: needs at least one preferred GPU class")
    if len(set(profile.gpu_classes)) != len(profile.gpu_classes):
        problems.append(f"{where}: preferred GPU classes repeat: {', '.join(profile.gpu_classes)}")
    for name in profile.gpu_classes:
        gpu = gpu_classes.get(name)
        if gpu is None:
            problems.append(f"{where}: unknown GPU class {name!r}; known: {', '.join(gpu_classes)}")
        elif gpu.vram_mb * profile.gpus < profile.min_vram_mb:
            problems.append(
                f"{where}: GPU class {name} has {profile.gpus} x {gpu.vram_mb} MB of VRAM, "
                f"below the profile's minimum of {profile.min_vram_mb} MB"
            )
    if profile.priority_level not in PRIORITIES:
        problems.append(
            f"{where}: priority class {profile.priority_class!r} must end in one of {', '.join(PRIORITIES)}"
        )
    for kind, request, limit in (
        ("cpu", profile.cpu_request, profile.cpu_limit),
        ("memory", profile.memory_request, profile.memory_limit),
    ):
        try:
            if parse_quantity(request) > parse_quantity(limit):
                problems.append(f"{where}: {kind} request {request} exceeds its limit {limit}")
        except ValueError as exc:
            problems.append(f"{where}: {kind} {request!r}/{limit!r} is not a Kubernetes quantity ({exc})")
    if profile.max_duration_seconds is not None and profile.max_duration_seconds <= 0:
        problems.append(f"{where}: max duration must be positive seconds or None, got {profile.max_duration_seconds}")
    return problems


def validate_workloads(
    workloads: Mapping[str, WorkloadProfile] | None = None, gpu_classes: Mapping[str, GpuClass] = GPU_CLASSES
) -> None:
    """Raise one ValueError listing every broken rule, so a bad table fails at load, not on the cluster."""
    if workloads is None:
        if overlap := set(WORKLOADS) & set(CPU_WORKLOADS):
            raise ValueError(f"workload profiles defined twice: {', '.join(sorted(overlap))}")
        workloads = {**WORKLOADS, **CPU_WORKLOADS}
    problems = [problem for profile in workloads.values() for problem in profile_problems(profile, gpu_classes)]
    problems += [f"workload table key {key!r} names profile {p.name!r}" for key, p in workloads.items() if key != p.name]
    if problems:
        raise ValueError("invalid workload profiles:\n  " + "\n  ".join(problems))
