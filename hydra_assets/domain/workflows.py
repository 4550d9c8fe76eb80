"""The studio's ComfyUI workflow templates: API-format graphs with slots bound by node title.

A template is ComfyUI's "Export (API)" JSON (node id → {class_type, inputs, _meta}), kept as
``{workflows_dir}/{name}.json``; names follow the slug rules. Artists mark the nodes the
pipeline fills by setting their title (``_meta.title``) in ComfyUI's UI:

============================  ==============================================================
``hydra.checkpoint``          ``ckpt_name`` ← the backend's checkpoint
``hydra.lora``                ``lora_name`` ← the queen's current LoRA file, ``strength_model`` /
                              ``strength_clip`` ← her ``lora_strength``; without a LoRA the node
                              is bypassed (its k-th output rewired to its k-th linked input)
``hydra.positive``            ``text`` ← the positive prompt
``hydra.negative``            ``text`` ← the negative prompt
``hydra.sampler``             ``seed``/``noise_seed``, ``steps``, ``cfg``, ``sampler_name``,
                              ``scheduler`` ← the image's seed and sampling (those it has)
``hydra.seed``                ``seed`` or ``noise_seed`` ← the image's seed
``hydra.size``                ``width``, ``height`` (and ``batch_size`` if it has one)
``hydra.reference.face``      LoadImage ``image`` ← the queen's face reference, uploaded
``hydra.reference.style``     LoadImage ``image`` ← an image of her style set, uploaded
                              (``hydra.reference.style.2``, ``.3`` … take the next ones)
``hydra.output``              ``filename_prefix`` ← output/hydra/{queen}/{image id}
============================  ==============================================================

A template with an unknown ``hydra.*`` title, a slot whose node lacks the input it sets, a
slot the queen cannot fill (no face reference) or no ``hydra.output`` is refused before
anything is queued, with a message naming the file, the node and the slot.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra_assets.domain.roster import SLUG_PATTERN, is_valid_slug
from hydra_assets.domain.safe_documents import MAX_DOCUMENT_BYTES, DocumentError, load_json

Graph = dict[str, dict[str, Any]]

DEFAULT_WORKFLOW = "sdxl"
"""The SPEC's 8-node SDXL graph, shipped as workflows/sdxl.json."""
SLOT_PREFIX = "hydra."
FACE = "hydra.reference.face"
STYLE = "hydra.reference.style"
OUTPUT = "hydra.output"
SLOT_INPUTS: dict[str, tuple[str, ...]] = {
    "hydra.checkpoint": ("ckpt_name",),
    "hydra.lora": ("lora_name",),
    "hydra.positive": ("text",),
    "hydra.negative": ("text",),
    "hydra.sampler": ("steps", "cfg", "sampler_name", "scheduler"),
    "hydra.seed": (),
    "hydra.size": ("width", "height"),
    FACE: ("image",),
    STYLE: ("image",),
    OUTPUT: ("filename_prefix",),
}
"""Every slot and the inputs its node must have (seed slots need ``seed`` or ``noise_seed``)."""
SEED_INPUTS = ("seed", "noise_seed")
STYLE_RE = re.compile(r"^hydra\.reference\.style(?:\.(\d+))?$")


class WorkflowError(ValueError):
    """A template that cannot be used; the message names the file, node and slot."""


@dataclass(frozen=True)
class Template:
    name: str
    path: Path
    graph: Graph
    slots: dict[str, list[str]]
    """slot → node ids carrying it (style slots keep their number: ``hydra.reference.style.2``)."""

    @property
    def needs_face(self) -> bool:
        return FACE in self.slots

    @property
    def style_slots(self) -> list[str]:
        return sorted((s for s in self.slots if STYLE_RE.match(s)), key=lambda s: int(STYLE_RE.match(s).group(1) or 1))


@dataclass(frozen=True)
class Fill:
    """What one image puts into a template's slots."""

    checkpoint: str
    positive: str
    negative: str
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    width: int
    height: int
    filename_prefix: str
    batch_size: int = 1
    lora_name: str | None = None
    lora_strength: float = 1.0
    face_image: str | None = None
    style_images: Sequence[str] = ()


@dataclass
class Filled:
    name: str
    graph: Graph
    sha256: str
    checkpoints: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not is_valid_slug(name):
        raise WorkflowError(f"workflow name {name!r} must be a slug ({SLUG_PATTERN}, 1-100 chars)")
    return name


def title(node: Mapping[str, Any]) -> str | None:
    meta = node.get("_meta")
    return meta.get("title") if isinstance(meta, dict) else None


