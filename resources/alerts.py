"""Alerts to the studio's chat: one JSON POST that Slack and Discord webhooks both accept."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import dagster as dg
import requests
from pydantic import Field

log = logging.getLogger(__name__)


def webhook_body(title: str, lines: list[str], event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Slack reads ``text``, Discord reads ``content``; each ignores the other's key.

    ``hydra`` carries the structured event for dashboards that parse the body.
    """
    text = "\n".join([f"*{title}*", *lines])
    return {"text": text, "content": text.replace("*", "**"), "hydra": {"event": event, **fields}}


class WebhookNotifier(dg.ConfigurableResource):
    """Posts alerts to a webhook URL (from HYDRA_WEBHOOK_URL); without a URL it only logs."""

    url: str | None = Field(default=None, description="Slack/Discord-compatible incoming webhook URL")
    timeout_seconds: float = 10.0

    def notify(self, body: dict[str, Any]) -> bool:
        """Send one alert; returns whether it was posted. A webhook that fails is logged, never raised:
        an alert must not fail the sensor that noticed the problem."""
        summary = body.get("text", "").replace("\n", " | ")
        if not self.url:
            log.warning("alert (no webhook URL configured): %s", summary)
            return False
        try:
            response = requests.post(
                self.url,
                data=json.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=self.timeout_seconds,
            )
        except requests.RequestException as exc:
            reason = str(exc).replace(requests.utils.urlparse(self.url).path, "/…")
            log.error("alert not delivered to webhook %s: %s (%s)", _redacted(self.url), reason, summary)
            return False
        if response.status_code >= 300:
            log.error(
                "webhook %s answered %s: %s (%s)",
                _redacted(self.url),
                response.status_code,
                response.text[:200],
                summary,
            )
            return False
        return True


def _redacted(url: str) -> str:
    """Webhook URLs embed their secret in the path; log only scheme and host."""
    parts = requests.utils.urlparse(url)
    return f"{parts.scheme}://{parts.netloc}/…"
