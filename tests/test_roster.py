from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hydra_assets.domain.demo_data import DEMO_QUEENS
from hydra_assets.domain.prompts import build_prompts
from hydra_assets.domain.roster import RosterError, load_queen, load_roster

VALID = DEMO_QUEENS[0].roster


def write(folder: Path, name: str, document: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def with_changes(slug: str, **changes) -> dict:
    document = yaml.safe_load(yaml.safe_dump(VALID))
    document["slug"] = slug
    for dotted, value in changes.items():
        target = document
        *parents, leaf = dotted.split(".")
        for part in parents:
            target = target[part]
        if value is None:
            del target[leaf]
        else:
            target[leaf] = value
    return document


def test_valid_file_loads_with_spec_defaults(tmp_path):
    queen = load_queen(write(tmp_path, "nova-sterling.yaml", VALID))
    config = queen.generation_config
    assert (config.aesthetic_threshold, config.technical_threshold, config.face_match_threshold) == (6.5, 70.0, 0.7)
    assert config.targets == {"portrait": 4, "expression": 3, "pose": 2}
    assert queen.tier == "core"
    assert queen.status == "draft"


def test_new_asset_types_are_configuration(tmp_path):
    queen = load_queen(write(tmp_path, "q.yaml", with_changes("q", **{"generation_config.target_outfits": 5})))
    assert queen.generation_config.targets["outfit"] == 5


@pytest.mark.parametrize(
    ("file_name", "document", "field", "rule"),
    [
        ("q.yaml", with_changes("q", name=None), "name", "is required but missing"),
        ("q.yaml", with_changes("q", tier="royal"), "tier", "'royal'"),
        (
            "q.yaml",
            with_changes("q", **{"generation_config.aesthetic_threshold": 11}),
            "generation_config.aesthetic_threshold",
            "less than or equal to 10",
        ),
        (
            "q.yaml",
            with_changes("q", **{"generation_config.face_match_threshold": -0.1}),
            "generation_config.face_match_threshold",
            "greater than or equal to 0",
        ),
        ("q.yaml", with_changes("other"), "slug", "must match the file name 'q'"),
        ("q.yaml", with_changes("../etc"), "slug", "should match pattern"),
        ("Queen Bee.yaml", with_changes("queen-bee"), "slug", "is not a valid slug"),
        ("q.yaml", with_changes("q", hair_colour="red"), "hair_colour", "is not a known field"),
        ("q.yaml", "slug: q\nname: [unclosed\n", "(document)", "is not valid YAML at line 3"),
        ("q.yaml", "- just\n- a list\n", "(document)", "must be a mapping"),
    ],
)
def test_bad_file_names_file_field_and_rule(tmp_path, file_name, document, field, rule):
    path = write(tmp_path, file_name, document)
    with pytest.raises(RosterError) as caught:
        load_queen(path)
    assert caught.value.path == path
    assert caught.value.field == field
    assert rule in caught.value.rule
    assert str(path) in str(caught.value)


def test_bad_files_do_not_stop_good_ones(tmp_path):
    write(tmp_path, "good-one.yaml", with_changes("good-one"))
    write(tmp_path, "broken.yaml", "slug: broken\n  tier: : :\n")
    write(tmp_path, "bad-tier.yaml", with_changes("bad-tier", tier="royal"))
    write(tmp_path, "good-two.yml", with_changes("good-two"))
    write(tmp_path, "good-one.dialogue.yaml", "lines: []\n")  # dialogue files are not queens
    roster = load_roster(tmp_path)
    assert sorted(roster.queens) == ["good-one", "good-two"]
    assert sorted(e.path.name for e in roster.errors) == ["bad-tier.yaml", "broken.yaml"]


def test_duplicate_slug_is_reported_once(tmp_path):
    write(tmp_path, "twin.yaml", with_changes("twin"))
    write(tmp_path, "twin.yml", with_changes("twin"))
    roster = load_roster(tmp_path)
    assert list(roster.queens) == ["twin"]
    [error] = roster.errors
    assert error.field == "slug" and "already used by" in error.rule and error.path.name == "twin.yml"


def test_prompts_are_deterministic_and_come_from_the_dna(tmp_path):
    queen = load_queen(write(tmp_path, "nova-sterling.yaml", VALID))
    prompts = build_prompts(queen, "close-up portrait")
    assert prompts == build_prompts(queen, "close-up portrait")
    for fragment in ("short wavy brown hair", "brown almond eyes", "fair skin", "close-up portrait", "85mm"):
        assert fragment in prompts.positive
    assert prompts.negative.startswith("cartoon, painting")
    assert "blurry" in prompts.negative
