"""Small helpers that turn pipeline results into Dagster metadata the UI renders well."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import numpy as np

from hydra_assets.domain import markdown

CONTACT_SHEET_LIMIT = 24
"""Images on one contact sheet preview: enough to judge a batch, small enough for the event log."""


def png_preview(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    """A PNG embedded in markdown metadata; keep it small, it is stored in the event log."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown.markdown_table(rows, columns))


def _cell(value: Any) -> str | int | float | bool | None:
    """A table cell as TableRecord takes it: numpy scalars unwrapped, NaN as empty."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def table(
    rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str], descriptions: Mapping[str, str] | None = None
) -> dg.TableMetadataValue:
    """Rows as a UI table whose schema is ``columns`` (name → "string", "int", "float" or "bool"),
    with an optional description per column (shown in the UI's schema)."""
    descriptions = descriptions or {}
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name, kind, description=descriptions.get(name)) for name, kind in columns.items()]
    )
    records = [dg.TableRecord({name: _cell(row.get(name)) for name in columns}) for row in rows]
    return dg.MetadataValue.table(records, schema=schema)
