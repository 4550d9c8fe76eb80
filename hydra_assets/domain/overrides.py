"""Manual overrides: the file people write to publish or withhold an image, parsed strictly."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import yaml

# ------------------------------------------------------------------------------ manual overrides

OVERRIDE_DECISIONS = ("approve", "reject")
OVERRIDE_FIELDS = ("decision", "by", "reason", "at")


@dataclass(frozen=True)
class Override:
    image_id: str
    decision: str
    by: str
    reason: str | None = None
    at: str | None = None
    """When it was decided (ISO 8601; the review app writes it)."""

    @property
    def approved(self) -> bool:
        return self.decision == "approve"


class OverrideError(ValueError):
    """An overrides file that cannot be applied; names the file, the image and the rule."""

    def __init__(self, path: Path | str, image_id: str | None, rule: str):
        self.path = Path(path)
        self.image_id = image_id
        self.rule = rule
        where = f"{self.path}: {image_id}" if image_id is not None else str(self.path)
        super().__init__(f"{where}: {rule}")


OVERRIDES_EXAMPLE = "nova-sterling-2026-11-20-portrait-000: {decision: approve, by: maria, reason: pose is fine}"


def parse_overrides(text: str, path: Path | str) -> dict[str, Override]:
    """``image_id → {decision: approve|reject, by: name, reason?}``; any bad entry fails the file.

    People write this file to publish or withhold images, so a typo must stop the run rather
    than be skipped: a skipped "reject" would publish an image someone meant to keep out.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise OverrideError(path, None, f"is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise OverrideError(
            path, None, f"must map image ids to decisions (e.g. {OVERRIDES_EXAMPLE}), got {type(document).__name__}"
        )
    overrides: dict[str, Override] = {}
    for image_id, entry in document.items():
        image_id = str(image_id)
        if not isinstance(entry, dict):
            raise OverrideError(path, image_id, f"must be a mapping like {{decision: approve, by: name}}, got {entry!r}")
        unknown = sorted(set(map(str, entry)) - set(OVERRIDE_FIELDS))
        if unknown:
            raise OverrideError(path, image_id, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(OVERRIDE_FIELDS)}")
        decision = entry.get("decision")
        if decision not in OVERRIDE_DECISIONS:
            raise OverrideError(path, image_id, f"decision must be one of {', '.join(OVERRIDE_DECISIONS)}, got {decision!r}")
        by = entry.get("by")
        if not isinstance(by, str) or not by.strip():
            raise OverrideError(path, image_id, "by is required: the name of who decided")
        reason = entry.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise OverrideError(path, image_id, f"reason must be text, got {reason!r}")
        at = entry.get("at")
        if at is not None and not isinstance(at, str | datetime.date):
            raise OverrideError(path, image_id, f"at must be a date and time, got {at!r}")
        at = at.isoformat() if isinstance(at, datetime.date) else at
        overrides[image_id] = Override(image_id, decision, by.strip(), reason.strip() if reason else None, at)
    return overrides


def load_overrides(path: Path) -> dict[str, Override]:
    """The partition's overrides; a missing file means none."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OverrideError(path, None, f"cannot be read: {exc}") from exc
    return parse_overrides(text, path)
