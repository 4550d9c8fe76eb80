"""What a voice backend is asked to say and what comes back: plans, outcomes and errors.

Pure data, no Dagster, so that the synthesis loop (``domain/voice_synthesis.py``) and the
backends (``resources/voice/``) share one vocabulary. A :class:`VoicePlan` holds the exact
parameters each line is sent with; lines are keyed by a hash of them (text included), so
anything that changes the audio must appear in them, and nothing else should.

Failures come in two kinds. Per line (:class:`VoiceLineError`, ``NotAudioError``): the line is
reported and the batch goes on. Per batch (:class:`VoiceConfigError`,
:class:`VoiceBackendUnavailable`): no later line could succeed, so the batch stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hydra_assets.domain.audio import Audio, NotAudioError
from hydra_assets.domain.dialogue import DialogueLine


class VoiceError(RuntimeError):
    """Base of every backend error; the message names the backend or endpoint and the rule."""


class VoiceConfigError(VoiceError):
    """The queen's voice cannot be set up on this backend (missing clip, unknown voice): stops the batch."""


class VoiceBackendUnavailable(VoiceError):
    """The backend cannot be reached at all (after retries): stops the batch."""


class VoiceLineError(VoiceError):
    """One line failed; the batch goes on."""


class VoiceRequestError(VoiceLineError):
    """The server refused the request (4xx); carries its status and its own message."""

    def __init__(self, endpoint: str, status: int, message: str):
        self.endpoint = endpoint
        self.status = status
        self.server_message = message
        super().__init__(f"{endpoint}: HTTP {status}: {message}")


class VoiceServerError(VoiceLineError):
    """The server kept failing (5xx after every retry) or broke the response."""


class VoiceTimeoutError(VoiceLineError):
    """No complete answer within the read timeout."""


LINE_ERRORS = (VoiceLineError, NotAudioError)


@dataclass(frozen=True)
class LinePlan:
    line: DialogueLine
    params: dict[str, Any]
    """Exactly what is sent for this line (JSON-serialisable); hashed with the plan's setup."""


@dataclass(frozen=True)
class VoiceModelInfo:
    """The queen's row in ``voice_models`` for this backend."""

    model_type: str
    reference_clips: list[str] = field(default_factory=list)
    model_path: str | None = None


@dataclass(frozen=True)
class VoicePlan:
    backend: str
    """Backend identity, with its version where it can be known (part of every line's hash)."""
    setup: dict[str, Any]
    """Queen-level settings every line shares (voice, reference clip, weights)."""
    lines: list[LinePlan]
    model: VoiceModelInfo

    def only(self, line_ids: set[str]) -> VoicePlan:
        return replace(self, lines=[p for p in self.lines if p.line.id in line_ids])


@dataclass(frozen=True)
class LineAudio:
    """One line's outcome: audio, or the error that stopped it."""

    line_id: str
    audio: Audio | None
    error: str | None
    seconds: float
    """Wall time spent on the line (request or synthesis), for the real-time factor."""


def primary_language(language: str) -> str:
    return language.split("-")[0].lower()

