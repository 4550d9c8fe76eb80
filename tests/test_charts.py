"""The event log's pictures: real PNGs from matplotlib, sized for the UI, showing what they claim."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from hydra_assets.domain.charts import APPROVED_COLOUR, REJECTED_COLOUR, SMOOTHED_COLOUR, histogram_png, loss_curve_png


def decoded(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def colour_pixels(pixels: np.ndarray, hex_colour: str) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).sum(axis=2) < 12).sum())


def has_colour(pixels: np.ndarray, hex_colour: str) -> bool:
    return colour_pixels(pixels, hex_colour) > 0


def test_histogram_shows_approved_and_rejected_scores():
    frame = pd.DataFrame({
        "approved": [True, False, False],
        "aesthetic_score": [7.0, 5.0, np.nan],
        "technical_score": [80.0, 40.0, np.nan],
        "face_match_score": [0.9, np.nan, np.nan],
    })
    pixels = decoded(histogram_png(frame))
    assert pixels.shape[:2] == (int(2.4 * 64), 9 * 64)
    assert has_colour(pixels, APPROVED_COLOUR) and has_colour(pixels, REJECTED_COLOUR)
    only_rejected = decoded(histogram_png(frame.assign(approved=False)))
    # the legend keeps a swatch of the approved colour; the approved bars are gone
    assert colour_pixels(only_rejected, APPROVED_COLOUR) < colour_pixels(pixels, APPROVED_COLOUR) / 2


def test_loss_curve_draws_the_running_mean_and_survives_nan_and_one_step():
    losses = list(np.linspace(1.0, 0.2, 50) + np.random.default_rng(0).normal(0, 0.05, 50))
    pixels = decoded(loss_curve_png(losses + [float("nan")], losses[0], losses[-1]))
    assert pixels.shape[:2] == (int(1.9 * 80), int(4.5 * 80))
    assert has_colour(pixels, SMOOTHED_COLOUR)
    single = decoded(loss_curve_png([0.5], 0.5, 0.5))
    assert not has_colour(single, SMOOTHED_COLOUR)
