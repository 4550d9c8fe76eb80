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


LOSS_COLOUR = "#aaaaaa"
SMOOTHED_COLOUR = "#1e5ac8"


def loss_curve_png(losses: list[float], initial: float, final: float) -> bytes:
    """The step losses (grey) and their running mean over a tenth of the steps (blue), for the metadata preview."""
    values = np.array([v for v in losses if v == v] or [initial, final], dtype=np.float64)
    figure = Figure(figsize=(4.5, 1.9), dpi=80, layout="constrained")
    ax = figure.subplots()
    steps = np.arange(1, len(values) + 1)
    if len(values) > 1:
        window = max(1, len(values) // 10)
        running = pd.Series(values).rolling(window, min_periods=1).mean()
        ax.plot(steps, values, color=LOSS_COLOUR, linewidth=1, label="step")
        ax.plot(steps, running, color=SMOOTHED_COLOUR, linewidth=2, label="running mean")
        ax.legend(fontsize=7, frameon=False)
    ax.set_xlabel(f"{len(losses)} steps  loss {initial:.4f} -> {final:.4f}", fontsize=8)
    ax.tick_params(labelsize=7)
    return _png(figure)
