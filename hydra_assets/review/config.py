"""The review app's configuration, built from the one settings module (or given by tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra_assets.settings import SETTINGS, Settings


@dataclass(frozen=True)
class ReviewConfig:
    storage_root: Path
    roster_dir: Path
    cache_dir: Path
    dagster_url: str
    """The webserver runs are launched through (GraphQL at ``{dagster_url}/graphql``)."""
    user_header: str = "X-Forwarded-User"
    require_user_header: bool = False
    """On the cluster the app sits behind the studio's auth proxy: a request without the header
    is refused instead of being recorded as the pod's OS user."""
    public_url: str = "http://127.0.0.1:3100"
    thumbnail_px: int = 320
    launch_timeout_s: int = 10

    @classmethod
    def from_settings(cls, settings: Settings = SETTINGS) -> ReviewConfig:
        return cls(
            storage_root=Path(settings.storage_root),
            roster_dir=Path(settings.roster_dir),
            cache_dir=Path(settings.review_cache_dir or Path("var/review_cache").resolve()),
            dagster_url=settings.dagster_url,
            user_header=settings.review_user_header,
            require_user_header=settings.env == "cluster",
            public_url=settings.review_url,
        )
