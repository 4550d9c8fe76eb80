"""The real ComfyUI (v0.3.64 on CPU, no weights) for tests: one server per test session.

``../shared/comfyui/start-server`` (beside the repository) unpacks and starts it. Where that
script is absent (a user's machine) the tests that need the server skip, saying so; where it
exists and the server does not start, they fail. The server gets its own input, output and
model folders under the session's tmp; the models folder (mapped in through
extra_model_paths.yaml exactly as deploy/README.md describes) holds one empty checkpoint and
one empty LoRA file, so "what the server has" is not an empty list. Ports: 8200-8219.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
START_SERVER = Path(os.environ.get("HYDRA_COMFYUI_START_SERVER") or REPO.parent / "shared" / "comfyui" / "start-server")
"""Beside the repository; HYDRA_COMFYUI_START_SERVER names another (e.g. from a git worktree)."""
PORTS = range(8200, 8220)
SERVER_CHECKPOINT = "someone_else_sdxl.safetensors"
SERVER_LORA = "someone_else_lora.safetensors"


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for the real ComfyUI")


@dataclass
class RealComfyUI:
    port: int
    root: Path
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def start(self) -> float:
        """Start the server; returns how long it took. Raises with the script's output on failure."""
        began = time.monotonic()
        extra = self.root / "extra_model_paths.yaml"
        done = subprocess.run(
            [str(START_SERVER), "--port", str(self.port), "--input", str(self.input_dir), "--output", str(self.output_dir),
             "--extra-model-paths", str(extra)],
            capture_output=True, text=True, timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{START_SERVER} --port {self.port} failed ({done.returncode}): {done.stdout}{done.stderr}")
        pid_line = next(line for line in done.stdout.splitlines() if line.startswith("pid "))
        self.pid = int(pid_line.split()[1])
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL (a crash: the in-memory queue and history are gone) and wait until it is gone."""
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(100):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.pid = 0

    def stop(self) -> None:
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(self.pid, 0)
                time.sleep(0.05)
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.pid = 0

    def object_info(self, node: str) -> dict:
        return requests.get(f"{self.url}/object_info/{node}", timeout=10).json()[node]


def prepare(root: Path) -> None:
    for sub in ("input", "output", "models/checkpoints", "models/loras"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "models/checkpoints" / SERVER_CHECKPOINT).write_bytes(b"")
    (root / "models/loras" / SERVER_LORA).write_bytes(b"")
    (root / "extra_model_paths.yaml").write_text(
        f"hydra:\n    base_path: {root / 'models'}\n    checkpoints: checkpoints\n    loras: loras\n", encoding="utf-8"
    )


_SERVER: list[RealComfyUI] = []


@pytest.fixture(scope="session")
def real_comfy(request, tmp_path_factory):
    """The running real server (RealComfyUI), started once per session however many modules
    import this fixture, and stopped when the session ends."""
    if not START_SERVER.is_file():
        pytest.skip(f"{START_SERVER} is absent: the real-ComfyUI tests need ../shared/comfyui beside the repository")
    if _SERVER:
        return _SERVER[0]
    root = tmp_path_factory.mktemp("real-comfyui")
    prepare(root)
    server = RealComfyUI(free_port(), root)
    try:
        server.start()
    except (RuntimeError, subprocess.TimeoutExpired, StopIteration) as exc:
        pytest.fail(f"the real ComfyUI did not start: {exc}", pytrace=False)
    _SERVER.append(server)
    request.config.add_cleanup(server.stop)
    return server


def write_workflow(folder: Path, name: str, graph: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(graph, indent=2), encoding="utf-8")
    return name


def node(class_type: str, title: str | None = None, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs, **({"_meta": {"title": title}} if title else {})}


FACE_SCALE = {
    "1": node("LoadImage", "hydra.reference.face", image="placeholder.png"),
    "2": node("ImageScale", "hydra.size", image=["1", 0], upscale_method="nearest-exact", width=64, height=64, crop="disabled"),
    "3": node("SaveImage", "hydra.output", images=["2", 0], filename_prefix="hydra"),
}
"""Weight-free: the face reference, scaled to the image size, saved."""

EMPTY_BATCH = {
    "1": node("EmptyImage", "hydra.size", width=64, height=64, batch_size=1, color=0x336699),
    "2": node("SaveImage", "hydra.output", images=["1", 0], filename_prefix="hydra"),
}
"""Weight-free: ``batch_size`` plain images, saved."""

SCALED = {
    "1": node("EmptyImage", None, width=64, height=64, batch_size=1, color=0x884422),
    "2": node("ImageScale", "hydra.size", image=["1", 0], upscale_method="lanczos", width=64, height=64, crop="disabled"),
    "3": node("SaveImage", "hydra.output", images=["2", 0], filename_prefix="hydra"),
}
"""Weight-free and a little slower: an image scaled up to the image size (the bench's graph)."""
