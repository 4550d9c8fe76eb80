"""Writing a reviewer's decision into the partition's overrides file, atomically.

The file stays the one people may also edit by hand (format in hydra_assets/domain/overrides.py):
the current file is parsed with the pipeline's own parser first, and a file that does not parse
is never replaced, since a decision in it could be lost. The new document is parsed again
before it is written. Comments in a hand-edited file are not kept.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import yaml

from hydra_assets.domain import overrides
from hydra_assets.domain.storage import atomic_write_bytes

REASON_MAX_LENGTH = 200
HEADER = (
    "# Manual decisions for this queen x night (image id -> decision, by, reason, at).\n"
    "# Written by `hydra review`; may be edited by hand. image_scores applies them.\n"
)

_lock = threading.Lock()
"""One writer at a time in this process; the Deployment runs one replica."""


class DecisionError(ValueError):
    """The decision cannot be written; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def write_decision(path: Path, image_id: str, decision: str, by: str, reason: str | None,
                   now: datetime | None = None) -> overrides.Override:
    if decision not in overrides.OVERRIDE_DECISIONS:
        raise DecisionError(400, f"decision must be one of {', '.join(overrides.OVERRIDE_DECISIONS)}, got {decision!r}")
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > REASON_MAX_LENGTH:
        raise DecisionError(400, f"reason is longer than {REASON_MAX_LENGTH} characters")
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    with _lock:
        try:
            current = overrides.load_overrides(path)
        except overrides.OverrideError as error:
            raise DecisionError(409, f"{error}; fix the file by hand, it is not replaced") from error
        document = {
            key: {k: v for k, v in (("decision", o.decision), ("by", o.by), ("reason", o.reason), ("at", o.at)) if v is not None}
            for key, o in current.items()
        }
        entry = {"decision": decision, "by": by, "at": at}
        if reason:
            entry["reason"] = reason
        document[image_id] = entry
        text = HEADER + yaml.safe_dump(document, sort_keys=True, allow_unicode=True)
        written = overrides.parse_overrides(text, path)[image_id]  # what image_scores will read
        atomic_write_bytes(path, text.encode("utf-8"))
    return written
