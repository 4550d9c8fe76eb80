from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from resources.alerts import WebhookNotifier
from sensors.alerts import build_low_approval_sensor, build_run_failure_sensor

STOPPED = dg.DefaultSensorStatus.STOPPED


class WebhookServer:
    """A local incoming-webhook endpoint that records every JSON body it receives."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


def report_approval(instance: dg.DagsterInstance, queen: str, night: str, rate: float) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="approved_images",
            partition=dg.MultiPartitionKey({"queen": queen, "night": night}),
            metadata={"approval_rate": rate},
        )
    )


def evaluate(sensor, instance, url: str | None, cursor: str | None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"webhook": WebhookNotifier(url=url)})
    return sensor(context)


def test_low_approval_alerts_once_per_queen_and_night(webhook):
    sensor = build_low_approval_sensor(STOPPED)
    with dg.instance_for_test() as instance:
        report_approval(instance, "ada-marlowe", "2026-11-19", 0.1)  # history before the sensor was turned on
        started = evaluate(sensor, instance, webhook.url, None)
        assert webhook.bodies == [], "turning the sensor on must not replay old nights"
        report_approval(instance, "nova-sterling", "2026-11-20", 0.25)
        report_approval(instance, "ada-marlowe", "2026-11-20", 0.8)
        first = evaluate(sensor, instance, webhook.url, started.cursor)
        assert len(webhook.bodies) == 1
        body = webhook.bodies[0]
        assert body["hydra"]["queen_slug"] == "nova-sterling" and body["hydra"]["night"] == "2026-11-20"
        assert body["hydra"]["approval_rate"] == 0.25
        assert "nova-sterling" in body["text"] and body["text"] == body["content"].replace("**", "*")

        second = evaluate(sensor, instance, webhook.url, first.cursor)
        assert len(webhook.bodies) == 1, "an unchanged event log must not alert again"

        report_approval(instance, "nova-sterling", "2026-11-20", 0.1)  # re-materialized, still low
        third = evaluate(sensor, instance, webhook.url, second.cursor)
        assert len(webhook.bodies) == 1, "one alert per queen and night"

        report_approval(instance, "nova-sterling", "2026-11-21", 0.4)
        evaluate(sensor, instance, webhook.url, third.cursor)
        assert [b["hydra"]["night"] for b in webhook.bodies] == ["2026-11-20", "2026-11-21"]


def test_no_url_logs_and_sends_nothing(webhook, caplog):
    sensor = build_low_approval_sensor(STOPPED)
    with dg.instance_for_test() as instance:
        started = evaluate(sensor, instance, None, None)
        report_approval(instance, "nova-sterling", "2026-11-20", 0.2)
        evaluate(sensor, instance, None, started.cursor)
    assert webhook.bodies == []
    assert any("no webhook URL configured" in r.getMessage() for r in caplog.records)


def test_unreachable_webhook_does_not_fail_the_sensor(caplog):
    sensor = build_low_approval_sensor(STOPPED)
    with dg.instance_for_test() as instance:
        started = evaluate(sensor, instance, None, None)
        report_approval(instance, "nova-sterling", "2026-11-20", 0.2)
        result = evaluate(sensor, instance, "http://127.0.0.1:9/hooks/secret-token", started.cursor)
    assert json.loads(result.cursor)["alerted"] == ["2026-11-20|nova-sterling"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "alert not delivered to webhook http://127.0.0.1:9/" in messages
    assert "secret-token" not in messages


@dg.op
def broken_step():
    raise ValueError("reference folder /data/missing is empty\nmore detail")


@dg.job
def broken_job():
    broken_step()


def test_run_failure_posts_run_job_step_and_first_error_line(webhook):
    sensor = build_run_failure_sensor(STOPPED)
    with dg.instance_for_test() as instance:
        result = broken_job.execute_in_process(instance=instance, raise_on_error=False)
        run = instance.get_run_by_id(result.run_id)
        [failure] = [e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE"]
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_sensor",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=failure,
            resources={"webhook": WebhookNotifier(url=webhook.url)},
        ).for_run_failure()
        sensor(context)
    [body] = webhook.bodies
    assert body["hydra"] == {
        "event": "pipeline.run.failed",
        "run_id": result.run_id,
        "job": "broken_job",
        "step": "broken_step",
        "error": "ValueError: reference folder /data/missing is empty",
        "partition": None,
    }
