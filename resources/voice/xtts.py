"""xtts-api-server: XTTS v2 cloning the queen's voice from her reference clip."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from hydra_assets.domain.audio import Audio
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.roster import VoiceDNA
from resources.voice.base import primary_language
from resources.voice.http import HttpVoiceBackend


XTTS_LANGUAGES = {"zh": "zh-cn"}
"""Dialogue language → XTTS language code where they differ."""


class XttsBackend(HttpVoiceBackend):
    """xtts-api-server's ``POST /tts_to_audio/``: XTTS v2 cloning the queen's reference clip.

    The server takes no per-request speed (it is a server-wide setting), so a line's ``speed``
    is not sent and not part of its hash.
    """

    url: str = "http://127.0.0.1:8020"
    language: str | None = Field(default=None, description="Default: the dialogue's language.")

    model_type: ClassVar[str] = "xtts"

    def backend_name(self) -> str:
        return "xtts-api-server"

    def queen_setup(self, slug: str, voice: VoiceDNA, language: str) -> dict[str, Any]:
        return {"speaker_wav": self.first_reference_clip(slug, voice)}

    def line_params(self, setup: Mapping[str, Any], line: DialogueLine, language: str) -> dict[str, Any]:
        code = self.language or XTTS_LANGUAGES.get(primary_language(language), primary_language(language))
        return {"text": line.text, "speaker_wav": setup["speaker_wav"], "language": code}

    def synthesize_one(self, setup: Mapping[str, Any], params: Mapping[str, Any]) -> Audio:
        return self.request_audio("POST", "/tts_to_audio/", json=dict(params))
