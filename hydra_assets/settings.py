"""The one place that reads the process environment.

Everything else takes its configuration from here (definition-time settings such as the
partition calendar) or from resources built in ``definitions.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Environment = Literal["local", "cluster"]
ENVIRONMENTS: tuple[Environment, ...] = ("local", "cluster")


@dataclass(frozen=True)
class Settings:
    env: Environment
    nights_start: str
    timezone: str
    roster_dir: str
    storage_root: str
    catalog_url: str
    webhook_url: str | None
    pushgateway_url: str | None
    review_url: str = "http://127.0.0.1:3100"
    """Where `hydra review` is reached: assets link each partition's review page under it."""
    dagster_url: str = "http://127.0.0.1:3000"
    """The Dagster webserver the review app launches runs through (GraphQL) and links to."""
    review_user_header: str = "X-Forwarded-User"
    """Reverse-proxy header naming the signed-in reviewer (cluster)."""
    review_cache_dir: str = ""
    """Thumbnail cache of the review app; empty: var/review_cache."""
    workflows_dir: str = str(Path("workflows").resolve())


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    env = environ.get("HYDRA_ENV", "local").strip().lower()
    if env not in ENVIRONMENTS:
        raise ValueError(f"HYDRA_ENV must be one of {', '.join(ENVIRONMENTS)}, got {env!r}")
    var = Path("var").resolve()
    return Settings(
        env=env,  # type: ignore[arg-type]
        nights_start=environ.get("HYDRA_NIGHTS_START", "2026-01-01"),
        timezone=environ.get("HYDRA_TIMEZONE", "UTC"),
        roster_dir=environ.get("HYDRA_ROSTER_DIR", str(Path("roster").resolve())),
        storage_root=environ.get("HYDRA_STORAGE_ROOT", str(var / "storage")),
        catalog_url=environ.get("HYDRA_CATALOG_URL", f"sqlite:///{var / 'catalog.db'}"),
        webhook_url=environ.get("HYDRA_WEBHOOK_URL") or None,
        pushgateway_url=environ.get("HYDRA_PUSHGATEWAY_URL") or None,
        review_url=environ.get("HYDRA_REVIEW_URL", "http://127.0.0.1:3100").rstrip("/"),
        dagster_url=environ.get("HYDRA_DAGSTER_URL", "http://127.0.0.1:3000").rstrip("/"),
        review_user_header=environ.get("HYDRA_REVIEW_USER_HEADER", "X-Forwarded-User"),
        review_cache_dir=environ.get("HYDRA_REVIEW_CACHE_DIR", str(var / "review_cache")),

        workflows_dir=environ.get("HYDRA_WORKFLOWS_DIR") or str(Path("workflows").resolve()),
    )


SETTINGS = load_settings()
