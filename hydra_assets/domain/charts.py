"""Small PNG charts for the event log, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hydra_assets.domain.quality import AESTHETIC, FACE_MATCH, SCORE_RANGES, TECHNICAL

APPROVED_COLOUR = "#3a8f5c"
REJECTED_COLOUR = "#c4553b"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")  # a bare Figure renders through the Agg canvas
    return buffer.getvalue()


def histogram_png(frame: pd.DataFrame) -> bytes:
    """Approved vs rejected histograms of the three gated scores; small, for the event log."""
    figure = Figure(figsize=(9, 2.4), dpi=64, layout="constrained")
    axes = figure.subplots(1, 3)
    approved = frame["approved"].astype(bool)
    for ax, column in zip(axes, (AESTHETIC, TECHNICAL, FACE_MATCH)):
        low, high = SCORE_RANGES[column]
        bins = np.linspace(low, high, 19)
        values = pd.to_numeric(frame[column], errors="coerce")
        ax.hist([values[approved].dropna(), values[~approved].dropna()], bins=bins, stacked=True,
                color=[APPROVED_COLOUR, REJECTED_COLOUR], label=["approved", "rejected"])
        ax.set_title(column.removesuffix("_score"), fontsize=10)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=8)
    return _png(figure)
