"""GPT-SoVITS api_v2: the queen's own trained voice model, cloned from her reference clip."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from hydra_assets.domain.audio import Audio
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.roster import VoiceDNA
from resources.voice.base import VoiceConfigError, VoiceLineError, primary_language
from resources.voice.http import HttpVoiceBackend


def _transcript(clip: str) -> str:
    """The reference clip's transcript from a sidecar (``clip.txt`` or ``clip.lab``) when readable."""
    for suffix in (".txt", ".lab"):
        sidecar = Path(clip).expanduser().with_suffix(suffix)
        try:
            return re.sub(r"\s+", " ", sidecar.read_text(encoding="utf-8")).strip()
        except (OSError, UnicodeDecodeError):
            continue
    return ""


class GptSovitsBackend(HttpVoiceBackend):
    """GPT-SoVITS api_v2 (``POST /tts``): the queen's trained model, cloned from her reference clip.

    ``voice_dna.trained_model_path`` names the GPT weights (``*.ckpt``); the SoVITS weights are
    the ``.pth`` with the same stem beside it. Both are loaded on the server
    (``/set_gpt_weights``, ``/set_sovits_weights``) before the queen's lines. The reference
    clip's transcript (``prompt_text``) comes from a ``.txt`` or ``.lab`` sidecar when present.
    """

    url: str = "http://127.0.0.1:9880"
    prompt_lang: str = Field(default="en", description="Language of the reference clips' transcript.")
    text_lang: str | None = Field(default=None, description="Default: the dialogue's language.")
    top_k: int = Field(default=5, ge=1)
    top_p: float = Field(default=1.0, gt=0, le=1)
    temperature: float = Field(default=1.0, gt=0)
    seed: int = Field(default=0, description="Fixed, so that re-synthesising a line reproduces it.")
    text_split_method: str = "cut5"

    model_type: ClassVar[str] = "gpt-sovits"

    def backend_name(self) -> str:
        return "gpt-sovits-api-v2"

    def queen_setup(self, slug: str, voice: VoiceDNA, language: str) -> dict[str, Any]:
        clip = self.first_reference_clip(slug, voice)
        weights = None
        if voice.trained_model_path:
            gpt = voice.trained_model_path
            sovits = str(Path(gpt).with_suffix(".pth"))
            how = "train the queen's GPT-SoVITS model or fix voice_dna.trained_model_path (GPT .ckpt, SoVITS .pth beside it)"
            weights = {
                "gpt": self.checked_file(slug, gpt, "GPT weights (voice_dna.trained_model_path)", how),
                "sovits": self.checked_file(slug, sovits, "SoVITS weights", how),
            }
        return {
            "ref_audio_path": clip,
            "aux_ref_audio_paths": list(voice.reference_clips[1:]),
            "prompt_text": _transcript(clip),
            "prompt_lang": self.prompt_lang,
            "weights": weights,
        }

    def line_params(self, setup: Mapping[str, Any], line: DialogueLine, language: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "text": line.text,
            "text_lang": self.text_lang or primary_language(language),
            "ref_audio_path": setup["ref_audio_path"],
            "prompt_text": setup["prompt_text"],
            "prompt_lang": setup["prompt_lang"],
            "top_k": self.top_k,
            "top_p": self.top_p,
            "temperature": self.temperature,
            "text_split_method": self.text_split_method,
            "speed_factor": line.speed,
            "seed": self.seed,
            "media_type": "wav",
            "streaming_mode": False,
        }
        if setup["aux_ref_audio_paths"]:
            params["aux_ref_audio_paths"] = setup["aux_ref_audio_paths"]
        return params

    def prepare(self, setup: Mapping[str, Any]) -> None:
        weights = setup.get("weights")
        if not weights:
            return
        for route, path in (("/set_gpt_weights", weights["gpt"]), ("/set_sovits_weights", weights["sovits"])):
            try:
                self.request("GET", route, params={"weights_path": path})
            except VoiceLineError as exc:
                raise VoiceConfigError(f"cannot load the queen's weights {path}: {exc}") from exc

    def synthesize_one(self, setup: Mapping[str, Any], params: Mapping[str, Any]) -> Audio:
        return self.request_audio("POST", "/tts", json=dict(params))
