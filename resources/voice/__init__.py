"""Voice backends: one interface, eSpeak NG embedded, the studio's TTS servers over HTTP.

One module per concern: ``base`` (the interface; plans and errors come from
``hydra_assets/domain/voice_plan.py``), ``espeak_engine`` (the ctypes binding) and ``espeak``
(the embedded backend), ``http`` (the transport the servers share), and one module per server
protocol: ``gpt_sovits``, ``kokoro``, ``xtts``.
"""

from resources.voice.base import (
    LINE_ERRORS,
    LineAudio,
    LinePlan,
    VoiceBackend,
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
from resources.voice.espeak import EMOTION_PROSODY, EspeakBackend
from resources.voice.espeak_engine import espeak_engine
from resources.voice.gpt_sovits import GptSovitsBackend
from resources.voice.http import HttpVoiceBackend
from resources.voice.kokoro import KokoroBackend
from resources.voice.xtts import XTTS_LANGUAGES, XttsBackend

__all__ = [
    "EMOTION_PROSODY",
    "LINE_ERRORS",
    "EspeakBackend",
    "GptSovitsBackend",
    "HttpVoiceBackend",
    "KokoroBackend",
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
    "XTTS_LANGUAGES",
    "XttsBackend",
    "espeak_engine",
    "primary_language",
]
