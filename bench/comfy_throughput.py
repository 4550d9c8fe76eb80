"""ComfyUIBackend's images/s against the raw ComfyUI queue, on the same weight-free graphs.

    .venv/bin/python bench/comfy_throughput.py [--images 48] [--size 512] [--url URL]

Without ``--url`` it starts the real ComfyUI (``../shared/comfyui/start-server``, port 8218,
its own input/output folders under a temporary directory) and stops it after. Both sides run
the same filled graphs (EmptyImage → ImageScale → SaveImage, one per image, distinct prefixes
so ComfyUI's cache serves none): "raw" POSTs every prompt to /prompt at once, waits on /ws
until the queue is empty and downloads each image from /view; "backend" is
``ComfyUIBackend.generate`` (preflight, bounded in-flight queue, websocket, downloads). The
last line is the ratio backend/raw of the medians of three alternating passes.
"""

from __future__ import annotations

import argparse
import statistics
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra_assets.domain import generation as gen  # noqa: E402
from hydra_assets.domain.demo_data import DEMO_QUEENS  # noqa: E402
from hydra_assets.domain.roster import Queen  # noqa: E402
from resources.image import ComfyUIBackend  # noqa: E402
from tests.comfy_real import SCALED, RealComfyUI, prepare, write_workflow  # noqa: E402

PORT = 8218
PASSES = 3


def plan(images: int, size: int, night: str) -> list[gen.GenerationRequest]:
    return gen.plan_night(
        queen=Queen.model_validate(DEMO_QUEENS[0].roster), night=night, counts={"portrait": images},
        sampling=gen.Sampling(steps=1, width=size, height=size), model="none", backend="comfyui", generative=True,
        lora=None, reference_set_hash="r" * 64, workflows={"portrait": "bench"},
    )


def raw_queue(url: str, graphs: list[dict]) -> float:
    """images/s straight through ComfyUI's queue: submit all, follow /ws, download each."""
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"{url.replace('http', 'ws', 1)}/ws?clientId={client_id}", timeout=600)
    started = time.perf_counter()
    ids = [requests.post(f"{url}/prompt", json={"prompt": g, "client_id": client_id}, timeout=30).json()["prompt_id"] for g in graphs]
    left = set(ids)
    while left:
        frame = ws.recv()
        if isinstance(frame, str):
            message = json.loads(frame)
            data = message.get("data") or {}
            if message.get("type") == "executing" and data.get("node") is None:
                left.discard(data.get("prompt_id"))
    for prompt_id in ids:
        outputs = requests.get(f"{url}/history/{prompt_id}", timeout=30).json()[prompt_id]["outputs"]
        for output in outputs.values():
            for image in output.get("images", []):
                requests.get(f"{url}/view", params=image, timeout=30).raise_for_status()
    ws.close()
    return len(graphs) / (time.perf_counter() - started)


def through_backend(backend: ComfyUIBackend, requests_: list[gen.GenerationRequest]) -> float:
    started = time.perf_counter()
    made = 0
    for result in backend.generate(requests_):
        assert result.error is None, result.error
        made += 1
    return made / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--url", help="a running ComfyUI; default: start the real one on port 8218")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = None
        url = args.url
        if url is None:
            prepare(root / "server")
            server = RealComfyUI(PORT, root / "server")
            print(f"started ComfyUI on {server.url} in {server.start():.1f}s")
            url = server.url
        try:
            write_workflow(root / "wf", "bench", SCALED)
            backend = ComfyUIBackend(base_url=url, workflows_dir=str(root / "wf"), poll_interval_s=0.1)
            warm = plan(2, args.size, "2026-01-01")
            through_backend(backend, warm)  # first-call costs (node imports) land on neither side
            raws, ourss = [], []
            for n in range(PASSES):  # alternating, fresh prompts each pass (nothing served from cache)
                raws.append(raw_queue(url, [backend.workflow(r) for r in plan(args.images, args.size, f"2026-02-{n + 1:02d}")]))
                ourss.append(through_backend(backend, plan(args.images, args.size, f"2026-03-{n + 1:02d}")))
            raw, ours = statistics.median(raws), statistics.median(ourss)
            print(f"raw ComfyUI queue: {raw:.2f} images/s ({args.images} images, {args.size}x{args.size}; passes {', '.join(f'{r:.1f}' for r in raws)})")
            print(f"ComfyUIBackend:    {ours:.2f} images/s ({args.images} images, {args.size}x{args.size}; passes {', '.join(f'{r:.1f}' for r in ourss)})")
            print(f"backend/raw images/s ratio: {ours / raw:.2f}")
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
