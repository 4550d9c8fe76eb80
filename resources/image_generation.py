"""Image backends for generated_images, behind one interface.

``generate(requests)`` yields one :class:`GenerationResult` per request as soon as that image
exists, so the asset saves each image (and its manifest line) before the next one arrives and
a killed run loses nothing finished. A failed image is a result with an ``error``; it never
stops the others. Only a backend that cannot work at all (no model, server down after every
retry) raises.

- :class:`ComfyUIBackend`: the studio's ComfyUI over HTTP + WebSocket (SPEC workflow graph).
- :class:`DiffusersBackend`: an SDXL pipeline from a local path on the step's GPU.
- :class:`DemoRenderer`: the embedded default. It is not a generative model: it derives
  images from the queen's references (crop, flip, colour, light) and deliberately degrades a
  share of them (blur, noise, a face-less crop) so the quality gate has work to do. Its name
  and every image's parameters say so.
"""

from __future__ import annotations

import abc
import functools
import io
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import numpy as np
import requests
import websocket
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from pydantic import Field

from hydra_assets.domain import comfy_workflow
from hydra_assets.domain.generation import GenerationRequest

logger = logging.getLogger(__name__)

DEMO_RENDERER = "demo-renderer"
DEMO_MODEL = "demo-renderer (derives images from the queen's references; not a generative model)"


@dataclass
class GenerationResult:
    request: GenerationRequest
    image: Image.Image | None
    error: str | None = None
    model_seconds: float = 0.0
    """Time the model (or renderer) spent on this image, for the GPU-seconds metadata."""
    details: dict[str, Any] = field(default_factory=dict)
    """Backend facts worth keeping with the image (ComfyUI prompt id, the demo's transform)."""


class ImageBackend(dg.ConfigurableResource, abc.ABC):
    """Turns generation requests into images."""

    generative: ClassVar[bool] = True

    @abc.abstractmethod
    def backend_name(self) -> str:
        """Recorded as ``backend`` in every image's parameters (part of its params hash)."""

    @abc.abstractmethod
    def backend_kind(self) -> str:
        """``comfyui``, ``diffusers`` or ``demo``."""

    @abc.abstractmethod
    def model_name(self) -> str:
        """The checkpoint, recorded as ``model`` in every image's parameters."""

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], log: Any = None) -> Iterator[GenerationResult]:
        """One result per request, each yielded as soon as it is ready."""


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """SPEC's min(base·2^attempt, cap), with 'equal jitter': somewhere in its upper half, so
    clients that failed together do not come back together."""
    ceiling = min(base_s * 2**attempt, cap_s)
    return (rng or random).uniform(ceiling / 2, ceiling)


# --- ComfyUI -----------------------------------------------------------------------------------


class ComfyUIError(RuntimeError):
    pass


class ComfyUIValidationError(ComfyUIError):
    """POST /prompt answered 400: the graph was refused. ``node_errors`` is ComfyUI's own."""

    def __init__(self, message: str, node_errors: dict[str, Any]):
        super().__init__(message)
        self.node_errors = node_errors


class ComfyUITimeout(ComfyUIError):
    pass


class ComfyUIUnavailable(ComfyUIError):
    """The server did not answer (connection errors or 5xx) through every retry."""


