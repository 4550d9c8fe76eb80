"""How assets fail: one message and metadata for the UI, everywhere, and which failures a retry can cure.

A step whose backend (a server) is down for a while is retried by Dagster's RetryPolicy with the
SPEC's schedule (:data:`BACKEND_DOWN_RETRY`); a failure no retry can cure (a bad roster file, a
missing upstream file, bad config) says so with ``allow_retries=False`` and fails at once.
"""

from __future__ import annotations

import dagster as dg

from hydra_assets.domain.roster import Queen, RosterError
from resources.storage import HydraStorage


def roster_failure(error: RosterError) -> dg.Failure:
    """The roster error as a Failure that names the file and the field."""
    return dg.Failure(description=str(error), metadata={"file": str(error.path), "field": error.field}, allow_retries=False)


BACKEND_DOWN_RETRY = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
"""SPEC retries: at most 3, exponential backoff from 10 s with jitter (10, 20, 40 s ± jitter)."""


def final_failure(description: str, **metadata) -> dg.Failure:
    """A failure a retry cannot cure: the step fails at once, whatever its retry policy."""
    return dg.Failure(description=description, metadata=metadata or None, allow_retries=False)


def load_queen(storage: HydraStorage, slug: str) -> Queen:
    """The queen's roster entry; a bad or missing file fails the step naming the file and field."""
    try:
        return storage.load_queen(slug)
    except RosterError as error:
        raise roster_failure(error) from error
