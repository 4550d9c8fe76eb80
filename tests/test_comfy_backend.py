"""ComfyUIBackend against a local server that speaks ComfyUI's protocol (tests/comfy_server.py)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
import time

import numpy as np
import pytest
import requests

from hydra_assets.domain import comfy_workflow as wf
from hydra_assets.domain import generation as gen
from hydra_assets.domain.workflows import WorkflowError
from hydra_assets.domain.demo_data import DEMO_QUEENS
from hydra_assets.domain.roster import Queen
from resources.image import (
    ComfyUIBackend,
    ComfyUIPreflightError,
    ComfyUITimeout,
    ComfyUIUnavailable,
    ComfyUIValidationError,
    backoff_delay,
    describe_prompt_rejection,
)
from resources.image.comfy_http import Transport
from tests.comfy_server import FakeComfyUI, render_png

NOVA = Queen.model_validate(DEMO_QUEENS[0].roster)
LORA = "nova-sterling_lora.safetensors"


def plan(count: int = 3, lora: bool = True) -> list[gen.GenerationRequest]:
    return gen.plan_night(
        queen=NOVA, night="2026-11-20", counts={"portrait": count}, sampling=gen.Sampling(steps=3, width=64, height=48),
        model="RealVisXL_V5.0.safetensors", backend="comfyui", generative=True,
        lora=gen.LoraSpec(LORA, 2, "ab" * 32, 0.75) if lora else None, reference_set_hash="r" * 64,
    )


@pytest.fixture
def comfy(tmp_path):
    """Start a fake ComfyUI with the given knobs; all are stopped after the test."""
    servers = []

    def start(**knobs) -> FakeComfyUI:
        server = FakeComfyUI(tmp_path / f"output-{len(servers)}", **{"loras": [LORA], **knobs}).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def client(server: FakeComfyUI, **fields) -> ComfyUIBackend:
    settings = dict(base_url=server.url, backoff_base_s=0.01, backoff_cap_s=0.02, poll_interval_s=0.02, request_timeout_s=5.0)
    return ComfyUIBackend(**{**settings, **fields})


def pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_normal_run_follows_the_websocket_and_downloads_each_image(comfy):
    server = comfy()
    requests_ = plan(3)
    results = list(client(server).generate(requests_))

    assert [r.request.image_id for r in results] == [r.image_id for r in requests_]
    assert [r.error for r in results] == [None] * 3
    for result in results:
        graph = server.accepted[result.details["prompt_id"]]  # our prompt id is the one ComfyUI ran
        assert {k: v["class_type"] for k, v in graph.items()}["2"] == "LoraLoader"
        assert graph["5"]["inputs"]["seed"] == result.request.seed and graph["2"]["inputs"]["strength_model"] == 0.75
        expected = pixels(render_png(result.request.seed, 64, 48, graph))
        assert np.array_equal(np.asarray(result.image), expected)
        assert result.model_seconds > 0
    assert (len(server.accepted), server.post_attempts, server.view_gets) == (3, 3, 3)
    assert server.history_gets == 0  # outputs came over the websocket


def submit_one(backend: ComfyUIBackend, request: gen.GenerationRequest) -> str:
    http = Transport(backend.base_url, 5.0, time.monotonic() + 30)
    return backend.submit(http, backend.workflow(request), request, "client", logging.getLogger("test"))


def test_missing_checkpoint_fails_preflight_before_anything_is_queued(comfy):
    server = comfy(checkpoints=["sd_xl_base_1.0.safetensors"])
    with pytest.raises(ComfyUIPreflightError) as caught:
        list(client(server).generate(plan(2)))
    message = str(caught.value)
    assert f"preflight against {server.url}/object_info failed" in message
    assert "checkpoints not on the server: 'RealVisXL_V5.0.safetensors' (used by sdxl)" in message
    assert "the server has: sd_xl_base_1.0.safetensors" in message
    assert server.post_attempts == 0 and server.object_info_gets == 1


def test_rejected_graph_names_node_input_and_message(comfy):
    server = comfy(checkpoints=["sd_xl_base_1.0.safetensors"])
    with pytest.raises(ComfyUIValidationError) as caught:
        submit_one(client(server), plan(1)[0])
    message = str(caught.value)
    assert "rejected prompt" in message and "Prompt outputs failed validation" in message
    assert "node 1 (CheckpointLoaderSimple) input 'ckpt_name': Value not in list" in message
    assert "'RealVisXL_V5.0.safetensors' not in ['sd_xl_base_1.0.safetensors']" in message
    assert server.post_attempts == 1 and not server.accepted  # a 400 is not retried

    lora_server = comfy(loras=["someone_else.safetensors"])
    with pytest.raises(ComfyUIValidationError) as caught:
        submit_one(client(lora_server), plan(1)[0])
    assert "node 2 (LoraLoader) input 'lora_name': Value not in list" in str(caught.value)
    assert caught.value.node_errors["2"]["class_type"] == "LoraLoader"
    assert caught.value.node_errors["2"]["dependent_outputs"] == ["8"]


def test_server_validates_links_like_comfyui(comfy):
    server = comfy()
    graph = client(server).workflow(plan(1, lora=False)[0])
    graph["5"]["inputs"]["model"] = ["1", 1]  # CLIP into a MODEL input
    del graph["6"]["inputs"]["batch_size"]
    response = requests.post(f"{server.url}/api/prompt", json={"prompt": graph}, timeout=5)
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["5"]["errors"][0]["type"] == "return_type_mismatch"
    assert body["node_errors"]["6"]["errors"][0]["type"] == "required_input_missing"
    text = describe_prompt_rejection(f"{server.url}/api/prompt", "p1", body)
    assert "node 5 (KSampler) input 'model': Return type mismatch" in text
    assert "node 6 (EmptyLatentImage) input 'batch_size': Required input is missing" in text


def test_two_server_errors_then_success(comfy):
    server = comfy(fail_post_times=2)
    results = list(client(server).generate(plan(2)))
    assert [r.error for r in results] == [None, None]
    assert server.post_attempts == 4 and len(server.accepted) == 2


def test_backoff_follows_spec_with_jitter():
    import random

    rng = random.Random(1)
    for attempt, ceiling in [(0, 10), (1, 20), (2, 40), (4, 160), (5, 300), (9, 300)]:
        delays = [backoff_delay(attempt, 10, 300, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) == 50  # jittered


def test_answer_lost_after_queueing_is_not_submitted_again(comfy):
    server = comfy(slow_post_times=1, post_delay_s=1.0)
    [result] = list(client(server, request_timeout_s=0.3).generate(plan(1)))
    assert result.error is None
    assert server.post_attempts == 1 and len(server.accepted) == 1


def test_dropped_websocket_falls_back_to_history(comfy):
    server = comfy(drop_ws_on="progress")
    results = list(client(server).generate(plan(3)))
    assert [r.error for r in results] == [None] * 3
    assert server.ws_dropped == 1 and server.history_gets >= 3
    assert len(server.accepted) == 3


def test_prompt_that_never_finishes_times_out_naming_its_id(comfy):
    server = comfy(never_finish=True)
    results = list(client(server, image_timeout_s=0.4).generate(plan(2)))
    assert all(r.image is None for r in results)
    for result in results:
        prompt_id = result.details["prompt_id"]
        assert f"ComfyUI prompt {prompt_id} for {result.request.image_id} timed out: no progress for 0.4s" in result.error
    running, queued = (r.details["prompt_id"] for r in results)
    assert "at step 1/3" in results[0].error
    assert server.interrupts == 1 and server.deleted == [queued]  # the GPU is freed, the queue emptied


def test_execution_error_names_the_node(comfy):
    server = comfy(error_on_node=wf.SAMPLER)
    [result] = list(client(server).generate(plan(1)))
    assert result.image is None
    assert f"ComfyUI prompt {result.details['prompt_id']}: node 5 (KSampler) raised torch.OutOfMemoryError" in result.error


def test_unreachable_server_fails_after_the_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = ComfyUIBackend(base_url=f"http://127.0.0.1:{port}", backoff_base_s=0.01, backoff_cap_s=0.02, request_timeout_s=1)
    with pytest.raises(ComfyUIUnavailable, match=rf"GET http://127.0.0.1:{port}/object_info failed after 4 attempts: ComfyUI ConnectionError: .*Connection refused"):
        list(backend.generate(plan(1)))


def test_view_refuses_path_tricks(comfy):
    server = comfy()
    [result] = list(client(server).generate(plan(1)))
    params = result.details["comfyui_file"]
    assert requests.get(f"{server.url}/api/view", params=params, timeout=5).status_code == 200
    assert requests.get(f"{server.url}/view", params={**params, "filename": "../secret.png"}, timeout=5).status_code == 400
    assert requests.get(f"{server.url}/view", params={**params, "subfolder": "../../etc"}, timeout=5).status_code == 403
    assert requests.get(f"{server.url}/view", params={**params, "filename": "nope.png"}, timeout=5).status_code == 404


def test_a_prompt_the_server_forgot_is_resubmitted_and_not_waited_for(comfy):
    server = comfy(lose_prompts=1)
    began = time.monotonic()
    [result] = list(client(server, ws_idle_poll_s=0.2, image_timeout_s=600).generate(plan(1)))
    assert result.error is None and result.details["resubmitted"] == 1
    assert len(server.accepted) == 2 and time.monotonic() - began < 10

    hopeless = comfy(lose_prompts=10)
    [result] = list(client(hopeless, ws_idle_poll_s=0.2, max_resubmits=2).generate(plan(1)))
    assert result.image is None and "was lost by" in result.error and "3 times" in result.error
    assert len(hopeless.accepted) == 3  # one submission and two resubmissions, no more


class TrickleServer:
    """Accepts connections and answers one byte every ``interval_s``, never finishing."""

    def __init__(self, interval_s: float = 0.1):
        import threading

        self.interval_s = interval_s
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 100000
        try:
            conn.recv(65536)
            for byte in answer:
                if self.stopped:
                    break
                conn.sendall(bytes([byte]))
                time.sleep(self.interval_s)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


def test_a_trickling_server_cannot_stretch_a_call_or_the_step():
    server = TrickleServer()
    try:
        backend = ComfyUIBackend(base_url=server.url, request_timeout_s=1.0, max_retries=0)
        began = time.monotonic()
        with pytest.raises(ComfyUIUnavailable, match=r"GET .*/object_info failed after 1 attempts: ComfyUI no complete answer within the 1 s deadline"):
            list(backend.generate(plan(1)))
        assert time.monotonic() - began < 2.5  # not 0.1 s per byte for ever

        patient = ComfyUIBackend(base_url=server.url, request_timeout_s=1.0, max_retries=50, backoff_base_s=0.01, backoff_cap_s=0.02, step_timeout_s=2.5)
        began = time.monotonic()
        with pytest.raises(ComfyUITimeout, match=r"overall deadline passed \(2.5s\)"):
            list(patient.generate(plan(1)))
        assert time.monotonic() - began < 4.0  # the step's deadline, whatever the retries allow
    finally:
        server.stop()


def test_a_face_slot_the_queen_cannot_fill_is_refused_before_anything_is_queued(comfy, tmp_path):
    import json

    server = comfy()
    folder = tmp_path / "wf"
    folder.mkdir()
    graph = json.loads(Path("workflows/sdxl.json").read_text())
    graph["9"] = {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "hydra.reference.face"}}
    (folder / "face.json").write_text(json.dumps(graph))
    requests_ = [gen.GenerationRequest(**{**r.__dict__, "workflow": "face"}) for r in plan(2)]
    with pytest.raises(WorkflowError, match=r"face.json: node 9 slot 'hydra.reference.face': the queen has no face reference"):
        list(client(server, workflows_dir=str(folder)).generate(requests_))
    assert (server.post_attempts, server.uploads, server.object_info_gets) == (0, 0, 0)


def test_websocket_is_reconnected_after_polling_a_while(comfy):
    server = comfy(drop_ws_on="progress", step_delay_s=0.05)
    results = list(client(server, ws_idle_poll_s=0.3, max_in_flight=1).generate(plan(6)))
    assert [r.error for r in results] == [None] * 6
    assert server.ws_dropped >= 2  # each reconnected socket met the next drop: it did reconnect
