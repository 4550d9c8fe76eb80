from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hydra_assets.domain.metrics import PipelineMetrics, record_partition, to_one_to_ten
from hydra_assets.domain.quality import SCORE_RANGES
from resources.metrics import MetricsPusher


@pytest.fixture
def pushgateway():
    """A local endpoint speaking the Pushgateway's push API (POST /metrics/job/<job>/<label>/<value>)."""
    pushes: list[tuple[str, str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            pushes.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", pushes
    server.shutdown()
    server.server_close()


def demo_metrics() -> PipelineMetrics:
    metrics = PipelineMetrics()
    metrics.record_images("nova-sterling", [("portrait", True), ("portrait", False), ("pose", True)])
    metrics.record_scores("nova-sterling", "aesthetic", [6.4, 7.2, 9.9])
    metrics.approval_rate.labels("nova-sterling", "portrait").set(0.5)
    metrics.generation_duration.labels("generation", "nova-sterling").observe(42.0)
    metrics.set_queue_depth(3)
    return metrics


def test_spec_metric_names_labels_and_buckets():
    text = demo_metrics().exposition()
    assert 'hydra_images_generated_total{approved="true",asset_type="portrait",queen_slug="nova-sterling"} 1.0' in text
    assert 'hydra_quality_score_bucket{le="7.0",queen_slug="nova-sterling",score_type="aesthetic"} 1.0' in text
    assert 'hydra_quality_score_bucket{le="10.0",queen_slug="nova-sterling",score_type="aesthetic"} 3.0' in text
    assert 'hydra_approval_rate{asset_type="portrait",queen_slug="nova-sterling"} 0.5' in text
    assert 'hydra_generation_duration_seconds_count{queen_slug="nova-sterling",task_type="generation"} 1.0' in text
    assert "hydra_queue_depth 3.0" in text


def test_queue_depth_is_exported_only_where_it_was_measured():
    metrics = PipelineMetrics()
    metrics.record_images("ada", [("pose", True)])
    assert "hydra_queue_depth" not in metrics.exposition()


def test_samples_for_run_metadata_leave_out_buckets():
    samples = demo_metrics().samples()
    assert samples['hydra_quality_score_count{queen_slug="nova-sterling",score_type="aesthetic"}'] == 3
    assert not any("_bucket" in name for name in samples)


def test_push_to_gateway_with_grouping_key(pushgateway):
    url, pushes = pushgateway
    assert MetricsPusher(pushgateway_url=url).push(demo_metrics(), {"queen": "nova-sterling", "night": "2026-11-20"})
    [(method, path, body)] = pushes
    assert method == "POST"
    assert path == "/metrics/job/hydra/night/2026-11-20/queen/nova-sterling"
    assert "hydra_images_generated_total" in body


def test_no_gateway_or_gateway_down_never_raises(caplog):
    assert MetricsPusher().push(demo_metrics(), {"queen": "q"}) is False
    assert MetricsPusher(pushgateway_url="http://127.0.0.1:9").push(demo_metrics(), {"queen": "q"}) is False
    assert "metrics not pushed to http://127.0.0.1:9" in caplog.text


def test_scores_on_other_scales_land_on_one_to_ten():
    assert to_one_to_ten(70, 0, 100) == pytest.approx(7.3)
    assert to_one_to_ten(0.7, 0, 1) == pytest.approx(7.3)
    assert to_one_to_ten(6.5, 1, 10) == pytest.approx(6.5)
    assert to_one_to_ten(140, 0, 100) == 10.0  # clamped, never off the histogram


def test_record_partition_counts_rates_and_skips_missing_scores():
    metrics = PipelineMetrics()
    rows = [
        {"asset_type": "portrait", "approved": True, "aesthetic_score": 7.0, "technical_score": 80.0,
         "face_match_score": 0.9, "composite_score": 0.8},
        {"asset_type": "portrait", "approved": False, "aesthetic_score": 5.0, "technical_score": 40.0,
         "face_match_score": float("nan"), "composite_score": 0.3},
        {"asset_type": "pose", "approved": False, "aesthetic_score": None, "technical_score": None,
         "face_match_score": None, "composite_score": None},
    ]
    record_partition(metrics, "ada", rows, SCORE_RANGES)
    samples = metrics.samples()
    assert samples['hydra_approval_rate{asset_type="portrait",queen_slug="ada"}'] == 0.5
    assert samples['hydra_approval_rate{asset_type="pose",queen_slug="ada"}'] == 0.0
    assert samples['hydra_quality_score_count{queen_slug="ada",score_type="face_match"}'] == 1
    assert samples['hydra_quality_score_count{queen_slug="ada",score_type="aesthetic"}'] == 2
    assert samples['hydra_images_generated_total{approved="false",asset_type="pose",queen_slug="ada"}'] == 1