def describe_prompt_rejection(url: str, prompt_id: str, body: Any) -> str:
    """ComfyUI's 400 body as one line naming each node, its class, the input and the message."""
    if not isinstance(body, dict):
        return f"{url} rejected prompt {prompt_id}: {str(body)[:500]}"
    error = body.get("error")
    if isinstance(error, dict):
        head = error.get("message") or error.get("type") or "invalid prompt"
        if error.get("type") and error.get("type") != head:
            head = f"{head} ({error['type']})"
    else:
        head = str(error or "invalid prompt")
    parts = []
    node_errors = body.get("node_errors") or {}
    if isinstance(node_errors, dict):
        for node_id, node in node_errors.items():
            class_type = node.get("class_type", "?") if isinstance(node, dict) else "?"
            for reason in (node.get("errors") or []) if isinstance(node, dict) else []:
                extra = reason.get("extra_info") or {}
                input_name = extra.get("input_name")
                where = f"node {node_id} ({class_type})" + (f" input {input_name!r}" if input_name else "")
                detail = f": {reason['details']}" if reason.get("details") else ""
                parts.append(f"{where}: {reason.get('message', reason.get('type', 'error'))}{detail}")
    if not parts and isinstance(error, dict) and error.get("details"):
        parts.append(str(error["details"]))
    return f"{url} rejected prompt {prompt_id}: {head}" + (" - " + "; ".join(parts) if parts else "")


@dataclass
class _Pending:
    request: GenerationRequest
    prompt_id: str
    deadline: float
    submitted: float
    started: float | None = None
    finished_signal: bool = False
    succeeded: bool = False
    ready: bool = False
    error: str | None = None
    outputs: dict[str, Any] | None = None
    progress: tuple[int, int] | None = None
    model_seconds: float | None = None


_TIMEOUT = object()


class _EventStream:
    """ComfyUI's /ws for one client id; closes itself (and says so) when the socket drops."""

    def __init__(self, url: str, connect_timeout: float, log: Any):
        self.url = url
        self.log = log
        try:
            self.ws: websocket.WebSocket | None = websocket.create_connection(url, timeout=connect_timeout)
        except (OSError, websocket.WebSocketException) as exc:
            log.warning(f"ComfyUI websocket {url} unavailable ({exc}); following prompts by polling /history")
            self.ws = None

    @property
    def alive(self) -> bool:
        return self.ws is not None

    def next(self, timeout: float) -> Any:
        """The next JSON message, ``None`` for one to ignore, or ``_TIMEOUT``."""
        if self.ws is None:
            return _TIMEOUT
        self.ws.settimeout(max(timeout, 0.01))
        try:
            frame = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return _TIMEOUT
        except (websocket.WebSocketException, OSError) as exc:
            self._lost(str(exc) or type(exc).__name__)
            return _TIMEOUT
        if isinstance(frame, bytes):
            return None  # binary frames are previews
        if frame == "":
            self._lost("closed by the server")
            return _TIMEOUT
        try:
            message = json.loads(frame)
        except json.JSONDecodeError:
            return None
        return message if isinstance(message, dict) else None

    def _lost(self, why: str) -> None:
        self.log.warning(f"ComfyUI websocket {self.url} lost ({why}); falling back to polling /history")
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception:  # closing a broken socket may fail in many ways; it is gone either way
                pass
            self.ws = None


