"""Before a night's batch reaches ComfyUI: fill every graph, upload the references, preflight.

A slot the queen cannot fill fails before anything reaches the server; references go up once
per content hash under that hash; one /object_info call checks every node class, checkpoint
and LoRA of the filled graphs, and a miss fails the batch with one message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra_assets.domain import workflows as wf
from hydra_assets.domain.night_plan import GenerationRequest
from resources.image.comfy_http import ComfyUIError, Transport, multipart

if TYPE_CHECKING:
    from resources.image.comfyui import ComfyUIBackend

LORA_HINT = (
    "a LoRA file must be in the storage's assets/loras/ (queen_lora writes it there), which ComfyUI sees as "
    "models/loras through extra_model_paths.yaml (deploy/README.md)"
)


class ComfyUIPreflightError(ComfyUIError):
    """The server lacks node classes, checkpoints or LoRAs the night's graphs need."""


def upload(backend: ComfyUIBackend, http: Transport, path: str, log: Any) -> str:
    """The reference in ComfyUI's input folder under its content hash; skipped when the
    server already has those bytes. ``overwrite`` is off, so a different file of that name
    is never replaced (ComfyUI then picks a new name, which is the one we use)."""
    data = Path(path).read_bytes()
    name = upload_name(data)
    have = backend._call(http, "GET", "/view", log, params={"filename": name, "type": "input"})
    if have.ok and hashlib.sha256(have.body).hexdigest() == hashlib.sha256(data).hexdigest():
        return name
    body, content_type = multipart({"type": "input", "overwrite": "false"}, "image", name, data, "image/png")
    answer = backend._call(http, "POST", "/upload/image", log, body=body, content_type=content_type)
    if not answer.ok:
        raise ComfyUIError(f"{http.url('/upload/image')} refused {path}: HTTP {answer.status} {answer.text[:200]}")
    try:
        info = answer.json()
        stored = f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ComfyUIError(f"{http.url('/upload/image')} answered garbage for {path}: {answer.text[:200]}") from exc
    log.info(f"uploaded reference {Path(path).name} to ComfyUI as {stored}")
    return str(stored)

def prepare(backend: ComfyUIBackend, http: Transport, requests_: Sequence[GenerationRequest], log: Any) -> dict[str, wf.Filled]:
    """Fill every graph (refusing unfillable templates before anything reaches the server),
    upload the references, and check the night's graphs with one /object_info call."""
    templates: dict[str | None, wf.Template] = {}
    for request in requests_:
        if request.workflow not in templates:
            templates[request.workflow] = backend.template(request.workflow)
    needed = reference_paths(requests_, templates)
    placeholders = {path: upload_name(path.encode()) for path in needed}
    for request in requests_:  # a dry fill: a slot the queen cannot fill fails before any upload
        backend.fill(templates[request.workflow], request, placeholders)
    uploads: dict[str, str] = {}
    by_hash: dict[str, str] = {}
    for path in needed:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest not in by_hash:
            by_hash[digest] = upload(backend, http, path, log)
        uploads[path] = by_hash[digest]
    filled = {r.image_id: backend.fill(templates[r.workflow], r, uploads) for r in requests_}
    answer = backend._call(http, "GET", "/object_info", log)
    try:
        object_info = answer.json()
    except ValueError as exc:
        raise ComfyUIError(f"{http.url('/object_info')} answered garbage: {answer.text[:200]}") from exc
    if not answer.ok or not isinstance(object_info, dict):
        raise ComfyUIError(f"{http.url('/object_info')} answered HTTP {answer.status}: {answer.text[:200]}")
    distinct = {f.sha256: (f.name, f.graph) for f in filled.values()}
    missing = wf.preflight(distinct.values(), object_info)
    if missing:
        raise ComfyUIPreflightError(wf.describe_missing(missing, http.base_url, object_info, LORA_HINT))
    return filled


def upload_name(data: bytes) -> str:
    """A reference's name in ComfyUI's input folder: its content hash."""
    return f"hydra-{hashlib.sha256(data).hexdigest()}.png"


def reference_paths(requests_: Sequence[GenerationRequest], templates: dict[str | None, wf.Template]) -> list[str]:
    """The references the requests' templates have slots for, each once."""
    seen: dict[str, None] = {}
    for request in requests_:
        template = templates[request.workflow]
        face = [request.face_reference] if request.face_reference and template.needs_face else []
        styles = list(request.style_references[: len(template.style_slots)])
        for path in face + styles:
            seen.setdefault(path, None)
    return list(seen)
