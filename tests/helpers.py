"""Builders shared by tests: definitions and resources rooted in a temp folder."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from hydra_assets.definitions import build_definitions, local_resources
from hydra_assets.settings import SETTINGS


def temp_settings(tmp_path: Path, catalog_url: str | None = None):
    return SETTINGS.model_copy(
        update={
            "roster_dir": str(tmp_path / "roster"),
            "storage_root": str(tmp_path / "storage"),
            "catalog_url": catalog_url or f"sqlite:///{tmp_path / 'catalog.db'}",
        }
    )


def hydra_definitions(tmp_path: Path, catalog_url: str | None = None) -> dg.Definitions:
    return build_definitions(local_resources(temp_settings(tmp_path, catalog_url)))