def parse_template(name: str, path: Path, document: Any) -> Template:
    """Check a template's shape and slots; raises WorkflowError naming file, node and slot."""
    if not isinstance(document, dict) or not document:
        raise WorkflowError(f"{path}: not a ComfyUI API-format graph (expected an object of node id → node; use 'Export (API)')")
    slots: dict[str, list[str]] = {}
    for node_id, node in document.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not isinstance(node.get("inputs"), dict):
            raise WorkflowError(f"{path}: node {node_id} has no class_type/inputs (is this the UI format? use 'Export (API)')")
        slot = title(node)
        if not (isinstance(slot, str) and slot.startswith(SLOT_PREFIX)):
            continue
        base = STYLE if STYLE_RE.match(slot) else slot
        if base not in SLOT_INPUTS:
            raise WorkflowError(f"{path}: node {node_id} ({node['class_type']}) has unknown slot title {slot!r}; slots: {', '.join(SLOT_INPUTS)}")
        missing = [i for i in SLOT_INPUTS[base] if i not in node["inputs"]]
        if base in ("hydra.sampler", "hydra.seed") and not any(i in node["inputs"] for i in SEED_INPUTS):
            missing.append("seed")
        if missing:
            raise WorkflowError(f"{path}: node {node_id} ({node['class_type']}) slot {slot!r} lacks input(s) {', '.join(missing)}")
        slots.setdefault(slot, []).append(str(node_id))
    if OUTPUT not in slots:
        raise WorkflowError(f"{path}: no node titled {OUTPUT!r} (a SaveImage): the workflow's images would not be collected")
    return Template(name, path, copy.deepcopy(document), slots)


def load_template(workflows_dir: Path, name: str) -> Template:
    check_name(name)
    path = Path(workflows_dir) / f"{name}.json"
    if not path.is_file():
        have = sorted(p.stem for p in Path(workflows_dir).glob("*.json")) if Path(workflows_dir).is_dir() else []
        raise WorkflowError(f"workflow {name!r}: {path} not found (workflows there: {have or 'none'})")
    try:
        document = load_json(path, max_bytes=MAX_DOCUMENT_BYTES)
    except (OSError, DocumentError) as exc:  # size, depth, encoding, JSON: the bounded reader's rules
        raise WorkflowError(f"{path}: unreadable workflow ({exc.rule if isinstance(exc, DocumentError) else exc})") from exc
    return parse_template(name, path, document)


