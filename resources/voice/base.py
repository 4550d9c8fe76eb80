"""The voice backend interface: plan a queen's lines, then synthesise the plan line by line.

Plans, outcomes and errors are plain data in ``hydra_assets/domain/voice_plan.py`` (re-exported
here); this module adds the resource every backend is: its identity, its plan, its batch loop,
the loudness its lines are mastered to, and whether its model runs in the step's own pod (which
decides the step's workload profile on the cluster).
"""

from __future__ import annotations

import abc
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field

from hydra_assets.domain.audio import Audio
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.loudness import DEFAULT_TARGET_LUFS, DEFAULT_TRUE_PEAK_DBTP
from hydra_assets.domain.roster import VoiceDNA
from hydra_assets.domain.voice_plan import (
    LINE_ERRORS,
    LineAudio,
    LinePlan,
    VoiceBackendUnavailable,
    VoiceConfigError,
    VoiceError,
    VoiceLineError,
    VoiceModelInfo,
    VoicePlan,
    VoiceRequestError,
    VoiceServerError,
    VoiceTimeoutError,
    primary_language,
)
from hydra_assets.domain.workloads import VOICE_IN_POD_PROFILE, VOICE_REMOTE_PROFILE

__all__ = [
    "LINE_ERRORS",
    "LineAudio",
    "LinePlan",
    "VoiceBackend",
    "VoiceBackendUnavailable",
    "VoiceConfigError",
    "VoiceError",
    "VoiceLineError",
    "VoiceModelInfo",
    "VoicePlan",
    "VoiceRequestError",
    "VoiceServerError",
    "VoiceTimeoutError",
    "normalize_key",
    "primary_language",
]


class VoiceBackend(dg.ConfigurableResource, abc.ABC):
    """A text-to-speech backend: plan a queen's lines, then synthesise a plan line by line."""

    loudness_target_lufs: float = Field(
        default=DEFAULT_TARGET_LUFS,
        ge=-40.0,
        le=-10.0,
        description="Integrated loudness (ITU-R BS.1770) every line is normalised to: -23 home, -18 handheld.",
    )
    true_peak_ceiling_dbtp: float = Field(
        default=DEFAULT_TRUE_PEAK_DBTP, le=0.0, description="No line's true peak (4x oversampled) goes above this."
    )

    model_type: ClassVar[str]
    """The ``voice_models.model_type`` this backend's rows carry."""
    runs_in_pod: ClassVar[bool] = True
    """The model runs in the calling process, so a cluster step needs the profile's GPU; an HTTP
    backend's model runs in the TTS server's pod and the step only waits on the network."""

    @classmethod
    def workload_profile(cls) -> str:
        """The workload profile of a step that synthesises with this backend (see ``runs_in_pod``)."""
        return VOICE_IN_POD_PROFILE if cls.runs_in_pod else VOICE_REMOTE_PROFILE

    @abc.abstractmethod
    def backend_name(self) -> str:
        """Identity recorded with every line, e.g. ``espeak-ng-1.52.0``."""

    @abc.abstractmethod
    def queen_setup(self, slug: str, voice: VoiceDNA, language: str) -> dict[str, Any]:
        """Queen-level settings; raise :class:`VoiceConfigError` naming what is missing."""

    @abc.abstractmethod
    def line_params(self, setup: Mapping[str, Any], line: DialogueLine, language: str) -> dict[str, Any]:
        """The request for one line."""

    @abc.abstractmethod
    def synthesize_one(self, setup: Mapping[str, Any], params: Mapping[str, Any]) -> Audio:
        """Synthesise one planned line; per-line problems raise :class:`VoiceLineError`."""

    def prepare(self, setup: Mapping[str, Any]) -> None:
        """Once per batch before the first line (e.g. load the queen's weights on the server)."""

    def model_info(self, voice: VoiceDNA) -> VoiceModelInfo:
        return VoiceModelInfo(self.model_type, list(voice.reference_clips), voice.trained_model_path)

    def plan(self, slug: str, voice: VoiceDNA, language: str, lines: Sequence[DialogueLine]) -> VoicePlan:
        setup = self.queen_setup(slug, voice, language)
        return VoicePlan(
            backend=self.backend_name(),
            setup=setup,
            lines=[LinePlan(line, self.line_params(setup, line, language)) for line in lines],
            model=self.model_info(voice),
        )

    def synthesize_batch(self, plan: VoicePlan) -> Iterator[LineAudio]:
        """Yield each line's outcome as soon as it is done, so the caller can store it at once.

        Per-line failures are yielded; batch failures (:class:`VoiceConfigError`,
        :class:`VoiceBackendUnavailable`) are raised.
        """
        if not plan.lines:
            return
        self.prepare(plan.setup)
        for line_plan in plan.lines:
            started = time.perf_counter()
            try:
                audio = self.synthesize_one(plan.setup, line_plan.params)
            except LINE_ERRORS as exc:
                yield LineAudio(line_plan.line.id, None, str(exc), time.perf_counter() - started)
                continue
            yield LineAudio(line_plan.line.id, audio, None, time.perf_counter() - started)



def normalize_key(text: str) -> str:
    """How table keys (accents, timbres) are compared: lowercase, single spaces, ``_`` as ``-``."""
    return re.sub(r"\s+", " ", text.strip().lower().replace("_", "-"))
