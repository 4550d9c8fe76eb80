"""The studio dashboards' metrics (SPEC names), collected per run in their own registry.

A registry per run, not the process-global one: a run pushes exactly what it measured, and
the same numbers go into the run's metadata whether or not a Pushgateway is configured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

SCORE_BUCKETS = tuple(float(b) for b in range(1, 11))
"""SPEC: hydra_quality_score is a histogram with buckets 1..10 (scores on other scales are
normalised to 1-10 before they are observed)."""
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)


class PipelineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.images_generated = Counter(
            "hydra_images_generated", "Images generated, by queen, asset type and approval.",
            ["queen_slug", "asset_type", "approved"], registry=self.registry,
        )
        self.quality_score = Histogram(
            "hydra_quality_score", "Quality scores on a 1-10 scale, by queen and score type.",
            ["queen_slug", "score_type"], buckets=SCORE_BUCKETS, registry=self.registry,
        )
        self.approval_rate = Gauge(
            "hydra_approval_rate", "Share of generated images approved, by queen and asset type.",
            ["queen_slug", "asset_type"], registry=self.registry,
        )
        self.generation_duration = Histogram(
            "hydra_generation_duration_seconds", "Wall time of a pipeline task, by task type and queen.",
            ["task_type", "queen_slug"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.queue_depth: Gauge | None = None
        """Registered only by :meth:`set_queue_depth`: an unlabelled gauge would otherwise export 0
        from every run that never measured the queue."""

    def set_queue_depth(self, runs: int) -> None:
        if self.queue_depth is None:
            self.queue_depth = Gauge("hydra_queue_depth", "Runs waiting in the run queue.", registry=self.registry)
        self.queue_depth.set(runs)

    def record_images(self, queen: str, rows: Iterable[tuple[str, bool]]) -> None:
        """One (asset_type, approved) pair per image."""
        for asset_type, approved in rows:
            self.images_generated.labels(queen, asset_type, str(bool(approved)).lower()).inc()

    def record_scores(self, queen: str, score_type: str, values_1_to_10: Iterable[float]) -> None:
        histogram = self.quality_score.labels(queen, score_type)
        for value in values_1_to_10:
            histogram.observe(float(value))

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()

    def samples(self) -> dict[str, float]:
        """Flat ``name{labels}`` → value map for the run's metadata (no histogram buckets)."""
        flat: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket") or sample.name.endswith("_created"):
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                flat[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return flat


def to_one_to_ten(value: float, low: float, high: float) -> float:
    """Map a score from its own scale onto the histogram's 1-10 (face 0.7 → 7.3, technical 70 → 7.3)."""
    share = (min(max(float(value), low), high) - low) / (high - low)
    return 1.0 + 9.0 * share


def record_partition(
    metrics: PipelineMetrics,
    queen: str,
    rows: Iterable[Mapping[str, Any]],
    score_ranges: Mapping[str, tuple[float, float]],
) -> None:
    """Counts, score histograms and per-type approval rate of one queen's night.

    ``rows`` carry ``asset_type``, ``approved`` and a value per score column in
    ``score_ranges`` (NaN/None for a score the image could not get, e.g. no face).
    """
    tallies: dict[str, list[int]] = {}
    for row in rows:
        asset_type, approved = str(row["asset_type"]), bool(row["approved"])
        metrics.images_generated.labels(queen, asset_type, str(approved).lower()).inc()
        tally = tallies.setdefault(asset_type, [0, 0])
        tally[0] += 1
        tally[1] += approved
        for column, (low, high) in score_ranges.items():
            value = row.get(column)
            if value is None or not math.isfinite(float(value)):
                continue
            score_type = column.removesuffix("_score")
            metrics.quality_score.labels(queen, score_type).observe(to_one_to_ten(value, low, high))
    for asset_type, (total, approved_count) in tallies.items():
        metrics.approval_rate.labels(queen, asset_type).set(approved_count / total)
