"""A local server that speaks ComfyUI's HTTP + WebSocket protocol, without weights.

It validates graphs the way ComfyUI's execution.validate_prompt does (class types, required
inputs, links and their return types, min/max, combo lists) and answers 400 with the same
``error``/``node_errors`` shape; it runs prompts one at a time, sending the real message
sequence on /ws (status, execution_start, execution_cached, executing, progress, binary
previews, executed, execution_success, then ``executing`` with node null after the history
is written, as ComfyUI's prompt worker does); /history, /queue, /view, /interrupt and every
route under /api behave like ComfyUI's. "Executing" renders a PNG deterministically from the
KSampler seed and the latent size.

Knobs for tests: ``fail_post_times`` (answer the first N POST /prompt with 500),
``drop_ws_on`` (close the client's socket when a message of that type is due),
``never_finish`` (hang after the first sampler step until interrupted), ``error_on_node``
(raise in that node), ``slow_post_times`` / ``post_delay_s`` (queue the prompt, then answer
late, so a client timeout cannot tell whether it got in), ``checkpoints`` / ``loras`` (what
is "installed"), ``lose_prompts`` (accept the first N prompts, then forget them as a restart
does). /object_info and /upload/image answer in the real server's shapes; cached re-runs,
``progress_state`` and restarts are tested against the real server (tests/test_comfy_real.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from PIL import Image, PngImagePlugin

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "ddim", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def node_definitions(checkpoints: list[str], loras: list[str]) -> dict[str, dict[str, Any]]:
    """INPUT_TYPES()['required'] and RETURN_TYPES of the nodes the SPEC graph uses, as ComfyUI declares them."""
    return {
        "CheckpointLoaderSimple": {"required": {"ckpt_name": (checkpoints,)}, "return": ("MODEL", "CLIP", "VAE")},
        "LoraLoader": {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "lora_name": (loras,),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}),
                "strength_clip": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}),
            },
            "return": ("MODEL", "CLIP"),
        },
        "CLIPTextEncode": {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}, "return": ("CONDITIONING",)},
        "EmptyLatentImage": {
            "required": {
                "width": ("INT", {"default": 512, "min": 16, "max": 16384}),
                "height": ("INT", {"default": 512, "min": 16, "max": 16384}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            },
            "return": ("LATENT",),
        },
        "KSampler": {
            "required": {
                "model": ("MODEL",),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}),
                "sampler_name": (SAMPLERS,),
                "scheduler": (SCHEDULERS,),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
            },
            "return": ("LATENT",),
        },
        "VAEDecode": {"required": {"samples": ("LATENT",), "vae": ("VAE",)}, "return": ("IMAGE",)},
        "SaveImage": {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}, "return": (), "output_node": True},
    }


def _error(type_: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra}


def validate_prompt(prompt: dict[str, Any], defs: dict[str, dict[str, Any]]) -> tuple[bool, dict | None, list[str], dict]:
    """(valid, error, good outputs, node_errors) exactly as ComfyUI's execution.validate_prompt returns them."""
    outputs = set()
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return False, _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.", f"Node ID '#{node_id}'"), [], {}
        if node["class_type"] not in defs:  # as ComfyUI v0.3.64 answers
            return False, _error(
                "invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.", f"Node ID '#{node_id}'"
            ), [], {}
        if defs[node["class_type"]].get("output_node"):
            outputs.add(node_id)
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

    validated: dict[str, tuple[bool, list, str]] = {}

    def validate_inputs(unique_id: str) -> tuple[bool, list, str]:
        if unique_id in validated:
            return validated[unique_id]
        node = prompt[unique_id]
        inputs = node.get("inputs", {})
        required = defs[node["class_type"]]["required"]
        errors, valid = [], True
        for name, info in required.items():
            if name not in inputs:
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
                continue
            value, type_input = inputs[name], info[0]
            if isinstance(value, list):
                if len(value) != 2:
                    errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", name, input_name=name, input_config=info, received_value=value))
                    continue
                source_id, slot = str(value[0]), value[1]
                if source_id not in prompt:
                    validated[source_id] = (False, [], source_id)
                    errors.append(_error("exception_during_inner_validation", "Exception when validating inner node", f"'{source_id}'", input_name=name, input_config=info, exception_message=f"'{source_id}'", exception_type="KeyError", linked_node=value))
                    continue
                returns = defs[prompt[source_id]["class_type"]]["return"]
                received = returns[slot] if isinstance(slot, int) and 0 <= slot < len(returns) else None
                if received != type_input:
                    errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes", f"{name}, received_type({received}) mismatch input_type({type_input})", input_name=name, input_config=info, received_type=received, linked_node=value))
                    continue
                if not validate_inputs(source_id)[0]:
                    valid = False
                continue
            try:
                if type_input == "INT":
                    value = int(value)
                elif type_input == "FLOAT":
                    value = float(value)
                elif type_input == "STRING":
                    value = str(value)
            except (TypeError, ValueError) as exc:
                errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {type_input} value", f"{name}, {value}, {exc}", input_name=name, input_config=info, received_value=value, exception_message=str(exc)))
                continue
            limits = info[1] if len(info) > 1 else {}
            if "min" in limits and value < limits["min"]:
                errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {limits['min']}", name, input_name=name, input_config=info, received_value=value))
                continue
            if "max" in limits and value > limits["max"]:
                errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {limits['max']}", name, input_name=name, input_config=info, received_value=value))
                continue
            if isinstance(type_input, list) and value not in type_input:
                errors.append(_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {type_input}", input_name=name, input_config=info, received_value=value))
        result = (not errors and valid, errors, unique_id)
        validated[unique_id] = result
        return result

    good, failures, node_errors = [], [], {}
    for output in sorted(outputs):
        ok, reasons, _ = validate_inputs(output)
        if ok:
            good.append(output)
            continue
        failures.append((output, reasons))
        for node_id, (node_ok, node_reasons, _) in validated.items():
            if not node_ok and node_reasons:
                entry = node_errors.setdefault(node_id, {"errors": node_reasons, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]})
                entry["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failures for e in reasons)
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), [], node_errors
    return True, None, good, node_errors


