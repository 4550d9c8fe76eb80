"""Partitions: queens (dynamic, owned by the roster sensor), nights, and queen × night."""

import dagster as dg

from hydra_assets.settings import SETTINGS

QUEENS = "queens"

queens_partitions = dg.DynamicPartitionsDefinition(name=QUEENS)

# From HYDRA_NIGHTS_START (default: the first of the current month in HYDRA_TIMEZONE, so the
# partitions view shows what exists). end_offset=1: tonight's batch (22:00 today) must be a
# valid key before the day is over.
nights_partitions = dg.DailyPartitionsDefinition(
    start_date=SETTINGS.nights_start, timezone=SETTINGS.timezone, end_offset=1
)

queen_nights_partitions = dg.MultiPartitionsDefinition({"queen": queens_partitions, "night": nights_partitions})


def queen_night_key(queen: str, night: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"queen": queen, "night": night})

CHAPTERS = "chapters"
chapters_partitions = dg.DynamicPartitionsDefinition(name=CHAPTERS)
