"""Shared by the sensors that follow an asset's materializations."""

import dagster as dg


def cursor_after_latest(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> str | None:
    """An event cursor just past the asset's newest materialization (None when it has none).

    A sensor turned on for the first time starts here, so it reacts to what happens from now
    on instead of replaying the whole history (every old LoRA version, every old low night).
    """
    records = instance.fetch_materializations(asset_key, limit=1, ascending=False)
    return records.cursor if records.records else None
