"""Small helpers that turn pipeline results into Dagster metadata the UI renders well."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import dagster as dg

from hydra_assets.domain import markdown

CONTACT_SHEET_LIMIT = 24
"""Images on one contact sheet preview: enough to judge a batch, small enough for the event log."""


def png_preview(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    """A PNG embedded in markdown metadata; keep it small, it is stored in the event log."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown.markdown_table(rows, columns))
