"""Kokoro-FastAPI: stock voices over the OpenAI-style speech endpoint, no cloning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from hydra_assets.domain.audio import Audio
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.roster import VoiceDNA
from resources.voice.base import VoiceModelInfo, normalize_key
from resources.voice.http import HttpVoiceBackend


class KokoroBackend(HttpVoiceBackend):
    """Kokoro-FastAPI's OpenAI-style ``POST /v1/audio/speech``: stock voices, no cloning.

    Kokoro has no pitch or timbre controls: a queen's voice is ``voice_by_queen[slug]`` (a voice
    or a blend such as ``af_bella+af_sky``), else the voice for her accent, else ``default_voice``.
    """

    url: str = "http://127.0.0.1:8880"
    model: str = "kokoro"
    default_voice: str = "af_heart"
    voice_by_accent: dict[str, str] = Field(
        default_factory=lambda: {
            "american": "af_heart",
            "general american": "af_heart",
            "en-us": "af_heart",
            "british": "bf_emma",
            "en-gb": "bf_emma",
        }
    )
    voice_by_queen: dict[str, str] = Field(default_factory=dict)

    model_type: ClassVar[str] = "kokoro"

    def backend_name(self) -> str:
        return f"kokoro-fastapi-{self.model}"

    def model_info(self, voice: VoiceDNA) -> VoiceModelInfo:
        return VoiceModelInfo(self.model_type, [], None)

    def queen_setup(self, slug: str, voice: VoiceDNA, language: str) -> dict[str, Any]:
        by_accent = {normalize_key(k): v for k, v in self.voice_by_accent.items()}
        name = self.voice_by_queen.get(slug) or by_accent.get(normalize_key(voice.accent)) or self.default_voice
        return {"voice": name}

    def line_params(self, setup: Mapping[str, Any], line: DialogueLine, language: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "input": line.text,
            "voice": setup["voice"],
            "response_format": "wav",
            "speed": line.speed,
            "stream": False,  # Kokoro-FastAPI streams by default
        }

    def synthesize_one(self, setup: Mapping[str, Any], params: Mapping[str, Any]) -> Audio:
        return self.request_audio("POST", "/v1/audio/speech", json=dict(params))
