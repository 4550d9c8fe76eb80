"""Starting the re-materialization of one queen × night through Dagster's GraphQL API.

image_scores applies the overrides file (reusing every score: no model runs again when the files
and backends are unchanged) and approved_images publishes the result, so both are selected.
The run carries the review tag ``hydra/review = <user>@<image id>`` and the partition tags, so it
shows in the UI as that partition's run.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

ASSET_JOB = "__ASSET_JOB"
"""Dagster's implicit job of all assets; an asset selection runs just those (as the UI does)."""
REVIEW_ASSETS = ("image_scores", "approved_images")
REVIEW_TAG = "hydra/review"


@dataclass(frozen=True)
class LaunchResult:
    run_id: str | None
    error: str | None
    run_url: str | None = None


class DagsterLauncher:
    def __init__(self, dagster_url: str, timeout_s: int = 10):
        self.dagster_url = dagster_url.rstrip("/")
        self.timeout_s = timeout_s

    def client(self):
        from dagster_graphql import DagsterGraphQLClient

        parts = urlsplit(self.dagster_url)
        return DagsterGraphQLClient(
            parts.hostname or "127.0.0.1",
            port_number=parts.port,
            use_https=parts.scheme == "https",
            timeout=self.timeout_s,
            path_prefix=parts.path.rstrip("/"),
        )

    def launch(self, queen: str, night: str, user: str, image_id: str) -> LaunchResult:
        """Never raises: a webserver that is down or refuses is reported in the result."""
        from hydra_assets.partitions import queen_night_key

        key = queen_night_key(queen, night)
        tags = {
            "dagster/partition": str(key),
            "dagster/partition/queen": queen,
            "dagster/partition/night": night,
            REVIEW_TAG: f"{user}@{image_id}",
        }
        try:
            run_id = self.client().submit_job_execution(ASSET_JOB, tags=tags, asset_selection=list(REVIEW_ASSETS))
        except Exception as exc:  # connection refused, timeout, GraphQL errors: all mean "not started"
            message = " ".join(str(exc).split())[:300] or type(exc).__name__
            return LaunchResult(None, f"{self.dagster_url}/graphql: {message}")
        return LaunchResult(run_id, None, f"{self.dagster_url}/runs/{run_id}")
