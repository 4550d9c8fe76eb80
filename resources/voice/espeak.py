"""eSpeak NG, the embedded default voice: formant synthesis on the CPU, no model files.

``EspeakBackend`` (embedded default) drives the eSpeak NG shared library that the
``espeakng-loader`` package ships, through ctypes; no system package, no network. Voice DNA
maps to eSpeak parameters as follows (fields where the studio may change the table):

=========================  ==================================================================
voice DNA                  eSpeak
=========================  ==================================================================
``accent``                 voice, via ``accent_voices`` (``american`` → ``en-us``, ``new york``
                           → ``en-us-nyc``, ``british`` → ``en``, ``scottish`` →
                           ``en-gb-scotland``, ...); an accent that already names an eSpeak
                           voice (``en-gb-x-rp``) is used as is. The voice must speak the
                           dialogue's language, otherwise the language's own voice is used.
``pitch`` low|medium|high  ``espeakPITCH`` 30 | 50 | 70 (0-100 within the variant's range)
``timbre``                 voice variant, via ``timbre_variants`` on the first known word:
                           warm → f3, clear/bright → f4, soft/breathy → f5, smooth/airy → f2,
                           husky/raspy → f1; otherwise ``default_variant`` (f3)
line ``emotion``           prosody: rate factor, pitch offset, ``espeakRANGE`` (EMOTION_PROSODY)
line ``speed``             ``espeakRATE`` = 175 wpm × speed × the emotion's rate factor
=========================  ==================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from hydra_assets.domain.audio import Audio, from_pcm16
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.roster import VoiceDNA
from resources.voice.base import VoiceBackend, VoiceConfigError, VoiceModelInfo, normalize_key, primary_language
from resources.voice.espeak_engine import (
    ESPEAK_BASE_RATE,
    ESPEAK_MAX_RATE,
    ESPEAK_MIN_RATE,
    EspeakEngine,
    espeak_engine,
)

ESPEAK_PITCH_LEVELS = {"low": 30, "medium": 50, "high": 70}
ESPEAK_ACCENT_VOICES = {
    "american": "en-us",
    "general american": "en-us",
    "us": "en-us",
    "new york": "en-us-nyc",
    "british": "en",  # eSpeak's British English voice is called "en"
    "english": "en",
    "received pronunciation": "en-gb-x-rp",
    "rp": "en-gb-x-rp",
    "scottish": "en-gb-scotland",
    "lancastrian": "en-gb-x-gbclan",
    "west midlands": "en-gb-x-gbcwmd",
    "caribbean": "en-029",
}
ESPEAK_TIMBRE_VARIANTS = {
    "warm": "f3",
    "clear": "f4",
    "bright": "f4",
    "soft": "f5",
    "breathy": "f5",
    "smooth": "f2",
    "airy": "f2",
    "husky": "f1",
    "raspy": "f1",
}
EMOTION_PROSODY: dict[str, tuple[float, int, int]] = {
    # emotion: (rate factor, pitch offset on 0-100, espeakRANGE 0-100; eSpeak's default range is 50)
    "neutral": (1.00, 0, 50),
    "calm": (0.92, -4, 35),
    "happy": (1.05, 6, 70),
    "excited": (1.15, 10, 85),
    "sad": (0.85, -8, 25),
    "angry": (1.10, 4, 80),
    "fearful": (1.12, 8, 65),
    "surprised": (1.00, 12, 90),
    "serious": (0.95, -6, 30),
}


def _clamp(value: float, low: int, high: int) -> int:
    return int(min(max(round(value), low), high))


class EspeakBackend(VoiceBackend):
    """eSpeak NG from the ``espeakng-loader`` wheel: formant synthesis on the CPU, no model files."""

    library_path: str | None = Field(default=None, description="libespeak-ng; default: espeakng_loader's copy.")
    data_path: str | None = Field(default=None, description="espeak-ng-data folder; default: espeakng_loader's.")
    default_voice: str = Field(default="en-us", description="Voice for English when the accent maps to none.")
    default_variant: str = Field(default="f3", description="Variant when the timbre maps to none (queens: female).")
    base_rate_wpm: int = Field(default=ESPEAK_BASE_RATE, ge=ESPEAK_MIN_RATE, le=ESPEAK_MAX_RATE)
    accent_voices: dict[str, str] = Field(default_factory=lambda: dict(ESPEAK_ACCENT_VOICES))
    timbre_variants: dict[str, str] = Field(default_factory=lambda: dict(ESPEAK_TIMBRE_VARIANTS))
    pitch_levels: dict[str, int] = Field(default_factory=lambda: dict(ESPEAK_PITCH_LEVELS))

    model_type: ClassVar[str] = "espeak"

    def engine(self) -> EspeakEngine:
        library, data = self.library_path, self.data_path
        if library is None or data is None:
            try:
                import espeakng_loader
            except ImportError as exc:
                raise VoiceConfigError(
                    "espeakng-loader is not installed: pip install espeakng-loader, "
                    "or set EspeakBackend.library_path and data_path to a local eSpeak NG"
                ) from exc
            library = library or espeakng_loader.get_library_path()
            data = data or espeakng_loader.get_data_path()
        for path, name in ((library, "library_path"), (data, "data_path")):
            if not Path(path).exists():
                raise VoiceConfigError(f"eSpeak NG {name} {path} does not exist: reinstall espeakng-loader or fix it")
        return espeak_engine(str(library), str(data))

    def backend_name(self) -> str:
        return f"espeak-ng-{self.engine().version}"

    def model_info(self, voice: VoiceDNA) -> VoiceModelInfo:
        return VoiceModelInfo(self.model_type, [], None)

    def resolve_voice(self, voice: VoiceDNA, language: str) -> str:
        """``voice+variant`` for the queen (see the module's table), checked against the library."""
        engine = self.engine()
        language = primary_language(language)
        accent = normalize_key(voice.accent)
        table = {normalize_key(k): v for k, v in self.accent_voices.items()}
        name = table.get(accent)
        if name is None and accent and re.fullmatch(r"[a-z0-9-]+", accent) and engine.has_voice(accent):
            name = accent  # already an eSpeak voice id, e.g. en-gb-x-rp
        if name is None and accent:
            for key in sorted(table, key=len, reverse=True):
                if re.search(rf"(^|\W){re.escape(key)}($|\W)", accent):
                    name = table[key]
                    break
        if name is None or primary_language(name) != language:
            name = self.default_voice if language == primary_language(self.default_voice) else language
        variant = self.default_variant
        variants = {normalize_key(k): v for k, v in self.timbre_variants.items()}
        for word in re.findall(r"[a-z]+", voice.timbre.lower()):
            if word in variants:
                variant = variants[word]
                break
        spec = f"{name}+{variant}" if variant else name
        if not engine.has_voice(spec) or (variant and not engine.has_variant(variant)):
            raise VoiceConfigError(
                f"eSpeak NG has no voice {spec!r} (from accent {voice.accent!r}, timbre {voice.timbre!r}, "
                f"language {language!r}): fix EspeakBackend.accent_voices / timbre_variants / default_voice"
            )
        return spec

    def queen_setup(self, slug: str, voice: VoiceDNA, language: str) -> dict[str, Any]:
        if voice.pitch not in self.pitch_levels:
            raise VoiceConfigError(f"{slug}: voice_dna.pitch {voice.pitch!r} has no eSpeak level in pitch_levels")
        engine = self.engine()
        return {
            "voice": self.resolve_voice(voice, language),
            "pitch": self.pitch_levels[voice.pitch],
            "sample_rate": engine.sample_rate,
        }

    def line_params(self, setup: Mapping[str, Any], line: DialogueLine, language: str) -> dict[str, Any]:
        rate_factor, pitch_offset, pitch_range = EMOTION_PROSODY.get(line.emotion, EMOTION_PROSODY["neutral"])
        return {
            "text": line.text,
            "voice": setup["voice"],
            "rate": _clamp(self.base_rate_wpm * line.speed * rate_factor, ESPEAK_MIN_RATE, ESPEAK_MAX_RATE),
            "pitch": _clamp(setup["pitch"] + pitch_offset, 0, 100),
            "range": _clamp(pitch_range, 0, 100),
        }

    def synthesize_one(self, setup: Mapping[str, Any], params: Mapping[str, Any]) -> Audio:
        engine = self.engine()
        samples = engine.synthesize(params["voice"], params["rate"], params["pitch"], params["range"], params["text"])
        return from_pcm16(samples, engine.sample_rate)
