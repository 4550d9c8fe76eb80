from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg

from hydra_assets.partitions import QUEENS
from hydra_assets.settings import SETTINGS
from sensors.overnight import OVERNIGHT_TAG, build_lora_ready_sensor, build_overnight_schedule

TONIGHT = dt.datetime(2026, 11, 20, 22, 0, tzinfo=ZoneInfo(SETTINGS.timezone))


def report_lora(instance: dg.DagsterInstance, queen: str, version: int, reused: bool = False) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization("queen_lora", partition=queen, metadata={"version": version, "reused": reused})
    )


def requested(requests) -> list[tuple[str, str]]:
    keys = [r.partition_key for r in requests]
    return sorted((k.keys_by_dimension["queen"], k.keys_by_dimension["night"]) for k in keys)


def test_schedule_requests_tonight_for_ready_queens_only():
    schedule = build_overnight_schedule(dg.DefaultScheduleStatus.STOPPED)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada", "bea", "cora"])
        report_lora(instance, "ada", 1)
        report_lora(instance, "cora", 1)
        report_lora(instance, "gone", 1)  # LoRA of a queen no longer in the roster partitions
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=TONIGHT)
        requests = schedule(context)
    assert requested(requests) == [("ada", "2026-11-20"), ("cora", "2026-11-20")]
    assert all(r.tags[OVERNIGHT_TAG] == "true" for r in requests)
    assert len({r.run_key for r in requests}) == 2


def test_schedule_skips_when_no_lora_is_ready():
    schedule = build_overnight_schedule(dg.DefaultScheduleStatus.STOPPED)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada"])
        result = schedule(dg.build_schedule_context(instance=instance, scheduled_execution_time=TONIGHT))
    assert isinstance(result, dg.SkipReason) and "2026-11-20" in result.skip_message


def test_new_lora_version_requests_that_queens_night_once():
    sensor = build_lora_ready_sensor(dg.DefaultSensorStatus.STOPPED)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada", "bea"])
        report_lora(instance, "ada", 2)
        first = sensor(dg.build_sensor_context(instance=instance))
        assert [q for q, _ in requested(first.run_requests)] == ["ada"]
        second = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
        assert not second.run_requests

        report_lora(instance, "bea", 1, reused=True)  # re-materialized, same version: nothing new
        third = sensor(dg.build_sensor_context(instance=instance, cursor=second.cursor))
        assert not third.run_requests
        report_lora(instance, "bea", 2)
        fourth = sensor(dg.build_sensor_context(instance=instance, cursor=third.cursor))
        assert [q for q, _ in requested(fourth.run_requests)] == ["bea"]
        assert fourth.run_requests[0].run_key != first.run_requests[0].run_key



def test_a_finished_overnight_run_requests_its_nights_report_once_per_run():
    from sensors.overnight import build_report_after_overnight_sensor

    @dg.op
    def publish() -> None:
        return None

    @dg.job(tags={"dagster/partition": "2026-11-20|ada"})
    def stand_in_overnight() -> None:
        publish()

    sensor = build_report_after_overnight_sensor(dg.DefaultSensorStatus.STOPPED)
    with dg.instance_for_test() as instance:
        requests = []
        for _ in range(2):  # two queens of the same night finishing
            result = stand_in_overnight.execute_in_process(instance=instance)
            context = dg.build_run_status_sensor_context(
                sensor_name=sensor.name,
                dagster_instance=instance,
                dagster_run=result.dagster_run,
                dagster_event=result.get_run_success_event(),
            )
            requests.append(sensor(context))
    assert [r.partition_key for r in requests] == ["2026-11-20", "2026-11-20"]
    assert requests[0].run_key != requests[1].run_key  # each finished queen refreshes the report
