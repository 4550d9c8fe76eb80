"""Family 2 (issue 13): whatever the roster accepts, the catalog stores the same way on SQLite
and PostgreSQL and torch can seed from; the rest is refused at load with file + field + rule."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hydra_assets.domain.roster import SEED_MAX, Queen, RosterError, load_queen
from resources.catalog import CatalogResource
from tests.test_roster import VALID

# dotted field → value that passed the roster before and broke a later stage
BREAKS_LATER = {
    "name": ("Nova\x00Sterling", "NUL"),  # PostgreSQL: string literal cannot contain NUL
    "title": ("t" * 201, "at most 200 characters"),  # catalog queens.title is String(200)
    "generation_config.base_prompt": ("portrait \x00", "NUL"),  # JSON column on PostgreSQL
    "physical_dna.distinguishing_features": (["freckles \ud800"], "lone surrogate"),  # no driver encodes it
    "generation_config.lora_training.seed": (2**64, "less than or equal to"),  # torch.Generator.manual_seed overflows
    "generation_config.target_" + "x" * 60 + "s": (3, "at most 50 characters"),  # generated_assets.asset_type String(50)
    "personality_dna.speech_patterns": (["ok"] * 500, "at most 200 entries"),
    "generation_config.negative_prompt": ("blur " * 2000, "at most 4000 characters"),
}


def document_with(dotted: str, value: object) -> dict:
    document = copy.deepcopy(VALID)
    target = document
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value
    return document


def write(folder: Path, document: dict, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{document['slug']}.yaml")
    path.write_text(yaml.safe_dump(document, allow_unicode=False))  # escapes keep \x00 and \ud800 as YAML escapes
    return path


@pytest.mark.parametrize("dotted", sorted(BREAKS_LATER))
def test_values_that_break_later_stages_are_refused_at_load(tmp_path, dotted):
    value, rule = BREAKS_LATER[dotted]
    path = write(tmp_path, document_with(dotted, value))
    with pytest.raises(RosterError) as caught:
        load_queen(path)
    field_name = dotted if not dotted.startswith("generation_config.target_") else "generation_config.targets"
    assert caught.value.path == path and caught.value.field.startswith(field_name.split(".")[0])
    assert rule in caught.value.rule and str(path) in str(caught.value)


def test_the_largest_accepted_seed_seeds_torch_and_its_evaluation_generator():
    torch.Generator().manual_seed(SEED_MAX + 1)  # lora_training seeds evaluation with seed + 1
    with pytest.raises((RuntimeError, ValueError), match="[Oo]verflow"):
        torch.Generator().manual_seed(2**64)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("postgres_database_url")


texts = (
    st.text(max_size=250)  # any storable text, control characters and astral planes included
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=20)  # surrogates too
    | st.just("a\x00b")
    | st.just("\ud800")
)
roster_changes = st.fixed_dictionaries(
    {},
    optional={
        "name": texts.filter(bool),
        "title": texts,
        "generation_config.base_prompt": texts,
        "physical_dna.hair.color": texts,
        "physical_dna.distinguishing_features": st.lists(texts, max_size=3),
        "personality_dna.traits": st.dictionaries(st.text(max_size=250) | texts, st.integers(-5, 15), max_size=3),
        "generation_config.lora_training.seed": st.integers(0, SEED_MAX) | st.integers(-(2**70), 2**70),
        "generation_config.lora_strength": st.floats(0, 2) | st.floats(allow_nan=True, allow_infinity=True),
        "generation_config.target_portraits": st.integers(0, 10_000) | st.integers(-(2**40), 2**40),
    },
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=roster_changes)
def test_what_the_roster_accepts_the_catalog_stores_on_both_databases(tmp_path, catalog_url, changes):
    document = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        document = _set(document, dotted, value)
    path = write(tmp_path / "roster", document)
    try:
        queen = load_queen(path)
    except RosterError as error:
        event(f"refused: {error.field}")
        assert error.path == path and error.field and error.rule
        return
    event("stored")
    catalog = CatalogResource(url=catalog_url)
    try:
        queen_id = catalog.upsert_queen(queen)
        assert catalog.queen_id(queen.slug) == queen_id
    finally:
        catalog.dispose()
    torch.Generator().manual_seed(queen.generation_config.lora_training.seed + 1)


def _set(document: dict, dotted: str, value: object) -> dict:
    document = copy.deepcopy(document)
    target = document
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value
    return document


def test_queen_model_refuses_the_same_values_without_a_file():
    with pytest.raises(ValueError, match="NUL"):
        Queen.model_validate(document_with("name", "a\x00"))


def _paths(document: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in document.items():
        paths.append(f"{prefix}{key}")
        if isinstance(value, dict):
            paths += _paths(value, f"{prefix}{key}.")
    return paths


ROSTER_PATHS = sorted(_paths(VALID) + ["generation_config.lora_training.seed", "generation_config.target_outfits"])
any_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dotted=st.sampled_from(ROSTER_PATHS), value=any_value)
def test_any_value_in_any_roster_field_gives_a_queen_or_the_roster_error(tmp_path, dotted, value):
    path = write(tmp_path / "roster", _set(copy.deepcopy(VALID), dotted, value), name=f"{VALID['slug']}.yaml")
    try:
        queen = load_queen(path)
    except RosterError as error:
        event("refused")
        assert error.path == path and str(path) in str(error)
        return
    event("accepted")
    queen.model_dump(mode="json")  # what the catalog stores
