"""Review-page URLs for asset metadata (``dg.MetadataValue.url``); no web stack imported."""

from __future__ import annotations

from urllib.parse import quote


def night_review_url(base_url: str, night: str) -> str:
    return f"{base_url.rstrip('/')}/nights/{quote(night)}"


def partition_review_url(base_url: str, night: str, queen: str) -> str:
    """The grid of one queen × night partition, e.g. http://127.0.0.1:3100/nights/2026-11-20/nova-sterling."""
    return f"{night_review_url(base_url, night)}/{quote(queen)}"


def image_review_url(base_url: str, night: str, queen: str, image_id: str) -> str:
    return f"{partition_review_url(base_url, night, queen)}/images/{quote(image_id)}"