class ComfyUIBackend(ImageBackend):
    """The studio's ComfyUI: one prompt per image (per-image seeds stay reproducible), up to
    ``max_in_flight`` queued at once so the GPU never waits on us.

    LoRA files live in ComfyUI's models/loras on the shared NFS, so the graph names the LoRA
    by its file name and nothing is uploaded.
    """

    base_url: str = Field(description="ComfyUI's HTTP root, e.g. http://comfyui:8188")
    checkpoint: str = Field(default="RealVisXL_V5.0.safetensors", description="ckpt_name in models/checkpoints.")
    filename_prefix: str = Field(default="hydra", description="SaveImage prefix; images land in output/<prefix>/<queen>/.")
    max_in_flight: int = Field(default=4, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0)
    image_timeout_s: float = Field(
        default=900.0, gt=0, description="Give up on the prompts in flight when none of them progresses this long."
    )
    poll_interval_s: float = Field(default=2.0, gt=0, description="/history polling when the websocket is down.")
    ws_idle_poll_s: float = Field(default=30.0, gt=0, description="Poll /history when the websocket is quiet this long.")
    use_websocket: bool = True
    max_retries: int = Field(default=3, ge=0, description="SPEC: at most 3 retries.")
    backoff_base_s: float = Field(default=10.0, ge=0, description="SPEC: min(10·2^attempt, 300) s.")
    backoff_cap_s: float = Field(default=300.0, ge=0)

    def backend_name(self) -> str:
        return "comfyui"

    def backend_kind(self) -> str:
        return "comfyui"

    def model_name(self) -> str:
        return self.checkpoint

    def workflow(self, request: GenerationRequest) -> comfy_workflow.Graph:
        p = request.params
        return comfy_workflow.build_workflow(
            checkpoint=self.checkpoint,
            positive=request.prompt,
            negative=request.negative,
            seed=request.seed,
            steps=p["steps"],
            cfg=p["cfg"],
            sampler_name=p["sampler"],
            scheduler=p["scheduler"],
            width=request.width,
            height=request.height,
            filename_prefix=f"{self.filename_prefix}/{request.queen}/{request.image_id}",
            lora_name=p.get("lora_name"),
            lora_strength_model=p.get("lora_strength") or 1.0,
        )

    # -- HTTP ----------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def _ws_url(self, client_id: str) -> str:
        parts = urlsplit(self.base_url.rstrip("/"))
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path + "/ws", f"clientId={client_id}", ""))

    def _pause(self, attempt: int, what: str, why: str, log: Any) -> None:
        delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s)
        log.warning(f"{what}: {why}; retry {attempt + 1}/{self.max_retries} in {delay:.2f}s")
        time.sleep(delay)

    def _call(self, http: requests.Session, method: str, path: str, log: Any, **kwargs: Any) -> requests.Response:
        """One request, retried on connection errors and 5xx; 4xx answers are returned as they are."""
        url = self._url(path)
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                response = http.request(method, url, timeout=self.request_timeout_s, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500:
                    return response
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            if attempt < self.max_retries:
                self._pause(attempt, f"{method} {url}", last, log)
        raise ComfyUIUnavailable(f"{method} {url} failed after {self.max_retries + 1} attempts: {last}")

    def _known(self, http: requests.Session, prompt_id: str) -> bool:
        """Whether the server already has this prompt (an earlier attempt got through)."""
        try:
            history = http.get(self._url(f"/history/{prompt_id}"), timeout=self.request_timeout_s)
            if history.ok and history.json():
                return True
            queue = http.get(self._url("/queue"), timeout=self.request_timeout_s)
            if queue.ok:
                body = queue.json()
                items = [*body.get("queue_running", []), *body.get("queue_pending", [])]
                return any(len(item) > 1 and item[1] == prompt_id for item in items)
        except (requests.RequestException, ValueError):
            pass
        return False

    def submit(self, http: requests.Session, request: GenerationRequest, client_id: str, log: Any) -> str:
        """POST /prompt with our prompt id; a retry first asks whether the last attempt got in,
        so an image is never queued twice. Returns the id the server runs it under."""
        prompt_id = str(uuid.uuid4())
        body = {
            "prompt": self.workflow(request),
            "client_id": client_id,
            "prompt_id": prompt_id,
            "extra_data": {"hydra_image_id": request.image_id},
        }
        url = self._url("/prompt")
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt and self._known(http, prompt_id):
                return prompt_id
            try:
                response = http.post(url, json=body, timeout=self.request_timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 400:
                    try:
                        payload = response.json()
                    except ValueError:
                        payload = response.text
                    node_errors = payload.get("node_errors", {}) if isinstance(payload, dict) else {}
                    raise ComfyUIValidationError(describe_prompt_rejection(url, prompt_id, payload), node_errors)
                if response.status_code < 500:
                    if not response.ok:
                        raise ComfyUIError(f"{url} answered HTTP {response.status_code}: {response.text[:300]}")
                    # Servers older than client-chosen ids answer with their own: follow that one.
                    return str(response.json().get("prompt_id") or prompt_id)
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            if attempt < self.max_retries:
                self._pause(attempt, f"POST {url} ({request.image_id})", last, log)
        raise ComfyUIUnavailable(f"POST {url} for {request.image_id} failed after {self.max_retries + 1} attempts: {last}")

    def _cancel(self, http: requests.Session, prompt_ids: Sequence[str]) -> None:
        """Best effort: take abandoned prompts off the queue first (so none of them starts next),
        then interrupt the one running, if it is ours."""
        if not prompt_ids:
            return
        try:
            http.post(self._url("/queue"), json={"delete": list(prompt_ids)}, timeout=self.request_timeout_s)
            queue = http.get(self._url("/queue"), timeout=self.request_timeout_s).json()
            for item in queue.get("queue_running", []):
                if len(item) > 1 and item[1] in prompt_ids:
                    http.post(self._url("/interrupt"), json={"prompt_id": item[1]}, timeout=self.request_timeout_s)
        except (requests.RequestException, ValueError, AttributeError):
            pass

    # -- following prompts ---------------------------------------------------------------------

    def _apply(self, message: dict[str, Any], pending: dict[str, _Pending]) -> None:
        kind, data = message.get("type"), message.get("data") or {}
        item = pending.get(data.get("prompt_id")) if isinstance(data, dict) else None
        if item is None:
            return
        now = time.monotonic()
        self._touch(pending, now)
        if kind == "execution_start":
            item.started = now
        elif kind == "progress":
            item.progress = (int(data.get("value", 0)), int(data.get("max", 0)))
        elif kind == "executed" and str(data.get("node")) == comfy_workflow.SAVE:
            item.outputs = {comfy_workflow.SAVE: data.get("output") or {}}
        elif kind == "execution_error":
            item.error = (
                f"ComfyUI prompt {item.prompt_id}: node {data.get('node_id')} ({data.get('node_type')}) raised "
                f"{data.get('exception_type')}: {data.get('exception_message')}"
            )
            item.ready = True
        elif kind == "execution_interrupted":
            item.error = f"ComfyUI prompt {item.prompt_id} was interrupted at node {data.get('node_id')}"
            item.ready = True
        elif kind == "execution_success":
            item.succeeded = True
        elif kind == "executing" and data.get("node") is None:
            item.finished_signal = True
        if item.started is not None and (item.succeeded or item.finished_signal) and item.model_seconds is None:
            item.model_seconds = now - item.started
        if item.succeeded and item.outputs is not None:
            item.ready = True

    def _touch(self, pending: dict[str, _Pending], now: float) -> None:
        """Our prompts run in order behind one another, so any sign of life restarts every clock:
        a long queue that moves never times out, a server stuck on one prompt does."""
        for item in pending.values():
            item.deadline = now + self.image_timeout_s

    def _poll(self, http: requests.Session, pending: dict[str, _Pending], log: Any, only_signalled: bool = False) -> None:
        for item in pending.values():
            if item.ready or (only_signalled and not (item.finished_signal or item.succeeded)):
                continue
            response = self._call(http, "GET", f"/history/{item.prompt_id}", log)
            try:
                entry = (response.json() or {}).get(item.prompt_id)
            except ValueError:
                continue
            if not entry:
                continue
            status = entry.get("status") or {}
            messages = status.get("messages") or []
            if status.get("status_str") == "error":
                failure = next((m[1] for m in messages if m and m[0] == "execution_error"), {})
                item.error = (
                    f"ComfyUI prompt {item.prompt_id}: node {failure.get('node_id')} ({failure.get('node_type')}) "
                    f"raised {failure.get('exception_type')}: {failure.get('exception_message')}"
                    if failure
                    else f"ComfyUI prompt {item.prompt_id} ended with an error: {messages}"
                )
            elif status and not status.get("completed", True):
                continue
            item.outputs = entry.get("outputs") or {}
            stamps = {m[0]: (m[1] or {}).get("timestamp") for m in messages if m and isinstance(m[1], dict)}
            start, end = stamps.get("execution_start"), stamps.get("execution_success")
            if isinstance(start, (int, float)) and isinstance(end, (int, float)):
                item.model_seconds = max(0.0, (end - start) / 1000.0)
            item.ready = True
            self._touch(pending, time.monotonic())

    def _wait(self, http: requests.Session, stream: _EventStream | None, pending: dict[str, _Pending], log: Any) -> list[str]:
        """Block until at least one pending prompt has its image, its error or its deadline."""
        last_poll = time.monotonic()
        while True:
            now = time.monotonic()
            ready = [pid for pid, item in pending.items() if item.ready]
            if ready:
                return ready
            expired = [pid for pid, item in pending.items() if now >= item.deadline]
            if expired:
                for pid in expired:
                    item = pending[pid]
                    progress = f" (at step {item.progress[0]}/{item.progress[1]})" if item.progress else ""
                    item.error = (
                        f"ComfyUI prompt {pid} for {item.request.image_id} timed out: no progress for "
                        f"{self.image_timeout_s:g}s{progress} at {self.base_url}; removed it from the queue"
                    )
                self._cancel(http, expired)
                return expired
            wait = max(0.01, min(item.deadline for item in pending.values()) - now)
            if stream is not None and stream.alive:
                message = stream.next(min(wait, self.ws_idle_poll_s))
                if message is _TIMEOUT:
                    if stream.alive and time.monotonic() - last_poll < self.ws_idle_poll_s:
                        continue
                    self._poll(http, pending, log)
                    last_poll = time.monotonic()
                elif message is not None:
                    self._apply(message, pending)
                    # 'executing' with node null comes after the history is written; read it then.
                    self._poll(http, pending, log, only_signalled=True)
            else:
                self._poll(http, pending, log)
                if not any(item.ready for item in pending.values()):
                    time.sleep(min(self.poll_interval_s, wait))

    def _collect(self, http: requests.Session, item: _Pending, log: Any) -> GenerationResult:
        details = {"prompt_id": item.prompt_id}
        seconds = item.model_seconds if item.model_seconds is not None else 0.0
        if item.error:
            return GenerationResult(item.request, None, item.error, seconds, details)
        images = ((item.outputs or {}).get(comfy_workflow.SAVE) or {}).get("images") or []
        if not images:
            return GenerationResult(
                item.request, None, f"ComfyUI prompt {item.prompt_id} finished without an image from SaveImage", seconds, details
            )
        first = images[0]
        params = {"filename": first.get("filename", ""), "subfolder": first.get("subfolder", ""), "type": first.get("type", "output")}
        response = self._call(http, "GET", "/view", log, params=params)
        if not response.ok:
            return GenerationResult(
                item.request, None, f"GET {self._url('/view')} {params} answered HTTP {response.status_code}", seconds, details
            )
        try:
            with Image.open(io.BytesIO(response.content)) as image:
                image.load()
                rgb = image.convert("RGB")
        except Exception as exc:  # Pillow raises many types on bad bytes
            return GenerationResult(item.request, None, f"ComfyUI image {params} is not decodable: {exc}", seconds, details)
        details["comfyui_file"] = params
        return GenerationResult(item.request, rgb, None, seconds, details)

    def generate(self, requests_: Sequence[GenerationRequest], log: Any = None) -> Iterator[GenerationResult]:
        log = log or logger
        client_id = uuid.uuid4().hex
        waiting = deque(requests_)
        pending: dict[str, _Pending] = {}
        with requests.Session() as http:
            stream = _EventStream(self._ws_url(client_id), self.request_timeout_s, log) if self.use_websocket else None
            try:
                while waiting or pending:
                    while waiting and len(pending) < self.max_in_flight:
                        request = waiting.popleft()
                        try:
                            prompt_id = self.submit(http, request, client_id, log)
                        except ComfyUIValidationError as exc:
                            yield GenerationResult(request, None, str(exc))
                            continue
                        now = time.monotonic()
                        pending[prompt_id] = _Pending(request, prompt_id, now + self.image_timeout_s, now)
                    if pending:
                        for prompt_id in self._wait(http, stream, pending, log):
                            yield self._collect(http, pending.pop(prompt_id), log)
            finally:
                if stream is not None:
                    stream.close()
                self._cancel(http, list(pending))  # the consumer stopped early: free the GPU


# --- diffusers ---------------------------------------------------------------------------------

# ComfyUI sampler and scheduler names → diffusers scheduler class and settings.
DIFFUSERS_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_sde": ("DPMSolverSinglestepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {}),
}
DIFFUSERS_SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": {},
    "simple": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
}
DTYPES = ("float16", "bfloat16", "float32")