def render_png(seed: int, width: int, height: int, prompt: dict[str, Any]) -> bytes:
    """A smooth colour field from the seed: deterministic, and different for every seed."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), mode="RGB")
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(prompt))  # SaveImage embeds the graph the same way
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def _topological(prompt: dict[str, Any]) -> list[str]:
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in order:
            return
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list) and len(value) == 2:
                visit(str(value[0]))
        order.append(node_id)

    for node_id in sorted(prompt, key=lambda k: int(k) if k.isdigit() else k):
        visit(node_id)
    return order


@dataclass
class FakeComfyUI:
    output_dir: Path
    checkpoints: list[str] = field(default_factory=lambda: ["RealVisXL_V5.0.safetensors"])
    loras: list[str] = field(default_factory=list)
    fail_post_times: int = 0
    drop_ws_on: str | None = None
    never_finish: bool = False
    error_on_node: str | None = None
    slow_post_times: int = 0
    post_delay_s: float = 0.0
    step_delay_s: float = 0.001
    lose_prompts: int = 0

    # what the tests look at
    post_attempts: int = 0
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)
    history_gets: int = 0
    view_gets: int = 0
    deleted: list[str] = field(default_factory=list)
    interrupts: int = 0
    ws_dropped: int = 0
    uploads: int = 0
    object_info_gets: int = 0

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.defs = node_definitions(self.checkpoints, self.loras)
        self.input_dir = self.output_dir.with_name(self.output_dir.name + "-input")
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.pending: list[list[Any]] = []
        self.running: list[list[Any]] = []
        self.history: dict[str, dict[str, Any]] = {}
        self.number = 0
        self.port = 0
        self._counter = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeComfyUI:
        self._thread = threading.Thread(target=self._serve, name="fake-comfyui", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fake ComfyUI did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeComfyUI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._main())
        loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        self._work = asyncio.Event()
        self._interrupt = asyncio.Event()
        app = web.Application()
        routes = [
            web.post("/prompt", self.post_prompt),
            web.get("/prompt", self.get_prompt),
            web.get("/ws", self.websocket),
            web.get("/history/{prompt_id}", self.get_history),
            web.get("/queue", self.get_queue),
            web.post("/queue", self.post_queue),
            web.post("/interrupt", self.post_interrupt),
            web.get("/view", self.view),
            web.get("/object_info", self.object_info),
            web.post("/upload/image", self.upload_image),
        ]
        app.add_routes([web.route(r.method, "/api" + r.path, r.handler) for r in routes])
        app.add_routes(routes)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        worker = asyncio.create_task(self._worker())
        self._started.set()
        await self._stop_event.wait()
        worker.cancel()
        for ws in list(self.sockets.values()):
            await ws.close()
        await runner.cleanup()

    # -- routes --------------------------------------------------------------------------------

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.pending) + len(self.running)}}

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        self.post_attempts += 1
        if self.post_attempts <= self.fail_post_times:
            return web.Response(status=500, text="500 Internal Server Error")
        body = await request.json()
        if "prompt" not in body:
            return web.json_response({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        valid, error, outputs, node_errors = validate_prompt(prompt, self.defs)
        if not valid:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        number = self.number
        self.number += 1
        self.accepted[prompt_id] = prompt
        if self.lose_prompts > 0:  # accepted, then gone (as a restart loses the in-memory queue)
            self.lose_prompts -= 1
            return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})
        self.pending.append([number, prompt_id, prompt, extra, outputs])
        self._work.set()
        await self._broadcast_status()
        if len(self.accepted) <= self.slow_post_times:
            await asyncio.sleep(self.post_delay_s)
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        try:
            await ws.send_json({"type": "status", "data": {"status": self.queue_info(), "sid": sid}})
            async for message in ws:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            if self.sockets.get(sid) is ws:
                self.sockets.pop(sid, None)
        return ws

    async def get_history(self, request: web.Request) -> web.Response:
        self.history_gets += 1
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response({"queue_running": self.running, "queue_pending": self.pending})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.pending.clear()
        for prompt_id in body.get("delete", []):
            before = len(self.pending)
            self.pending[:] = [item for item in self.pending if item[1] != prompt_id]
            if len(self.pending) != before:
                self.deleted.append(prompt_id)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        self.interrupts += 1
        self._interrupt.set()
        return web.Response(status=200)

    async def view(self, request: web.Request) -> web.StreamResponse:
        self.view_gets += 1
        filename = request.query.get("filename", "")
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        kind = request.query.get("type", "output")
        if kind not in ("output", "input"):
            return web.Response(status=400)
        root = self.output_dir if kind == "output" else self.input_dir
        folder = root
        if "subfolder" in request.query:
            folder = root / request.query["subfolder"]
            if os.path.commonpath((os.path.abspath(folder), str(root))) != str(root):
                return web.Response(status=403)
        path = folder / os.path.basename(filename)
        if not path.is_file():
            return web.Response(status=404)
        return web.FileResponse(path, headers={"Content-Disposition": f'filename="{path.name}"'})

    async def object_info(self, request: web.Request) -> web.Response:
        """The node catalogue in /object_info's shape (combo lists first in their spec)."""
        self.object_info_gets += 1
        body = {}
        for cls, spec in self.defs.items():
            required = {name: [info[0], *(info[1:] or [{}])] for name, info in spec["required"].items()}
            body[cls] = {"input": {"required": required}, "output": list(spec["return"]), "output_node": bool(spec.get("output_node")), "name": cls}
        return web.json_response(body)

    async def upload_image(self, request: web.Request) -> web.Response:
        """As ComfyUI's /upload/image: without overwrite, the same bytes under the same name are
        a duplicate and different bytes get 'name (1).png'."""
        self.uploads += 1
        form = await request.post()
        upload = form.get("image")
        if upload is None or not hasattr(upload, "file"):
            return web.Response(status=400)
        data = upload.file.read()
        name = os.path.basename(upload.filename)
        stem, ext = os.path.splitext(name)
        path, n = self.input_dir / name, 1
        overwrite = form.get("overwrite") in ("true", "1")
        while path.exists() and not overwrite and path.read_bytes() != data:
            path, n = self.input_dir / f"{stem} ({n}){ext}", n + 1
        path.write_bytes(data)
        return web.json_response({"name": path.name, "subfolder": "", "type": "input"})

    # -- execution -----------------------------------------------------------------------------

    async def _send(self, client_id: str | None, kind: str, data: Any) -> None:
        ws = self.sockets.get(client_id or "")
        if ws is None or ws.closed:
            return
        if self.drop_ws_on == kind:
            self.ws_dropped += 1
            self.sockets.pop(client_id, None)
            await ws.close()
            return
        if isinstance(data, bytes):
            await ws.send_bytes(data)
        else:
            await ws.send_json({"type": kind, "data": data})

    async def _broadcast_status(self) -> None:
        for sid in list(self.sockets):
            await self._send(sid, "status", {"status": self.queue_info()})

    async def _worker(self) -> None:
        while True:
            if not self.pending:
                self._work.clear()
                await self._work.wait()
                continue
            item = self.pending.pop(0)
            self.running.append(item)
            try:
                await self._execute(item)
            finally:
                self.running.remove(item)
            await self._send(item[3].get("client_id"), "executing", {"node": None, "prompt_id": item[1]})
            await self._broadcast_status()

    async def _execute(self, item: list[Any]) -> None:
        number, prompt_id, prompt, extra, outputs = item
        client = extra.get("client_id")
        messages: list[list[Any]] = []

        async def message(kind: str, data: dict[str, Any]) -> None:
            messages.append([kind, data])
            await self._send(client, kind, data)

        def stamp() -> int:
            return int(time.time() * 1000)

        def done(status: str, node_outputs: dict[str, Any]) -> None:
            self.history[prompt_id] = {
                "prompt": item,
                "outputs": node_outputs,
                "status": {"status_str": status, "completed": status == "success", "messages": messages},
                "meta": {node: {"node_id": node, "display_node": node} for node in node_outputs},
            }

        self._interrupt.clear()
        await message("execution_start", {"prompt_id": prompt_id, "timestamp": stamp()})
        await message("execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": stamp()})
        node_outputs: dict[str, Any] = {}
        sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
        latent = next(n for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
        for node_id in _topological(prompt):
            node = prompt[node_id]
            await self._send(client, "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
            if node_id == self.error_on_node:
                await message("execution_error", {
                    "prompt_id": prompt_id, "node_id": node_id, "node_type": node["class_type"], "executed": [],
                    "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB", "exception_type": "torch.OutOfMemoryError",
                    "traceback": ["Traceback (most recent call last):\n"], "current_inputs": {}, "current_outputs": [], "timestamp": stamp(),
                })
                done("error", node_outputs)
                return
            if node["class_type"] == "KSampler":
                steps = int(node["inputs"]["steps"])
                for step in range(1, steps + 1):
                    await self._send(client, "progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": node_id})
                    await self._send(client, "preview", struct.pack(">I", 1) + b"\xff\xd8preview")
                    if self.never_finish:
                        await self._interrupt.wait()
                        await message("execution_interrupted", {"prompt_id": prompt_id, "node_id": node_id, "node_type": "KSampler", "executed": [], "timestamp": stamp()})
                        done("error", node_outputs)
                        return
                    await asyncio.sleep(self.step_delay_s)
            if node["class_type"] == "SaveImage":
                prefix = node["inputs"]["filename_prefix"]
                subfolder, base = os.path.split(prefix)
                images = []
                for _ in range(int(latent["inputs"]["batch_size"])):
                    self._counter += 1
                    name = f"{base}_{self._counter:05}_.png"
                    path = self.output_dir / subfolder / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(render_png(int(sampler["inputs"]["seed"]), int(latent["inputs"]["width"]), int(latent["inputs"]["height"]), prompt))
                    images.append({"filename": name, "subfolder": subfolder, "type": "output"})
                node_outputs[node_id] = {"images": images}
                await self._send(client, "executed", {"node": node_id, "display_node": node_id, "output": {"images": images}, "prompt_id": prompt_id})
        await message("execution_success", {"prompt_id": prompt_id, "timestamp": stamp()})
        done("success", node_outputs)
