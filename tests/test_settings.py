"""HYDRA_* settings: validated at load, each error naming its variable; the nights calendar."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from hydra_assets.partitions import QUEENS, nights_partitions, queen_night_key
from hydra_assets.settings import SETTINGS, Settings, SettingsError, first_of_month, load_settings
from resources.storage import HydraStorage
from sensors.overnight import build_overnight_schedule
from tests.conftest import TEST_NIGHTS_START

BAD = [
    ("HYDRA_ENV", "staging", "must be one of local, cluster"),
    ("HYDRA_TIMEZONE", "Mars/Olympus_Mons", "not a zoneinfo timezone"),
    ("HYDRA_TIMEZONE", "../../etc/passwd", "not a zoneinfo timezone"),
    ("HYDRA_NIGHTS_START", "2026-13-01", "YYYY-MM-DD"),
    ("HYDRA_NIGHTS_START", "20261101", "YYYY-MM-DD"),
    ("HYDRA_NIGHTS_START", "first of november", "YYYY-MM-DD"),
    ("HYDRA_CATALOG_URL", "mysql://user:hunter2@db/hydra", "sqlite or postgresql"),
    ("HYDRA_CATALOG_URL", "not a url", "not a database URL"),
    ("HYDRA_WEBHOOK_URL", "ftp://hooks.example/x", "http or https URL"),
    ("HYDRA_WEBHOOK_URL", "hooks.example/x", "http or https URL"),
    ("HYDRA_PUSHGATEWAY_URL", "http://:9091", "http or https URL"),
    ("HYDRA_COMFYUI_URL", "http://comfyui:port", "http or https URL"),
    ("HYDRA_LLM_BASE_URL", "localhost:8000/v1", "http or https URL"),
    ("HYDRA_REDIS_URL", "http://127.0.0.1:6379", "redis or rediss URL"),
    ("HYDRA_QDRANT_URL", "grpc://qdrant:6334", "http or https URL"),
    ("HYDRA_REVIEW_PORT", "70000", "less than or equal to 65535"),
    ("HYDRA_REVIEW_PORT", "three thousand", "valid integer"),
    ("HYDRA_REPORT_DUE_HOUR", "24", "less than or equal to 23"),
    ("HYDRA_LOUDNESS_TARGET_LUFS", "loud", "valid number"),
    ("HYDRA_LOUDNESS_TARGET_LUFS", "5", "less than or equal to 0"),
    ("HYDRA_REVIEW_USER_HEADER", "X-User: admin", "should match pattern"),
]


@pytest.mark.parametrize(("name", "value", "rule"), BAD)
def test_a_bad_value_is_refused_with_the_variables_name_and_the_rule(name, value, rule):
    with pytest.raises(SettingsError) as raised:
        load_settings({name: value})
    message = str(raised.value)
    assert message.startswith(name) and rule in message
    assert "hunter2" not in message  # a password in a URL is never echoed


def test_paths_must_be_folders_where_folders_are_expected(tmp_path):
    a_file = tmp_path / "roster.yaml"
    a_file.write_text("slug: x\n")
    for name in ("HYDRA_ROSTER_DIR", "HYDRA_STORAGE_ROOT", "HYDRA_WORKFLOWS_DIR", "HYDRA_CHAPTERS_DIR"):
        with pytest.raises(SettingsError, match=f"^{name} .*exists and is not a folder"):
            load_settings({name: str(a_file)})
    with pytest.raises(SettingsError, match="^HYDRA_CLIP_CHECKPOINT .*is a folder, not a file"):
        load_settings({"HYDRA_CLIP_CHECKPOINT": str(tmp_path)})
    with pytest.raises(SettingsError, match="^HYDRA_ROSTER_DIR .*NUL"):
        load_settings({"HYDRA_ROSTER_DIR": "roster\0x"})


def test_every_bad_variable_is_reported_at_once():
    with pytest.raises(SettingsError) as raised:
        load_settings({"HYDRA_TIMEZONE": "Nowhere/City", "HYDRA_REVIEW_PORT": "0", "HYDRA_REDIS_URL": "x"})
    names = [line.split()[0].rstrip(":") for line in str(raised.value).split("; ")]
    assert names == ["HYDRA_TIMEZONE", "HYDRA_REDIS_URL", "HYDRA_REVIEW_PORT"]


def test_valid_values_are_normalized(tmp_path):
    settings = load_settings(
        {
            "HYDRA_ENV": " Cluster ",
            "HYDRA_TIMEZONE": "Europe/Stockholm",
            "HYDRA_NIGHTS_START": "2026-02-01",
            "HYDRA_ROSTER_DIR": str(tmp_path / "roster" / ".." / "roster"),
            "HYDRA_CATALOG_URL": "postgresql+psycopg2://hydra:pw@db:5432/hydra",
            "HYDRA_REDIS_URL": "redis://127.0.0.1:6379/0",
            "HYDRA_QDRANT_URL": "http://qdrant:6333",
            "HYDRA_LLM_BASE_URL": "https://llm.internal/v1",
            "HYDRA_REVIEW_PORT": "8080",
            "HYDRA_LOUDNESS_TARGET_LUFS": "-16",
            "HYDRA_WEBHOOK_URL": "",  # empty is unset, as Kubernetes renders a missing value
        }
    )
    assert settings.env == "cluster" and settings.timezone == "Europe/Stockholm"
    assert settings.roster_dir == str(tmp_path / "roster")
    assert settings.review_port == 8080 and settings.loudness_target_lufs == -16.0
    assert settings.webhook_url is None


def test_defaults_of_the_settings_other_stages_read():
    settings = load_settings({})
    assert settings.env == "local" and settings.timezone == "UTC"
    assert settings.workflows_dir.endswith("/workflows") and settings.chapters_dir.endswith("/chapters")
    assert settings.llm_model == "current" and settings.llm_base_url is None
    assert (settings.loudness_target_lufs, settings.review_port, settings.report_due_hour) == (-23.0, 3100, 7)
    assert settings.review_user_header == "X-Forwarded-User"
    assert settings.redis_url is None and settings.qdrant_url is None
    assert "HYDRA_LLM_API_KEY" in Settings.SECRETS and not hasattr(settings, "llm_api_key")


def test_only_the_given_mapping_is_read(monkeypatch):
    monkeypatch.setenv("HYDRA_TIMEZONE", "Not/AZone")
    assert load_settings({}).timezone == "UTC"  # the process environment is not consulted
    assert load_settings({"hydra_timezone": "Asia/Tokyo"}).timezone == "Asia/Tokyo"


def test_nights_start_defaults_to_the_first_of_this_month_in_the_studios_timezone():
    for zone in ("UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"):
        expected = dt.datetime.now(ZoneInfo(zone)).date().replace(day=1).isoformat()
        assert load_settings({"HYDRA_TIMEZONE": zone}).nights_start == expected
    # 23:30 UTC on the last day of November is already December 1st in Kiritimati (UTC+14).
    late = dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.UTC)
    assert first_of_month("Pacific/Kiritimati", late) == "2026-12-01"
    assert first_of_month("UTC", late) == "2026-11-01"
    assert load_settings({"HYDRA_NIGHTS_START": "2025-06-01"}).nights_start == "2025-06-01"


def test_the_calendar_the_tests_run_on_is_the_one_conftest_sets():
    assert nights_partitions.start.strftime("%Y-%m-%d") == TEST_NIGHTS_START


def test_a_tick_before_the_calendar_starts_skips_with_a_reason(tmp_path):
    """A calendar that starts after today: the 22:00 tick says so instead of an unknown-partition error."""
    roster = tmp_path / "roster"
    roster.mkdir()
    (roster / "ada.yaml").write_text("slug: ada\n")
    storage = HydraStorage(root=str(tmp_path / "storage"), roster_dir=str(roster))
    schedule = build_overnight_schedule(dg.DefaultScheduleStatus.STOPPED)
    first = dt.date.fromisoformat(TEST_NIGHTS_START)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(QUEENS, ["ada"])
        instance.report_runless_asset_event(dg.AssetMaterialization("queen_lora", partition="ada"))
        results = {}
        for night in (first - dt.timedelta(days=1), first):
            moment = dt.datetime.combine(night, dt.time(22), tzinfo=ZoneInfo(SETTINGS.timezone))
            with dg.build_schedule_context(
                instance=instance, scheduled_execution_time=moment, resources={"storage": storage}
            ) as context:
                results[night] = schedule(context)
    before = results[first - dt.timedelta(days=1)]
    assert isinstance(before, dg.SkipReason)
    assert "before the nights calendar starts" in before.skip_message and TEST_NIGHTS_START in before.skip_message
    [request] = results[first]  # the first night itself is a real key and is requested
    assert request.partition_key == queen_night_key("ada", TEST_NIGHTS_START)


def test_the_lora_sensor_and_the_schedule_share_the_calendar_rule():
    from sensors.overnight import calendar_not_started

    first = dt.date.fromisoformat(TEST_NIGHTS_START)
    reason = calendar_not_started((first - dt.timedelta(days=1)).isoformat())
    assert reason and "HYDRA_NIGHTS_START" in reason and TEST_NIGHTS_START in reason
    assert calendar_not_started(TEST_NIGHTS_START) is None