def diffusers_scheduler(sampler: str, schedule: str) -> tuple[str, dict[str, Any]]:
    if sampler not in DIFFUSERS_SAMPLERS:
        raise ValueError(f"sampler {sampler!r} has no diffusers equivalent here; use one of {', '.join(DIFFUSERS_SAMPLERS)}")
    if schedule not in DIFFUSERS_SCHEDULES:
        raise ValueError(f"scheduler {schedule!r} has no diffusers equivalent here; use one of {', '.join(DIFFUSERS_SCHEDULES)}")
    name, settings = DIFFUSERS_SAMPLERS[sampler]
    return name, {**settings, **DIFFUSERS_SCHEDULES[schedule]}


@functools.lru_cache(maxsize=2)
def load_sdxl_pipeline(model_path: str, device: str, dtype: str, variant: str | None, config_path: str | None):
    """The SDXL pipeline, once per process and settings; never fetched from a hub."""
    path = Path(model_path)
    how = (
        "put an SDXL diffusers folder (model_index.json, unet/, vae/, text_encoder*/, tokenizer*/) or a single "
        ".safetensors checkpoint in the model store and set DiffusersBackend.model_path"
    )
    if not path.exists():
        raise FileNotFoundError(f"SDXL model not found at {path}: {how}")
    import torch  # imported here: diffusers costs seconds, and most processes never need it
    from diffusers import StableDiffusionXLPipeline

    torch_dtype = getattr(torch, dtype)
    try:
        if path.is_dir():
            pipeline = StableDiffusionXLPipeline.from_pretrained(
                str(path), torch_dtype=torch_dtype, variant=variant, local_files_only=True
            )
        else:
            pipeline = StableDiffusionXLPipeline.from_single_file(
                str(path), torch_dtype=torch_dtype, config=config_path, local_files_only=True
            )
    except (OSError, ValueError) as exc:
        extra = (
            ""
            if path.is_dir() or config_path
            else "; a single-file checkpoint also needs DiffusersBackend.config_path (a local SDXL diffusers "
            "folder whose configs describe it), since nothing is downloaded"
        )
        raise FileNotFoundError(f"cannot load SDXL from {path} without downloading: {exc}{extra}") from exc
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


