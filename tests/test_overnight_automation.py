from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg

from hydra_assets.partitions import QUEENS
from hydra_assets.settings import SETTINGS
from resources.storage import HydraStorage
from sensors.overnight import OVERNIGHT_TAG, build_lora_ready_sensor, build_overnight_schedule

TONIGHT = dt.datetime(2026, 11, 20, 22, 0, tzinfo=ZoneInfo(SETTINGS.timezone))


def report_lora(instance: dg.DagsterInstance, queen: str, version: int, previous: int | None = None) -> None:
    """What queen_lora reports: the version now current and the one it replaced."""
    metadata = {"version": version, "previous_version": previous, "current_changed": previous != version}
    instance.report_runless_asset_event(dg.AssetMaterialization("queen_lora", partition=queen, metadata=metadata))


def requested(requests) -> list[tuple[str, str]]:
    keys = [r.partition_key for r in requests]
    return sorted((k.keys_by_dimension["queen"], k.keys_by_dimension["night"]) for k in keys)


def roster_with(tmp_path: Path, *slugs: str) -> HydraStorage:
    roster = tmp_path / "roster"
    roster.mkdir(exist_ok=True)
    for slug in slugs:
        (roster / f"{slug}.yaml").write_text(f"slug: {slug}\n")  # the schedule only lists the folder
    return HydraStorage(root=str(tmp_path / "storage"), roster_dir=str(roster))


def evaluate_schedule(schedule, instance, storage, moment=TONIGHT):
    # The context opens its own instance from the ref (and resources) on first use and closes
    # them only on exit: without `with`, that instance stays "current" after the test.
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=moment, resources={"storage": storage}
    ) as context:
        return schedule(context)


def test_schedule_requests_tonight_for_ready_queens_only(tmp_path):
    schedule = build_overnight_schedule(dg.DefaultScheduleStatus.STOPPED)
    storage = roster_with(tmp_path, "ada", "bea", "cora")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada", "bea", "cora"])
        report_lora(instance, "ada", 1)
        report_lora(instance, "cora", 1)
        report_lora(instance, "gone", 1)  # LoRA of a queen no longer in the roster partitions
        requests = evaluate_schedule(schedule, instance, storage)
    assert requested(requests) == [("ada", "2026-11-20"), ("cora", "2026-11-20")]
    assert all(r.tags[OVERNIGHT_TAG] == "true" for r in requests)
    assert len({r.run_key for r in requests}) == 2


def test_schedule_leaves_out_a_queen_whose_roster_file_was_removed(tmp_path):
    """Her partition and LoRA stay (history is kept), but she is no longer produced."""
    schedule = build_overnight_schedule(dg.DefaultScheduleStatus.STOPPED)
    storage = roster_with(tmp_path, "ada")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada", "bea"])
        report_lora(instance, "ada", 1)
        report_lora(instance, "bea", 1)
        requests = evaluate_schedule(schedule, instance, storage)
    assert requested(requests) == [("ada", "2026-11-20")]


def test_schedule_night_is_the_studios_date_whatever_the_clock_zone(tmp_path):
    schedule = build_overnight_schedule(dg.DefaultScheduleStatus.STOPPED)
    storage = roster_with(tmp_path, "ada")
    in_tokyo = TONIGHT.astimezone(ZoneInfo("Asia/Tokyo"))  # already the 21st there
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada"])
        report_lora(instance, "ada", 1)
        requests = evaluate_schedule(schedule, instance, storage, in_tokyo)
    assert requested(requests) == [("ada", "2026-11-20")]


def test_schedule_skips_when_no_lora_is_ready(tmp_path):
    schedule = build_overnight_schedule(dg.DefaultScheduleStatus.STOPPED)
    storage = roster_with(tmp_path, "ada")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada"])
        result = evaluate_schedule(schedule, instance, storage)
    assert isinstance(result, dg.SkipReason) and "2026-11-20" in result.skip_message


