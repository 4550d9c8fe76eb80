"""One bounded reader for every YAML/JSON document the studio writes by hand or the pipeline keeps.

``yaml.safe_load`` is safe against code execution but not against size: a few hundred bytes of
nested aliases ("billion laughs") expand to billions of nodes, and ten thousand ``[`` overflow
PyYAML's recursive composer. Here a document is checked in stages, each bounded:

1. bytes: at most :data:`MAX_DOCUMENT_BYTES`, no NUL byte, valid UTF-8 (a BOM is allowed);
2. events (PyYAML's parser is iterative): nesting depth at most :data:`MAX_DEPTH`, at most
   :data:`MAX_ALIASES` aliases, one document per file;
3. node graph: its size *with aliases expanded* at most :data:`MAX_NODES` (counted once per
   node with memoisation, so the count itself is cheap), no recursive alias, no duplicate key;
4. construction by PyYAML's SafeLoader; any error it raises becomes a :class:`DocumentError`.

Every failure is a :class:`DocumentError` naming the file and the rule, never another type.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_DOCUMENT_BYTES = 1 << 20
"""1 MiB: a roster, dialogue or overrides file is a few KiB; manifests use :data:`MAX_MANIFEST_BYTES`."""
MAX_MANIFEST_BYTES = 64 << 20
"""Manifests the pipeline writes (one entry per image) may be larger than hand-written files."""
MAX_DEPTH = 64
"""Nesting of mappings/sequences; the deepest real document (roster) has 4 levels."""
MAX_NODES = 100_000
"""Scalars + collections after alias expansion."""
MAX_ALIASES = 1_000


class DocumentError(ValueError):
    """A document that cannot be read safely; names the file and the rule it broke."""

    def __init__(self, path: Path | str, rule: str):
        self.path = Path(path)
        self.rule = rule
        super().__init__(f"{self.path}: {rule}")


def read_document_bytes(path: Path | str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The file's bytes, refusing one over ``max_bytes`` without reading it all."""
    path = Path(path)
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:  # a FIFO must not block
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise DocumentError(path, "is not a regular file: only plain files are read")
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise DocumentError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise DocumentError(path, f"is larger than {max_bytes} bytes (limit for this document)")
    return data


def decode_text(data: bytes, path: Path | str) -> str:
    """UTF-8 text without NUL bytes (PostgreSQL cannot store them, YAML forbids them)."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise DocumentError(path, f"contains a NUL byte at offset {nul}: not a text document")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(path, f"is not UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from exc


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _check_events(text: str, path: Path | str) -> None:
    depth = aliases = documents = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise DocumentError(path, f"nests deeper than {MAX_DEPTH} levels at line {event.start_mark.line + 1}")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise DocumentError(path, f"uses more than {MAX_ALIASES} aliases (*name)")
        elif isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise DocumentError(path, f"holds more than one YAML document (second at line {event.start_mark.line + 1})")


def _check_graph(root: yaml.Node, path: Path | str) -> None:
    """Expanded size (memoised per node), recursion and duplicate keys, without Python recursion."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done:
            in_progress.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_NODES:
                raise DocumentError(path, f"expands to more than {MAX_NODES} values (aliases are counted expanded)")
            continue
        if key in in_progress:
            raise DocumentError(path, f"has a recursive alias at line {node.start_mark.line + 1}")
        in_progress.add(key)
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node, path)
        stack.append((node, True))
        for child in children:
            if id(child) in in_progress:
                raise DocumentError(path, f"has a recursive alias at line {child.start_mark.line + 1}")
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_duplicate_keys(node: yaml.MappingNode, path: Path | str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
            continue
        ident = (key.tag, key.value)
        if ident in seen:
            raise DocumentError(
                path, f"repeats the key {key.value!r} (lines {seen[ident]} and {key.start_mark.line + 1}): keys must be unique"
            )
        seen[ident] = key.start_mark.line + 1


def parse_yaml(text: str, path: Path | str) -> Any:
    """``text`` as a Python value under the limits above; None for an empty document."""
    if "\0" in text:
        raise DocumentError(path, "contains a NUL character: not a text document")
    try:
        _check_events(text, path)
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            _check_graph(root, path)
            return loader.construct_document(root)
        finally:
            loader.dispose()
    except DocumentError:
        raise
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(path, f"is not valid YAML{_where(exc)}: {problem}") from exc
    except (ValueError, TypeError, OverflowError, RecursionError, AttributeError, KeyError, IndexError) as exc:
        # SafeLoader's constructors raise these for values such as ``!!timestamp 2026-13-45``
        # (ValueError) or an empty ``!!timestamp`` (AttributeError), found by the property tests
        raise DocumentError(path, f"has a value YAML cannot construct: {type(exc).__name__}: {exc}") from exc


def load_yaml(path: Path | str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """Read and parse one YAML file under the limits; raises :class:`DocumentError`."""
    return parse_yaml(decode_text(read_document_bytes(path, max_bytes=max_bytes), path), path)


def _no_duplicates(path: Path | str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        document: dict[str, Any] = {}
        for key, value in pairs:
            if key in document:
                raise DocumentError(path, f"repeats the key {key!r}: keys must be unique")
            document[key] = value
        return document

    return hook


def parse_json(text: str, path: Path | str) -> Any:
    """``text`` as JSON without duplicate keys; nesting beyond Python's recursion limit is refused."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(path))
    except DocumentError:
        raise
    except json.JSONDecodeError as exc:
        raise DocumentError(path, f"is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:
        raise DocumentError(path, "nests too deeply to be read") from exc
    except ValueError as exc:
        raise DocumentError(path, f"is not valid JSON: {exc}") from exc


def load_json(path: Path | str, *, max_bytes: int = MAX_MANIFEST_BYTES) -> Any:
    """Read and parse one JSON file under the limits; raises :class:`DocumentError`."""
    return parse_json(decode_text(read_document_bytes(path, max_bytes=max_bytes), path), path)


FRONT_MATTER_FENCE = "---"


def parse_markdown(text: str, path: Path | str) -> tuple[dict[str, Any], str]:
    """(front matter, body) of a markdown document such as a chapter script.

    The front matter is the YAML between a first line ``---`` and the next line ``---``, read
    under the same limits as any YAML document, and must be a mapping; no fence means none.
    """
    if "\0" in text:
        raise DocumentError(path, "contains a NUL character: not a text document")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n") != FRONT_MATTER_FENCE:
        return {}, text
    for index in range(1, len(lines)):
        if lines[index].rstrip("\r\n") == FRONT_MATTER_FENCE:
            front = parse_yaml("".join(lines[1:index]), path)
            if front is None:
                front = {}
            if not isinstance(front, dict):
                raise DocumentError(path, f"front matter must be a mapping of fields, got {type(front).__name__}")
            return front, "".join(lines[index + 1 :])
    raise DocumentError(path, "front matter starts with '---' on line 1 but has no closing '---' line")


def load_markdown(path: Path | str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[dict[str, Any], str]:
    """Read one markdown file under the limits; raises :class:`DocumentError`."""
    return parse_markdown(decode_text(read_document_bytes(path, max_bytes=max_bytes), path), path)
