"""How an asset fails on a roster file it cannot use: one message and metadata for the UI, everywhere."""

from __future__ import annotations

import dagster as dg

from hydra_assets.domain.roster import Queen, RosterError
from resources.storage import HydraStorage


def roster_failure(error: RosterError) -> dg.Failure:
    """The roster error as a Failure that names the file and the field."""
    return dg.Failure(description=str(error), metadata={"file": str(error.path), "field": error.field})


def load_queen(storage: HydraStorage, slug: str) -> Queen:
    """The queen's roster entry; a bad or missing file fails the step naming the file and field."""
    try:
        return storage.load_queen(slug)
    except RosterError as error:
        raise roster_failure(error) from error
