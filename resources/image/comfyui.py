"""The studio's ComfyUI over HTTP + WebSocket, running the studio's own workflow templates.

Per night's batch: every request's template is filled (a slot the queen cannot fill fails
here, before anything is queued); the queen's references are uploaded once per content hash;
one /object_info call checks every node class, checkpoint and LoRA of the filled graphs;
then one prompt per image slot, up to ``max_in_flight`` queued at once. Every image of every
output node is collected. A prompt the server no longer knows (restarted, queue dropped) is
resubmitted up to ``max_resubmits`` times instead of waiting out ``image_timeout_s``.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import Field

from hydra_assets.domain import workflows as wf
from hydra_assets.domain.night_plan import GenerationRequest
from resources.image.base import GenerationResult, ImageBackend, backoff_delay
from resources.image.comfy_preflight import reference_paths, prepare, upload_name
from resources.image.comfy_http import (
    TIMEOUT,
    Answer,
    ComfyUIError,
    ComfyUIStepDeadline,
    ComfyUITimeout,
    ComfyUIUnavailable,
    ComfyUIValidationError,
    EventStream,
    Transport,
    TransportError,
    describe_prompt_rejection,
)

logger = logging.getLogger(__name__)

@dataclass
class _Pending:
    request: GenerationRequest
    graph: wf.Filled
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
    resubmits: int = 0
    ws_outputs: dict[str, Any] = field(default_factory=dict)


class ComfyUIBackend(ImageBackend):
    """The studio's ComfyUI: one prompt per image slot (per-image seeds stay reproducible)."""

    base_url: str = Field(description="ComfyUI's HTTP root, e.g. http://comfyui:8188")
    checkpoint: str = Field(default="RealVisXL_V5.0.safetensors", description="ckpt_name for the hydra.checkpoint slot.")
    workflows_dir: str = Field(
        default="workflows",
        description="Folder of API-format workflow templates ({name}.json); on the cluster HYDRA_WORKFLOWS_DIR (settings.py).",
    )
    filename_prefix: str = Field(default="hydra", description="SaveImage prefix; images land in output/<prefix>/<queen>/.")
    max_in_flight: int = Field(default=4, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0, description="Overall deadline of one HTTP call, trickling included.")
    step_timeout_s: float = Field(default=8 * 3600.0, gt=0, description="Overall deadline of one generate() call.")
    image_timeout_s: float = Field(
        default=900.0, gt=0, description="Give up on the prompts in flight when none of them progresses this long."
    )
    poll_interval_s: float = Field(default=2.0, gt=0, description="/history polling when the websocket is down.")
    ws_idle_poll_s: float = Field(default=30.0, gt=0, description="Poll /history when the websocket is quiet this long.")
    use_websocket: bool = True
    max_retries: int = Field(default=3, ge=0, description="SPEC: at most 3 retries.")
    backoff_base_s: float = Field(default=10.0, ge=0, description="SPEC: min(10·2^attempt, 300) s.")
    backoff_cap_s: float = Field(default=300.0, ge=0)
    max_resubmits: int = Field(default=2, ge=0, description="Resubmissions of a prompt the server lost (restart).")

    def backend_name(self) -> str:
        return "comfyui"

    def backend_kind(self) -> str:
        return "comfyui"

    def model_name(self) -> str:
        return self.checkpoint

    def workflow_names(self) -> bool:
        return True

    def template(self, name: str | None) -> wf.Template:
        return wf.load_template(Path(self.workflows_dir), name or wf.DEFAULT_WORKFLOW)

    def model_for(self, workflow: str | None) -> str:
        """The hydra.checkpoint slot gets ours; a template may also load its own, or none."""
        template = self.template(workflow)
        names = {self.checkpoint} if "hydra.checkpoint" in template.slots else set()
        slotted = set(template.slots.get("hydra.checkpoint", []))
        names |= {
            n["inputs"]["ckpt_name"]
            for i, n in template.graph.items()
            if i not in slotted and isinstance(n["inputs"].get("ckpt_name"), str)
        }
        return ", ".join(sorted(names)) or "none (the workflow loads no checkpoint)"

    def fill(self, template: wf.Template, request: GenerationRequest, uploads: dict[str, str]) -> wf.Filled:
        p = request.params
        return wf.fill(
            template,
            wf.Fill(
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
                batch_size=int(p.get("batch_size") or 1),
                filename_prefix=f"{self.filename_prefix}/{request.queen}/{request.image_id}",
                lora_name=p.get("lora_name"),
                lora_strength=p.get("lora_strength") or 1.0,
                face_image=uploads.get(request.face_reference) if request.face_reference else None,
                style_images=[uploads[s] for s in request.style_references if s in uploads],
            ),
        )

    def workflow(self, request: GenerationRequest) -> wf.Graph:
        """The filled graph of one request (references named by their would-be upload names)."""
        template = self.template(request.workflow)
        names = {path: upload_name(Path(path).read_bytes()) for path in reference_paths([request], {request.workflow: template})}
        return self.fill(template, request, names).graph

    # -- HTTP ----------------------------------------------------------------------------------

    def _pause(self, http: Transport, attempt: int, what: str, why: str, log: Any) -> None:
        delay = min(backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s), max(http.remaining(), 0.0))
        log.warning(f"{what}: {why}; retry {attempt + 1}/{self.max_retries} in {delay:.2f}s")
        time.sleep(delay)

    def _call(self, http: Transport, method: str, path: str, log: Any, **kwargs: Any) -> Answer:
        """One request, retried on transport errors and 5xx; 4xx answers are returned as they are."""
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                response = http.request(method, path, **kwargs)
            except TransportError as exc:
                last = exc.reason
            else:
                if response.status < 500:
                    return response
                last = f"HTTP {response.status}: {response.text[:200]}"
            http.check_step(f"{method} {http.url(path)} ({last})")
            if attempt < self.max_retries:
                self._pause(http, attempt, f"{method} {http.url(path)}", last, log)
        raise ComfyUIUnavailable(f"{method} {http.url(path)} failed after {self.max_retries + 1} attempts: {last}")

    def _queued(self, http: Transport, log: Any) -> set[str]:
        body = self._call(http, "GET", "/queue", log).json()
        items = [*body.get("queue_running", []), *body.get("queue_pending", [])]
        return {item[1] for item in items if isinstance(item, list) and len(item) > 1}

    def _history(self, http: Transport, prompt_id: str, log: Any) -> dict[str, Any] | None:
        try:
            return (self._call(http, "GET", f"/history/{prompt_id}", log).json() or {}).get(prompt_id)
        except (ValueError, AttributeError):
            return None

    def _known(self, http: Transport, prompt_id: str, log: Any) -> bool:
        """Whether the server has this prompt (queue first: a prompt leaves the queue only
        once its history is written, so queue-then-history cannot miss one in between)."""
        try:
            return prompt_id in self._queued(http, log) or bool(self._history(http, prompt_id, log))
        except (ComfyUIUnavailable, ValueError, AttributeError):
            return False

    def submit(self, http: Transport, graph: wf.Graph, request: GenerationRequest, client_id: str, log: Any) -> str:
        """POST /prompt with our prompt id; a retry first asks whether the last attempt got in,
        so an image is never queued twice. Returns the id the server runs it under."""
        prompt_id = str(uuid.uuid4())
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id, "extra_data": {"hydra_image_id": request.image_id}}
        url = http.url("/prompt")
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt and self._known(http, prompt_id, log):
                return prompt_id
            try:
                response = http.request("POST", "/prompt", json_body=body)
            except TransportError as exc:
                last = exc.reason
            else:
                if response.status == 400:
                    try:
                        payload = response.json()
                    except ValueError:
                        payload = response.text
                    node_errors = payload.get("node_errors", {}) if isinstance(payload, dict) else {}
                    raise ComfyUIValidationError(describe_prompt_rejection(url, prompt_id, payload), node_errors)
                if response.status < 500:
                    if not response.ok:
                        raise ComfyUIError(f"{url} answered HTTP {response.status}: {response.text[:300]}")
                    try:
                        answered = response.json().get("prompt_id")
                    except (ValueError, AttributeError):
                        answered = None
                    return str(answered or prompt_id)
                last = f"HTTP {response.status}: {response.text[:200]}"
            http.check_step(f"POST {url} ({last})")
            if attempt < self.max_retries:
                self._pause(http, attempt, f"POST {url} ({request.image_id})", last, log)
        raise ComfyUIUnavailable(f"POST {url} for {request.image_id} failed after {self.max_retries + 1} attempts: {last}")

    def _cancel(self, http: Transport, prompt_ids: Sequence[str]) -> None:
        """Best effort: take abandoned prompts off the queue, then interrupt the one running, if ours."""
        if not prompt_ids:
            return
        http = Transport(self.base_url, min(self.request_timeout_s, 5.0), time.monotonic() + 15.0)
        try:
            http.request("POST", "/queue", json_body={"delete": list(prompt_ids)})
            queue = http.request("GET", "/queue").json()
            for item in queue.get("queue_running", []):
                if len(item) > 1 and item[1] in prompt_ids:
                    http.request("POST", "/interrupt", json_body={"prompt_id": item[1]})
        except (ComfyUIError, ValueError, AttributeError):
            pass
        finally:
            http.close()

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
        elif kind == "executed" and data.get("node") is not None:
            item.ws_outputs[str(data["node"])] = data.get("output") or {}
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
        if item.succeeded and any((o or {}).get("images") for o in item.ws_outputs.values()):
            item.outputs, item.ready = dict(item.ws_outputs), True  # else /history has them

    def _touch(self, pending: dict[str, _Pending], now: float) -> None:
        """Our prompts run in order behind one another, so any sign of life restarts every clock."""
        for item in pending.values():
            item.deadline = now + self.image_timeout_s

    def _poll(self, http: Transport, pending: dict[str, _Pending], log: Any, only_signalled: bool = False) -> list[str]:
        """Read finished prompts from /history; returns the ids the server no longer knows."""
        todo = [i for i in pending.values() if not i.ready and not (only_signalled and not (i.finished_signal or i.succeeded))]
        if not todo:
            return []
        queued = self._queued(http, log) if not only_signalled else set()
        lost = []
        for item in todo:
            entry = self._history(http, item.prompt_id, log)
            if not entry:
                if not only_signalled and item.prompt_id not in queued:
                    lost.append(item.prompt_id)
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
        return lost

    def _resubmit(self, http: Transport, pending: dict[str, _Pending], lost: list[str], client_id: str, log: Any) -> None:
        for prompt_id in lost:
            item = pending.pop(prompt_id)
            if item.resubmits >= self.max_resubmits:
                item.error = (
                    f"ComfyUI prompt {prompt_id} for {item.request.image_id} was lost by {http.base_url} "
                    f"{item.resubmits + 1} times (neither queued nor in its history); gave up"
                )
                item.ready = True
                pending[prompt_id] = item
                continue
            log.warning(f"ComfyUI {http.base_url} no longer knows prompt {prompt_id} ({item.request.image_id}); resubmitting")
            item.prompt_id = self.submit(http, item.graph.graph, item.request, client_id, log)
            item.resubmits += 1
            item.started, item.finished_signal, item.succeeded, item.progress, item.ws_outputs = None, False, False, None, {}
            item.deadline = time.monotonic() + self.image_timeout_s
            pending[item.prompt_id] = item

    def _wait(self, http: Transport, stream: EventStream | None, pending: dict[str, _Pending], client_id: str, log: Any) -> list[str]:
        """Block until at least one pending prompt has its outputs, its error or its deadline."""
        last_poll = time.monotonic()
        while True:
            http.check_step("waiting for ComfyUI prompts")
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
            wait = max(0.01, min(min(item.deadline for item in pending.values()) - now, http.remaining()))
            if stream is not None and stream.alive:
                message = stream.next(min(wait, self.ws_idle_poll_s))
                if message is TIMEOUT:
                    if stream.alive and time.monotonic() - last_poll < self.ws_idle_poll_s:
                        continue
                    self._resubmit(http, pending, self._poll(http, pending, log), client_id, log)
                    last_poll = time.monotonic()
                elif message is not None:
                    self._apply(message, pending)
                    # 'executing' with node null comes after the history is written; read it then.
                    self._poll(http, pending, log, only_signalled=True)
            else:
                self._resubmit(http, pending, self._poll(http, pending, log), client_id, log)
                if not any(item.ready for item in pending.values()):
                    time.sleep(min(self.poll_interval_s, wait))

    def _collect(self, http: Transport, item: _Pending, log: Any) -> list[GenerationResult]:
        """Every image of every output node, in node then image order; each records what made it."""
        details: dict[str, Any] = {
            "prompt_id": item.prompt_id,
            "workflow": {"name": item.graph.name, "sha256": item.graph.sha256},
            "model": ", ".join(item.graph.checkpoints) or None,
            "loras": item.graph.loras,
        }
        if item.resubmits:
            details["resubmitted"] = item.resubmits
        seconds = item.model_seconds if item.model_seconds is not None else 0.0
        if item.error:
            return [GenerationResult(item.request, None, item.error, seconds, details)]
        images = [
            (str(node_id), image)
            for node_id, output in sorted((item.outputs or {}).items(), key=lambda kv: _node_order(kv[0]))
            for image in ((output or {}).get("images") or [])
            if isinstance(image, dict) and image.get("type", "output") == "output"
        ]
        if not images:
            return [GenerationResult(item.request, None, f"ComfyUI prompt {item.prompt_id} finished without an output image", seconds, details)]
        results = []
        for index, (node_id, image) in enumerate(images):
            params = {"filename": image.get("filename", ""), "subfolder": image.get("subfolder", ""), "type": "output"}
            mine = {**details, "output_node": node_id, "comfyui_file": params}
            response = self._call(http, "GET", "/view", log, params=params)
            if not response.ok:
                error = f"GET {http.url('/view')} {params} answered HTTP {response.status}"
                results.append(GenerationResult(item.request, None, error, seconds, mine, index))
                continue
            try:
                with Image.open(io.BytesIO(response.body)) as opened:
                    opened.load()
                    rgb = opened.convert("RGB")
            except Exception as exc:  # Pillow raises many types on bad bytes
                results.append(GenerationResult(item.request, None, f"ComfyUI image {params} is not decodable: {exc}", seconds, mine, index))
                continue
            results.append(GenerationResult(item.request, rgb, None, seconds / len(images), mine, index))
        return results

    def generate(self, requests_: Sequence[GenerationRequest], log: Any = None) -> Iterator[GenerationResult]:
        log = log or logger
        client_id = uuid.uuid4().hex
        http = Transport(self.base_url, self.request_timeout_s, time.monotonic() + self.step_timeout_s)
        pending: dict[str, _Pending] = {}
        stream = None
        dead_since = 0.0
        try:
            filled = prepare(self, http, requests_, log) if requests_ else {}
            waiting = deque(requests_)
            stream = EventStream(http, client_id, self.request_timeout_s, log) if self.use_websocket and waiting else None
            while waiting or pending:
                while waiting and len(pending) < self.max_in_flight:
                    request = waiting.popleft()
                    graph = filled[request.image_id]
                    try:
                        prompt_id = self.submit(http, graph.graph, request, client_id, log)
                    except ComfyUIValidationError as exc:
                        yield GenerationResult(request, None, str(exc), 0.0, {"workflow": {"name": graph.name, "sha256": graph.sha256}})
                        continue
                    now = time.monotonic()
                    pending[prompt_id] = _Pending(request, graph, prompt_id, now + self.image_timeout_s, now)
                if stream is not None and not stream.alive:
                    dead_since = dead_since or time.monotonic()
                if pending and stream is not None and not stream.alive and time.monotonic() - dead_since >= self.ws_idle_poll_s:
                    # polled for ws_idle_poll_s: follow the websocket again, and read what finished meanwhile
                    stream = EventStream(http, client_id, self.request_timeout_s, log)
                    dead_since = 0.0 if stream.alive else time.monotonic()
                    if stream.alive:
                        log.info(f"ComfyUI websocket {stream.url} reconnected")
                        self._resubmit(http, pending, self._poll(http, pending, log), client_id, log)
                if pending:
                    for prompt_id in self._wait(http, stream, pending, client_id, log):
                        yield from self._collect(http, pending.pop(prompt_id), log)
        except ComfyUIStepDeadline as exc:
            raise ComfyUITimeout(f"{self.base_url}: {exc} ({self.step_timeout_s:g}s)") from exc
        finally:
            if stream is not None:
                stream.close()
            self._cancel(http, list(pending))  # the consumer stopped early: free the GPU
            http.close()


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 30, node_id)
