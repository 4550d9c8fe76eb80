"""Family 5 (issue 13): truncated, garbage, wrongly typed or hand-edited intermediate files give a
message naming the file and the asset that rebuilds it; the generated manifest is rebuilt from the
images' PNG chunks. Never a KeyError, AttributeError, zip, pickle or Arrow message."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hydra_assets.domain import generation as gen
from hydra_assets.domain.damaged_files import (
    ENTRY_FIELD_TYPES,
    DamagedFileError,
    generated_manifest_problem,
    identity_document,
    read_identity_vector,
    read_reference_manifest,
)
from hydra_assets.domain.images import process_reference_folder
from hydra_assets.domain.overrides import OverrideError, load_overrides
from hydra_assets.domain.score_table import SCORE_FRAME_COLUMNS, manifest_ids, manifest_rows
from hydra_assets.domain.storage import StorageLayout
from hydra_assets.quality.inputs import read_generated_manifest, read_scores
from hydra_assets.quality.scoring import load_identity
from resources.image_generation import DemoRenderer
from tests.test_generation import (  # noqa: F401 - fixtures
    DEMO_TOTAL,
    NIGHT,
    NOVA,
    SLUG,
    _folder,
    _manifest,
    _materialize,
    _metadata,
    demo_root,
    demo_storage_template,
    instance,
)
from tests.test_lora_training import lora_env  # noqa: F401 - fixture
from tests.test_reference_images import encode, photo


PLAN = gen.plan_night(
    queen=NOVA, night=NIGHT, counts={"portrait": 2, "pose": 1}, sampling=gen.Sampling(width=64, height=64),
    model="m", backend="demo", generative=False, lora=None, reference_set_hash="r" * 64,
    references={"portrait": ["a.png"], "pose": ["a.png"]},
)


def _json_damage(good: dict) -> dict[str, bytes]:
    text = json.dumps(good).encode()
    return {
        "truncated": text[: len(text) // 2],
        "empty": b"",
        "garbage": bytes(range(256)),
        "not-an-object": b"[1, 2, 3]",
        "duplicate-key": b'{"entries": [], "entries": []}',
    }


@pytest.fixture
def reference_manifest(tmp_path) -> tuple[Path, dict]:
    source = tmp_path / "reference_images" / SLUG / "portraits"
    source.mkdir(parents=True)
    (source / "a.jpg").write_bytes(encode(photo(1), "JPEG"))
    process_reference_folder(source.parent, tmp_path / "normalized")
    path = tmp_path / "normalized" / "manifest.json"
    return path, json.loads(path.read_text())


def _edited_references(good: dict) -> dict[str, dict]:
    accepted = next(e for e in good["entries"] if e["status"] == "accepted")
    return {
        "no-entries": {k: v for k, v in good.items() if k != "entries"},
        "entries-not-list": {**good, "entries": {"a": 1}},
        "entry-not-object": {**good, "entries": [1]},
        "status-typo": {**good, "entries": [{**accepted, "status": "acepted"}]},
        "normalized-missing": {**good, "entries": [{k: v for k, v in accepted.items() if k != "normalized"}]},
        "normalized-escapes": {**good, "entries": [{**accepted, "normalized": "../../etc/passwd"}]},
        "hash-not-text": {**good, "reference_set_hash": 42},
    }


def test_reference_manifest_damage_names_the_file_and_reference_images(reference_manifest):
    path, good = reference_manifest
    assert read_reference_manifest(path, SLUG) == good
    cases = {**_json_damage(good), **{k: json.dumps(v).encode() for k, v in _edited_references(good).items()}}
    for case, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(DamagedFileError) as caught:
            read_reference_manifest(path, SLUG)
        assert str(path) in str(caught.value) and f"re-materialize reference_images for {SLUG}" in str(caught.value), case


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


IDENTITY_DAMAGE = {
    "truncated": _npz(mean=np.ones(128, np.float32))[:200],
    "garbage": b"PK\x03\x04" + bytes(300),
    "not-npz": b"hello",
    "empty": b"",
    "no-mean": _npz(other=np.ones(4)),
    "object-array": None,  # written below with allow_pickle: loading it must not unpickle
    "matrix": _npz(mean=np.ones((2, 2))),
    "text": _npz(mean=np.array(["a", "b"])),
    "nan": _npz(mean=np.array([np.nan, 1.0])),
    "zeros": _npz(mean=np.zeros(8)),
    "empty-vector": _npz(mean=np.zeros(0)),
}


@pytest.mark.parametrize("case", sorted(IDENTITY_DAMAGE))
def test_identity_file_damage_names_the_file_and_reference_identity(tmp_path, case):
    layout = StorageLayout(tmp_path)
    path = layout.identity_dir(SLUG) / "identity.npz"
    path.parent.mkdir(parents=True)
    if case == "object-array":
        np.savez(path, mean=np.array([{"a": 1}], dtype=object))
    else:
        path.write_bytes(IDENTITY_DAMAGE[case])
    with pytest.raises(dg.Failure) as caught:  # image_scores' reader
        load_identity(layout, SLUG)
    assert str(path) in str(caught.value) and f"re-materialize reference_identity for {SLUG}" in str(caught.value)
    with pytest.raises(DamagedFileError):
        read_identity_vector(path, SLUG)


def test_identity_json_that_is_not_an_object_names_the_fix(tmp_path):
    path = tmp_path / "identity.json"
    for data in (b"[1]", b'"text"', b"{trunc"):
        path.write_bytes(data)
        with pytest.raises(DamagedFileError, match="re-materialize reference_identity"):
            identity_document(path, SLUG)
    path.write_bytes(b'{"reference_set_hash": "x"}')
    assert identity_document(path, SLUG) == {"reference_set_hash": "x"}


def _score_frame() -> pd.DataFrame:
    row = {column: None for column in SCORE_FRAME_COLUMNS}
    row.update(image_id="i-1", approved=True, queen=SLUG)
    return pd.DataFrame([row])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing-column", "approved-as-text", "null-id"])
def test_score_table_damage_is_rescored_not_a_raw_error(tmp_path, damage):
    path = tmp_path / "scores.parquet"
    good = _score_frame()
    good.to_parquet(path)
    assert read_scores(path) is not None
    frame = good.copy()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"PAR1" + bytes(100) + b"PAR1")
    else:
        if damage == "missing-column":
            frame = frame.drop(columns=["approved"])
        elif damage == "approved-as-text":
            frame["approved"] = "yes"
        else:
            frame["image_id"] = None
        frame.to_parquet(path)
    assert read_scores(path) is None  # image_scores scores every image again; readers never see the frame


GENERATED_EDITS = {
    "images-not-list": lambda m: {**m, "images": {"a": 1}},
    "entry-not-object": lambda m: {**m, "images": [1, *m["images"][1:]]},
    "images-missing": lambda m: {k: v for k, v in m.items() if k != "images"},
    "superseded-not-list": lambda m: {**m, "superseded": "x"},
    "failed-entry-string": lambda m: {**m, "failed": ["x"]},
}


def test_damaged_generated_manifest_names_the_fix_and_is_rebuilt_from_png_chunks(demo_root, instance):
    assert _materialize(demo_root, instance, DemoRenderer()).success
    path = _folder(demo_root) / "manifest.json"
    good = _manifest(demo_root)
    assert generated_manifest_problem(good) is None
    layout = StorageLayout(demo_root / "storage")
    cases = {**_json_damage(good), **{k: json.dumps(edit(good)).encode() for k, edit in GENERATED_EDITS.items()}}
    cases.pop("duplicate-key")
    for case, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(dg.Failure) as caught:  # image_scores' reader
            read_generated_manifest(layout, NIGHT, SLUG)
        message = str(caught.value)
        assert str(path) in message and f"re-materialize generated_images for {SLUG} on {NIGHT}" in message, case
        meta = _metadata(_materialize(demo_root, instance, DemoRenderer()))  # the rebuild: every image adopted
        assert (meta["new"], meta["reused"], meta["failed"]) == (0, DEMO_TOTAL, 0), case
        rebuilt = _manifest(demo_root)
        assert [e["sha256"] for e in rebuilt["images"]] == [e["sha256"] for e in good["images"]], case


@pytest.mark.parametrize(
    "data", [b"a: {decision: approve, by: m", b"\xff\xfe", b"- 1\n- 2\n", b"x: [1, 2]\n", b"x: {decision: approve}\n"]
)
def test_overrides_damage_names_the_file(tmp_path, data):
    path = tmp_path / "overrides" / f"{SLUG}.yaml"
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(OverrideError) as caught:
        load_overrides(path)
    assert str(path) in str(caught.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)
entry_like = st.fixed_dictionaries(
    {}, optional={name: json_values | st.just("x") for name in [*ENTRY_FIELD_TYPES, "status", "source", "normalized", "category"]}
)
GOOD_IMAGE = {"image_id": f"{SLUG}-{NIGHT}-portrait-000", "asset_type": "portrait", "file": "portrait/x.png",
              "sha256": "0" * 64, "params_hash": "p", "params": {"prompt": "a portrait", "seed": 1}, "seed": 1, "index": 0}
GOOD_REFERENCE = {"source": "portraits/a.jpg", "category": "portraits", "status": "accepted",
                  "normalized": "portraits/a.png", "sha256": "0" * 64}
GOOD_ENTRY = {**GOOD_IMAGE, **GOOD_REFERENCE}
near_valid_entry = st.just(GOOD_ENTRY) | st.builds(
    lambda name, value: {**GOOD_ENTRY, name: value}, st.sampled_from(sorted(GOOD_ENTRY)), json_values
) | st.builds(
    lambda name: {k: v for k, v in GOOD_ENTRY.items() if k != name}, st.sampled_from(sorted(GOOD_ENTRY))
)  # a valid entry with one field replaced by anything or left out
near_valid = st.fixed_dictionaries(
    {
        "images": st.lists(near_valid_entry, max_size=3),
        "entries": st.lists(near_valid_entry, max_size=3),
        "reference_set_hash": st.just("h" * 64) | json_values,
    },
    optional={"superseded": st.lists(near_valid_entry, max_size=2), "failed": st.lists(near_valid_entry, max_size=2)},
)
manifest_like = near_valid | json_values | st.fixed_dictionaries(
    {},
    optional={
        "images": st.lists(entry_like | json_values, max_size=4) | json_values,
        "failed": st.lists(entry_like | json_values, max_size=3) | json_values,
        "superseded": st.lists(entry_like | json_values, max_size=3) | json_values,
        "entries": st.lists(entry_like | json_values, max_size=4) | json_values,
        "reference_set_hash": json_values,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=manifest_like)
def test_any_generated_manifest_is_refused_by_name_or_read_by_every_consumer(tmp_path, document):
    """The property: the readers either refuse the document naming the file, or every consumer
    (generation's reuse and superseded bookkeeping, image_scores' rows) works on it."""
    layout = StorageLayout(tmp_path)
    folder = layout.generated_dir(NIGHT, SLUG)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    path.write_text(json.dumps(document))
    try:
        previous = gen.read_manifest(path)
    except ValueError as error:
        event("refused")
        assert str(path) in str(error)
        with pytest.raises(dg.Failure, match="re-materialize generated_images"):
            read_generated_manifest(layout, NIGHT, SLUG)
        return
    event("read by every consumer")
    assert previous is not None  # the file exists: None would mean "absent"
    recorded = {entry.get("image_id"): entry for entry in previous.get("images", [])}
    for request in PLAN:
        if request.image_id in recorded:
            gen.valid_entry(recorded[request.image_id], folder, request)
    gen.superseded_entries(previous, PLAN, folder)
    manifest = read_generated_manifest(layout, NIGHT, SLUG)
    manifest_ids(manifest)
    for row in manifest_rows(manifest, layout, NIGHT, SLUG, warn=lambda message: None):
        assert row["seed"] is None or isinstance(row["seed"], int)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=manifest_like, raw=st.binary(max_size=64), use_raw=st.booleans())
def test_any_reference_manifest_is_refused_by_name_or_read_by_its_consumers(tmp_path, document, raw, use_raw):
    path = tmp_path / "manifest.json"
    path.write_bytes(raw if use_raw else json.dumps(document).encode())
    try:
        manifest = read_reference_manifest(path, SLUG)
    except DamagedFileError as error:
        event("refused")
        assert error.path == path and "re-materialize reference_images" in str(error)
        return
    event("read by its consumers")
    accepted = [e for e in manifest["entries"] if e["status"] == "accepted"]  # reference_identity, queen_lora
    assert all(isinstance(e["normalized"], str) for e in accepted) and isinstance(manifest["reference_set_hash"], str)
    gen.references_by_type(manifest["entries"], tmp_path, ["portrait", "pose"])


@pytest.mark.parametrize("damage", [b"{trunc", b"[1, 2]", b"\xff\xfe"])
def test_damaged_lora_info_is_rewritten_from_the_lora_header(lora_env, damage):
    from tests.test_lora_training import demo_queen, write_upstream
    from tests.test_lora_training import materialize as materialize_lora

    layout, _, resources, instance, roster_dir = lora_env
    write_upstream(layout, roster_dir, seeds=[1, 2])
    resources["catalog"].upsert_queen(demo_queen())
    first, _ = materialize_lora(resources, instance)
    good = json.loads(layout.lora_info_path(SLUG).read_text())
    layout.lora_info_path(SLUG).write_bytes(damage)
    again, _ = materialize_lora(resources, instance)
    assert again["reused"] is True and again["version"] == first["version"]
    assert json.loads(layout.lora_info_path(SLUG).read_text()) == good


@pytest.mark.parametrize("damage", [b"{trunc", b"[1]", b'{"reference_set_hash": "x", "entries": "no"}'])
def test_damaged_reference_manifest_fails_queen_lora_naming_reference_images(lora_env, damage):
    from tests.test_lora_training import demo_queen, write_upstream
    from tests.test_lora_training import materialize as materialize_lora

    layout, _, resources, instance, roster_dir = lora_env
    write_upstream(layout, roster_dir, seeds=[1, 2])
    resources["catalog"].upsert_queen(demo_queen())
    layout.reference_manifest(SLUG).write_bytes(damage)
    with pytest.raises(dg.Failure) as caught:
        materialize_lora(resources, instance)
    assert str(layout.reference_manifest(SLUG)) in str(caught.value) and f"re-materialize reference_images for {SLUG}" in str(caught.value)
