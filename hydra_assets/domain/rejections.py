"""Why each image was rejected, in words and numbers: ``overnight/{night}/rejected/{slug}/reasons.json``.

The rejected folder holds the files; this document beside them says, per image id, the reason
(the first failed gate, as the gate names it), which score failed and by how much, the
thresholds it was held to, the near-duplicate it lost to, and which file in the folder it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from hydra_assets.domain.quality import (
    AESTHETIC,
    COMPOSITE,
    FACE_MATCH,
    REASON_MANUAL,
    REASON_NEAR_DUPLICATE,
    REASON_NO_FACE,
    TECHNICAL,
    Thresholds,
)

REASONS_FILE = "reasons.json"
REASONS_VERSION = 1

SCORE_TYPES = {"aesthetic": AESTHETIC, "technical": TECHNICAL, "face_match": FACE_MATCH}
"""The gated score types, by the names Thresholds and the roster use, and their score columns."""
GATE_PREFIXES = {"face<": "face_match", "technical<": "technical", "aesthetic<": "aesthetic"}
SCORE_DIGITS = {"aesthetic": 2, "technical": 1, "face_match": 3}
SCORE_LABELS = {"aesthetic": "aesthetic", "technical": "technical", "face_match": "face"}


def gate_of(reason: str | None) -> str | None:
    """The score type a rejection reason is about (``face<0.7`` and ``no_face`` → ``face_match``);
    None for an approval and for reasons that are not a score gate (near-duplicate, manual, unreadable)."""
    if not reason:
        return None
    if reason == REASON_NO_FACE:
        return "face_match"
    for prefix, gate in GATE_PREFIXES.items():
        if reason.startswith(prefix):
            return gate
    return None


def number(value: Any) -> float | None:
    """A finite float, or None for missing/NaN (parquet rows carry NaN and numpy types)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def reason_detail(row: Mapping[str, Any]) -> str | None:
    """The evidence behind a row's reason: ``face 0.560``, ``of <image id>``, ``by maria``."""
    reason = text(row.get("rejection_reason"))
    gate = gate_of(reason)
    if gate is not None and reason != REASON_NO_FACE:
        score = number(row.get(SCORE_TYPES[gate]))
        return None if score is None else f"{SCORE_LABELS[gate]} {score:.{SCORE_DIGITS[gate]}f}"
    if reason == REASON_NEAR_DUPLICATE and text(row.get("near_duplicate_of")):
        return f"of {row['near_duplicate_of']}"
    if reason is not None and reason.startswith(REASON_MANUAL) and text(row.get("decided_by")):
        return f"by {row['decided_by']}"
    return None


def rejection_entry(row: Mapping[str, Any], thresholds: Thresholds | None, file_name: str | None) -> dict[str, Any]:
    """One rejected image's entry; ``file_name`` is its file in the rejected folder (None if not placed),
    ``thresholds`` the queen's (None when her roster file cannot be read now)."""
    reason = text(row.get("rejection_reason"))
    return {
        "reason": reason,
        "gate": gate_of(reason),
        "detail": reason_detail(row),
        "approval_method": text(row.get("approval_method")),
        "decided_by": text(row.get("decided_by")),
        "asset_type": text(row.get("asset_type")),
        "scores": {
            **{name: number(row.get(column)) for name, column in SCORE_TYPES.items()},
            "composite": number(row.get(COMPOSITE)),
        },
        "thresholds": None if thresholds is None else thresholds.as_dict(),
        "near_duplicate_of": text(row.get("near_duplicate_of")),
        "file": file_name,
        "source": text(row.get("file_path")),
    }


def reasons_document(
    queen: str,
    night: str,
    rows: Iterable[Mapping[str, Any]],
    thresholds: Thresholds | None,
    files: Mapping[str, str | None],
) -> dict[str, Any]:
    """``reasons.json`` for one queen × night: every rejected row (approved rows are left out).

    ``files`` maps image id → file name in the rejected folder, as publishing placed it
    (it may carry a hash suffix when the plain name held other content).
    """
    images = {}
    for row in rows:
        if bool(row.get("approved")):
            continue
        image_id = str(row["image_id"])
        images[image_id] = rejection_entry(row, thresholds, files.get(image_id))
    by_reason: dict[str, int] = {}
    for entry in images.values():
        by_reason[entry["reason"] or "unknown"] = by_reason.get(entry["reason"] or "unknown", 0) + 1
    return {
        "version": REASONS_VERSION,
        "queen": queen,
        "night": night,
        "thresholds": None if thresholds is None else thresholds.as_dict(),
        "rejected": len(images),
        "by_reason": dict(sorted(by_reason.items())),
        "images": dict(sorted(images.items())),
    }


def reasons_json(document: Mapping[str, Any]) -> bytes:
    """Stable bytes (sorted keys, strict JSON: no NaN), so an unchanged night rewrites the same file."""
    return (json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