def test_new_lora_version_requests_that_queens_night_once():
    sensor = build_lora_ready_sensor(dg.DefaultSensorStatus.STOPPED)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada", "bea"])
        report_lora(instance, "bea", 1)  # before the sensor was turned on: not replayed
        started = sensor(dg.build_sensor_context(instance=instance))
        assert not started.run_requests

        report_lora(instance, "ada", 2, previous=1)
        first = sensor(dg.build_sensor_context(instance=instance, cursor=started.cursor))
        assert [q for q, _ in requested(first.run_requests)] == ["ada"]
        second = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
        assert not second.run_requests

        report_lora(instance, "bea", 1, previous=1)  # re-materialized, same current version: nothing new
        third = sensor(dg.build_sensor_context(instance=instance, cursor=second.cursor))
        assert not third.run_requests

        report_lora(instance, "ada", 1, previous=2)  # references back to v1's: v1 is current again
        fourth = sensor(dg.build_sensor_context(instance=instance, cursor=third.cursor))
        assert [q for q, _ in requested(fourth.run_requests)] == ["ada"]


def test_a_night_with_two_queens_gets_one_report_after_both_overnight_runs(tmp_path):
    """quality_report's automation condition, evaluated as its sensor does, against real runs of approved_images.

    bea's run is still going while ada's finishes (a queued run counts the same: its planned
    materialization is logged when the run is created).
    """
    import threading

    from hydra_assets.partitions import queen_night_key, queen_nights_partitions
    from tests.helpers import hydra_definitions

    defs = hydra_definitions(tmp_path)
    night = "2026-11-20"
    cursor = {}
    bea_running, bea_may_finish = threading.Event(), threading.Event()

    def evaluate(instance: dg.DagsterInstance) -> set[str | None]:
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets("quality_report"),
            cursor=cursor.get("last"),
        )
        cursor["last"] = result.cursor
        return set(result.get_requested_partitions(dg.AssetKey("quality_report")))

    @dg.asset(name="approved_images", partitions_def=queen_nights_partitions)
    def overnight_publish(context) -> None:
        """Stands in for the overnight run's last step, so the test controls when bea's run ends."""
        if context.partition_key.keys_by_dimension["queen"] == "bea":
            bea_running.set()
            assert bea_may_finish.wait(timeout=60)

    def publish(instance: dg.DagsterInstance, queen: str) -> None:
        assert dg.materialize([overnight_publish], partition_key=queen_night_key(queen, night), instance=instance).success

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada", "bea", "cora"])  # cora has no LoRA: no run tonight
        assert evaluate(instance) == set()  # the sensor is on before the night starts
        bea = threading.Thread(target=publish, args=(instance, "bea"))
        bea.start()
        try:
            assert bea_running.wait(timeout=60)
            publish(instance, "ada")
            assert evaluate(instance) == set(), "no report while a queen of the night is still running"
        finally:
            bea_may_finish.set()
            bea.join(timeout=60)
        assert evaluate(instance) == {night}, "one report once both queens are done"
        assert evaluate(instance) == set(), "not one report per queen run"

        # a morning re-run of one queen (an override) refreshes the night's report once
        publish(instance, "ada")
        assert evaluate(instance) == {night}
        assert evaluate(instance) == set()


def test_the_report_sensor_evaluates_the_reports_condition(tmp_path):
    from tests.helpers import hydra_definitions

    defs = hydra_definitions(tmp_path)
    sensor = defs.resolve_sensor_def("quality_report_automation_sensor")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.asset_selection.resolve(defs.resolve_asset_graph()) == {dg.AssetKey("night_scores"), dg.AssetKey("quality_report")}
    condition = defs.resolve_asset_graph().get(dg.AssetKey("quality_report")).automation_condition
    assert condition.get_label() == "one report per night once its queens are done"
    scoring = defs.resolve_asset_graph().get(dg.AssetKey("night_scores")).automation_condition
    assert scoring.get_label() == "one scoring step per night once its queens are generated"
    freshness = defs.resolve_asset_graph().get(dg.AssetKey("quality_report")).freshness_policy
    # materialized between the 22:00 schedule and 07:00 the next morning, in the studio's timezone
    assert (freshness.deadline_cron, freshness.lower_bound_delta) == ("0 7 * * *", dt.timedelta(hours=9))
    assert freshness.timezone == SETTINGS.timezone
    assert defs.resolve_schedule_def("overnight_schedule").cron_schedule == "0 22 * * *"