class DiffusersBackend(ImageBackend):
    """SDXL through diffusers on the step's own GPU, for nodes without a ComfyUI server.

    Images sharing LoRA and sampler settings run in batches of ``batch_size``, each with its
    own seeded generator, so an image is the same whichever batch it lands in.
    """

    model_path: str = Field(description="Local SDXL diffusers folder or single .safetensors file (model store).")
    config_path: str | None = Field(default=None, description="Local diffusers config folder for a single-file model.")
    device: str = Field(default="cuda", description="torch device, e.g. cuda, cuda:1, cpu.")
    dtype: str = Field(default="float16", description="float16, bfloat16 or float32.")
    variant: str | None = Field(default=None, description="Weights variant of a diffusers folder, e.g. fp16.")
    batch_size: int = Field(default=4, ge=1)

    def backend_name(self) -> str:
        return "diffusers"

    def backend_kind(self) -> str:
        return "diffusers"

    def model_name(self) -> str:
        return Path(self.model_path).name

    def pipeline(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"DiffusersBackend.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        return load_sdxl_pipeline(self.model_path, self.device, self.dtype, self.variant, self.config_path)

    def generate(self, requests_: Sequence[GenerationRequest], log: Any = None) -> Iterator[GenerationResult]:
        log = log or logger
        pipe = self.pipeline()
        import diffusers
        import torch

        base_scheduler_config = pipe.scheduler.config
        groups: dict[tuple, list[GenerationRequest]] = {}
        for request in requests_:
            p = request.params
            key = (request.lora_path, p.get("lora_strength"), p["steps"], p["cfg"], p["sampler"], p["scheduler"], request.width, request.height)
            groups.setdefault(key, []).append(request)

        for (lora_path, strength, steps, cfg, sampler, schedule, width, height), group in groups.items():
            try:
                class_name, settings = diffusers_scheduler(sampler, schedule)
                if lora_path is not None and not Path(lora_path).is_file():
                    raise FileNotFoundError(f"LoRA file {lora_path} not found (the queen's LoRA info names it)")
            except (ValueError, FileNotFoundError) as exc:
                for request in group:
                    yield GenerationResult(request, None, str(exc))
                continue
            pipe.scheduler = getattr(diffusers, class_name).from_config(base_scheduler_config, **settings)
            try:
                if lora_path is not None:
                    try:
                        pipe.load_lora_weights(lora_path, adapter_name="hydra_lora")
                        pipe.set_adapters(["hydra_lora"], adapter_weights=[float(strength if strength is not None else 1.0)])
                    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # a bad file fails its images only
                        for request in group:
                            yield GenerationResult(request, None, f"cannot load LoRA {lora_path}: {exc}")
                        continue
                for start in range(0, len(group), self.batch_size):
                    chunk = group[start : start + self.batch_size]
                    began = time.monotonic()
                    try:
                        with torch.inference_mode():
                            output = pipe(
                                prompt=[r.prompt for r in chunk],
                                negative_prompt=[r.negative for r in chunk],
                                num_inference_steps=int(steps),
                                guidance_scale=float(cfg),
                                width=int(width),
                                height=int(height),
                                generator=[torch.Generator(device=self.device).manual_seed(r.seed) for r in chunk],
                                output_type="pil",
                            )
                    except (RuntimeError, ValueError) as exc:  # e.g. CUDA out of memory: this chunk only
                        log.warning(f"diffusers batch of {len(chunk)} failed: {exc}")
                        for request in chunk:
                            yield GenerationResult(request, None, f"diffusers: {exc}")
                        continue
                    seconds = (time.monotonic() - began) / len(chunk)
                    for request, image in zip(chunk, output.images):
                        yield GenerationResult(request, image.convert("RGB"), None, seconds, {"batch": len(chunk)})
            finally:
                if lora_path is not None:
                    pipe.unload_lora_weights()


# --- the demo renderer -------------------------------------------------------------------------

DEGRADATIONS = ("blur", "noise", "faceless")


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def render_demo_image(source: Image.Image, width: int, height: int, rng: np.random.Generator, degradation: str | None) -> tuple[Image.Image, dict[str, Any]]:
    """A variation of one reference photo; with ``degradation`` one the quality gate should refuse."""
    src_w, src_h = source.size
    target_aspect = width / height
    if degradation == "faceless":
        # A bottom corner a third of the photo wide: portraits put the face at the top centre.
        side = "left" if rng.random() < 0.5 else "right"
        crop_w = src_w * 0.32
        crop_h = min(src_h * 0.32, crop_w / target_aspect)
        crop_w = crop_h * target_aspect
        x0 = 0.0 if side == "left" else src_w - crop_w
        box = (x0, src_h - crop_h, x0 + crop_w, float(src_h))
        transform: dict[str, Any] = {"crop": f"bottom-{side} corner"}
    else:
        scale = _uniform(rng, 0.78, 1.0)
        crop_w = min(src_w * scale, src_h * scale * target_aspect)
        crop_h = crop_w / target_aspect
        cx = src_w / 2 + _uniform(rng, -0.08, 0.08) * src_w
        cy = src_h / 2 + _uniform(rng, -0.06, 0.04) * src_h
        x0 = min(max(cx - crop_w / 2, 0.0), src_w - crop_w)
        y0 = min(max(cy - crop_h / 2, 0.0), src_h - crop_h)
        box = (x0, y0, x0 + crop_w, y0 + crop_h)
        transform = {"crop_scale": round(scale, 3)}
    image = source.resize((width, height), Image.Resampling.BICUBIC, box=box)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
        transform["flip"] = True
    color, brightness, contrast = _uniform(rng, 0.8, 1.25), _uniform(rng, 0.88, 1.12), _uniform(rng, 0.88, 1.12)
    image = ImageEnhance.Color(image).enhance(color)
    image = ImageEnhance.Brightness(image).enhance(brightness)
    image = ImageEnhance.Contrast(image).enhance(contrast)
    warmth = _uniform(rng, -0.06, 0.06)
    pixels = np.asarray(image, dtype=np.float32)
    pixels *= np.array([1 + warmth, 1.0, 1 - warmth], dtype=np.float32)
    transform.update(color=round(color, 3), brightness=round(brightness, 3), contrast=round(contrast, 3), warmth=round(warmth, 3))
    if degradation == "noise":
        sigma = _uniform(rng, 35.0, 55.0)
        pixels += rng.normal(0.0, sigma, pixels.shape).astype(np.float32)
        transform["noise_sigma"] = round(sigma, 1)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    if degradation == "blur":
        radius = _uniform(rng, 6.0, 10.0) * max(width, height) / 768
        image = image.filter(ImageFilter.GaussianBlur(radius))
        transform["blur_radius"] = round(radius, 2)
    return image, transform


class DemoRenderer(ImageBackend):
    """The embedded default. NOT a generative model: every image is derived from one of the
    queen's normalized references, and a deterministic share is degraded on purpose (blur,
    noise, a crop without the face) so the quality gate rejects something in the demo."""

    degraded_share: float = Field(default=0.25, ge=0.0, le=1.0, description="Share of images degraded on purpose.")

    generative: ClassVar[bool] = False

    def backend_name(self) -> str:
        return DEMO_RENDERER

    def backend_kind(self) -> str:
        return "demo"

    def model_name(self) -> str:
        return DEMO_MODEL

    def plan_for(self, request: GenerationRequest) -> tuple[np.random.Generator, str | None]:
        """The image's random stream and whether it is degraded: from its seed alone, so the
        same slot renders the same image whichever batch it is in."""
        rng = np.random.default_rng(request.seed)
        degraded = rng.random() < self.degraded_share
        kind = DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))]
        return rng, kind if degraded else None

    def generate(self, requests_: Sequence[GenerationRequest], log: Any = None) -> Iterator[GenerationResult]:
        log = log or logger
        sources: dict[str, Image.Image] = {}
        for request in requests_:
            if not request.references:
                yield GenerationResult(
                    request, None, f"{DEMO_RENDERER}: no normalized references for {request.queen}; materialize reference_images first"
                )
                continue
            began = time.monotonic()
            rng, degradation = self.plan_for(request)
            reference = request.references[int(rng.integers(len(request.references)))]
            try:
                if reference not in sources:
                    with Image.open(reference) as opened:
                        sources[reference] = opened.convert("RGB")
                image, transform = render_demo_image(sources[reference], request.width, request.height, rng, degradation)
            except (OSError, ValueError) as exc:
                yield GenerationResult(request, None, f"{DEMO_RENDERER}: cannot derive from {reference}: {exc}")
                continue
            details = {
                "renderer": DEMO_RENDERER,
                "generative": False,
                "source_reference": Path(reference).name,
                "degraded": degradation,
                "transform": transform,
            }
            yield GenerationResult(request, image, None, time.monotonic() - began, details)
