"""Small helpers that turn pipeline results into Dagster metadata the UI renders well."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import dagster as dg


def png_preview(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    """A PNG embedded in markdown metadata; keep it small, it is stored in the event log."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("_none_")
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = (str(row.get(c, "")).replace("|", "\\|").replace("\n", " ") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))
