"""The edges between queen × night assets and per-queen or per-night ones, defined once."""

import warnings

import dagster as dg

from hydra_assets.partitions import queen_nights_partitions

with warnings.catch_warnings():
    # Beta in Dagster 1.13, and exactly the mapping these edges mean: one queen's asset feeds
    # all her nights, one night's asset reads all its queens.
    warnings.simplefilter("ignore", dg.BetaWarning)
    BY_QUEEN = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="queen")
    BY_NIGHT = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="night")


def queen_and_night(partition_key: str) -> tuple[str, str]:
    """A queen × night partition key as (queen, night)."""
    keys = queen_nights_partitions.get_partition_key_from_str(partition_key).keys_by_dimension
    return keys["queen"], keys["night"]
