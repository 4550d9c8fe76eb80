"""eSpeak NG through ctypes: the shared library that the ``espeakng-loader`` wheel ships.

No system package, no network. The library keeps global state (one voice, one callback), so
the process has one engine per library and every call holds its lock.
"""

from __future__ import annotations

import ctypes
import functools
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from hydra_assets.domain.voice_plan import VoiceConfigError, VoiceLineError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
"""Without it espeak_Initialize calls exit() on a bad data path, taking the whole step with it."""
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 3, 4
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

ESPEAK_MIN_RATE, ESPEAK_MAX_RATE = 80, 450
"""Words per minute eSpeak accepts."""
ESPEAK_BASE_RATE = 175
"""eSpeak's own default rate (words per minute)."""


class EspeakEngine:
    """The process's eSpeak NG: the library keeps global state, so every call holds one lock."""

    def __init__(self, library_path: str, data_path: str):
        lib = ctypes.CDLL(library_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if sample_rate <= 0:
            raise VoiceConfigError(f"eSpeak NG ({library_path}) failed to initialise with data folder {data_path}")
        self._lib = lib
        self.data_path = Path(data_path)
        self.sample_rate = sample_rate
        self.version = (lib.espeak_Info(None) or b"unknown").decode()
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept referenced: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # continue

    def has_variant(self, variant: str) -> bool:
        """eSpeak ignores an unknown ``+variant`` silently, so variants are checked as files."""
        return bool(re.fullmatch(r"[A-Za-z0-9_-]+", variant)) and (self.data_path / "voices" / "!v" / variant).is_file()

    def has_voice(self, name: str) -> bool:
        with self.lock:
            return self._lib.espeak_SetVoiceByName(name.encode()) == _EE_OK

    def synthesize(self, voice: str, rate: int, pitch: int, pitch_range: int, text: str) -> np.ndarray:
        """int16 samples at :attr:`sample_rate`."""
        with self.lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise VoiceConfigError(f"eSpeak NG has no voice {voice!r}")
            for parameter, value in ((_ESPEAK_RATE, rate), (_ESPEAK_PITCH, pitch), (_ESPEAK_RANGE, pitch_range)):
                self._lib.espeak_SetParameter(parameter, value, 0)
            self._chunks = []
            data = text.encode("utf-8")
            buffer = ctypes.create_string_buffer(data)
            status = self._lib.espeak_Synth(buffer, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if status != _EE_OK:
            raise VoiceLineError(f"eSpeak NG espeak_Synth failed with status {status} for {text[:60]!r}")
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


@functools.lru_cache(maxsize=2)
def espeak_engine(library_path: str, data_path: str) -> EspeakEngine:
    """One engine per process and library: espeak_Initialize is not meant to run twice."""
    return EspeakEngine(library_path, data_path)