def canonical_sha256(graph: Graph) -> str:
    return hashlib.sha256(json.dumps(graph, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _bypass(graph: Graph, node_id: str) -> None:
    """Drop a node and wire its k-th output's consumers to its k-th linked input."""
    linked = [value for value in graph[node_id]["inputs"].values() if _is_link(value)]
    del graph[node_id]
    for node in graph.values():
        for name, value in node["inputs"].items():
            if _is_link(value) and value[0] == node_id:
                if value[1] >= len(linked):
                    raise WorkflowError(f"cannot bypass node {node_id}: output {value[1]} has no matching linked input")
                node["inputs"][name] = list(linked[value[1]])


def fill(template: Template, values: Fill) -> Filled:
    """The template with every slot set for one image (the template itself is not changed)."""
    graph = copy.deepcopy(template.graph)
    where = template.path

    def nodes(slot: str) -> list[dict[str, Any]]:
        return [graph[i] for i in template.slots.get(slot, []) if i in graph]

    for node in nodes("hydra.checkpoint"):
        node["inputs"]["ckpt_name"] = values.checkpoint
    for node_id in template.slots.get("hydra.lora", []):
        if values.lora_name is None:
            _bypass(graph, node_id)
            continue
        inputs = graph[node_id]["inputs"]
        inputs["lora_name"] = values.lora_name
        for strength in ("strength_model", "strength_clip"):
            if strength in inputs:
                inputs[strength] = float(values.lora_strength)
    for node in nodes("hydra.positive"):
        node["inputs"]["text"] = values.positive
    for node in nodes("hydra.negative"):
        node["inputs"]["text"] = values.negative
    for node in nodes("hydra.sampler") + nodes("hydra.seed"):
        for seed in SEED_INPUTS:
            if seed in node["inputs"]:
                node["inputs"][seed] = int(values.seed)
    for node in nodes("hydra.sampler"):
        node["inputs"].update(steps=int(values.steps), cfg=float(values.cfg), sampler_name=values.sampler_name, scheduler=values.scheduler)
    for node in nodes("hydra.size"):
        node["inputs"].update(width=int(values.width), height=int(values.height))
        if "batch_size" in node["inputs"]:
            node["inputs"]["batch_size"] = int(values.batch_size)
    if template.needs_face:
        if not values.face_image:
            node_id = template.slots[FACE][0]
            raise WorkflowError(f"{where}: node {node_id} slot {FACE!r}: the queen has no face reference to fill it (no accepted portrait with a face)")
        for node in nodes(FACE):
            node["inputs"]["image"] = values.face_image
    for number, slot in enumerate(template.style_slots):
        if not values.style_images:
            raise WorkflowError(f"{where}: node {template.slots[slot][0]} slot {slot!r}: the queen has no style references to fill it")
        for node in nodes(slot):
            node["inputs"]["image"] = values.style_images[number % len(values.style_images)]
    for node in nodes(OUTPUT):
        node["inputs"]["filename_prefix"] = values.filename_prefix
    checkpoints = sorted({n["inputs"]["ckpt_name"] for n in graph.values() if isinstance(n["inputs"].get("ckpt_name"), str)})
    loras = sorted({n["inputs"]["lora_name"] for n in graph.values() if isinstance(n["inputs"].get("lora_name"), str)})
    return Filled(template.name, graph, canonical_sha256(graph), checkpoints, loras)


# --- preflight against /object_info -------------------------------------------------------------


def combo_options(spec: Any) -> list[str] | None:
    """The allowed values of a combo input in /object_info (old list form or the COMBO form)."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return [str(v) for v in spec[0]]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict) and isinstance(spec[1].get("options"), list):
        return [str(v) for v in spec[1]["options"]]
    return None


@dataclass
class Missing:
    node_classes: dict[str, list[str]] = field(default_factory=dict)
    """class → workflows that use it"""
    values: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)
    """(class, input) → {missing value: workflows}"""
    options: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.node_classes or self.values)


INPUT_KIND = {"ckpt_name": "checkpoint", "lora_name": "LoRA", "image": "input image"}


def preflight(graphs: Iterable[tuple[str, Graph]], object_info: Mapping[str, Any]) -> Missing:
    """Every node class and every combo value (checkpoints, LoRAs, samplers, images) the graphs
    use that the server does not have."""
    missing = Missing()
    for workflow, graph in graphs:
        for node in graph.values():
            cls = node["class_type"]
            info = object_info.get(cls)
            if not isinstance(info, dict):
                users = missing.node_classes.setdefault(cls, [])
                if workflow not in users:
                    users.append(workflow)
                continue
            declared: dict[str, Any] = {}
            for section in ("required", "optional"):
                declared.update((info.get("input") or {}).get(section) or {})
            for name, value in node["inputs"].items():
                options = combo_options(declared.get(name))
                if options is None or _is_link(value) or str(value) in options:
                    continue
                key = (cls, name)
                missing.options[key] = options
                users = missing.values.setdefault(key, {}).setdefault(str(value), [])
                if workflow not in users:
                    users.append(workflow)
    return missing


def _listing(options: Sequence[str], limit: int = 20) -> str:
    if not options:
        return "none"
    shown = ", ".join(options[:limit])
    return shown + (f" … ({len(options)} in all)" if len(options) > limit else "")


def describe_missing(missing: Missing, server: str, object_info: Mapping[str, Any], lora_hint: str) -> str:
    """One message: what is missing, what the server has, where a LoRA file must be."""
    parts = []
    if missing.node_classes:
        names = "; ".join(f"{cls} (used by {', '.join(w)})" for cls, w in sorted(missing.node_classes.items()))
        parts.append(f"node classes not installed: {names} (install the custom nodes that provide them; the server has {len(object_info)} node classes)")
    for (cls, name), values in sorted(missing.values.items()):
        kind = INPUT_KIND.get(name, f"{cls}.{name} value")
        listed = "; ".join(f"{v!r} (used by {', '.join(w)})" for v, w in values.items())
        line = f"{kind}s not on the server: {listed}; the server has: {_listing(missing.options[(cls, name)])}"
        if name == "lora_name":
            line += f"; {lora_hint}"
        elif name == "ckpt_name":
            line += "; put the checkpoint in ComfyUI's models/checkpoints (or a folder extra_model_paths.yaml maps there)"
        parts.append(line)
    return f"preflight against {server}/object_info failed: " + " | ".join(parts)


# --- which references fill the reference slots --------------------------------------------------

FACE_CATEGORIES = ("portraits",)
STYLE_SET_SIZE = 4


def face_reference(
    entries: Iterable[Mapping[str, Any]], identity: Mapping[str, Any], root: Path, preferred: str | None = None
) -> str | None:
    """The face slot's image: the roster's ``instant_id_reference`` when it names an accepted
    reference with a face, else the accepted portrait closest to her mean identity
    (reference_identity's ``similarity_to_mean``; off-identity and face-less ones never), ties
    by name; None when she has none."""
    skip = set(identity.get("no_face") or []) | set(identity.get("off_identity") or [])
    scores = identity.get("similarity_to_mean") or {}
    accepted = [e for e in entries if e.get("status") == "accepted" and e.get("normalized") and e.get("source") not in skip]
    if preferred:
        for entry in accepted:
            if preferred in (entry.get("source"), Path(str(entry.get("source"))).name, entry.get("normalized")):
                return str(Path(root) / entry["normalized"])
    candidates = [e for e in accepted if e.get("category") in FACE_CATEGORIES and e.get("source") in scores]
    if not candidates:
        return None
    best = max(candidates, key=lambda e: (float(scores[e["source"]]), _reverse(str(e["source"]))))
    return str(Path(root) / best["normalized"])


def _reverse(name: str) -> tuple[int, ...]:
    """Sort key that prefers the smaller name under max()."""
    return tuple(-ord(c) for c in name)


def style_set(references: Sequence[str], size: int = STYLE_SET_SIZE) -> list[str]:
    """The style slot's images for one asset type: up to ``size`` of the type's accepted
    references (the categories generation prefers for it), in name order; each image of the
    night starts the set at its own index."""
    return sorted(references)[:size]
