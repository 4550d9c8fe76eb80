"""Pushes a run's metrics to the studio's Prometheus Pushgateway when one is configured."""

from __future__ import annotations

import logging

import dagster as dg
from prometheus_client import pushadd_to_gateway
from pydantic import Field

from hydra_assets.domain.metrics import PipelineMetrics

log = logging.getLogger(__name__)


class MetricsPusher(dg.ConfigurableResource):
    pushgateway_url: str | None = Field(default=None, description="e.g. http://pushgateway.monitoring:9091")
    job: str = "hydra"
    timeout_seconds: float = 10.0

    def push(self, metrics: PipelineMetrics, grouping_key: dict[str, str]) -> bool:
        """Add this run's samples under ``grouping_key``; returns whether they were pushed.

        A gateway that is down is logged, not raised: metrics must never fail an asset
        whose images are already written.
        """
        if not self.pushgateway_url:
            return False
        try:
            pushadd_to_gateway(
                self.pushgateway_url,
                job=self.job,
                registry=metrics.registry,
                grouping_key=grouping_key,
                timeout=self.timeout_seconds,
            )
        except OSError as exc:
            log.error("metrics not pushed to %s: %s", self.pushgateway_url, exc)
            return False
        return True
