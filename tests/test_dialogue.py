"""Dialogue files: valid lines load, each bad input is rejected with file, line id and rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hydra_assets.domain.demo_data import DEMO_QUEENS
from hydra_assets.domain.demo_dialogue import DEMO_DIALOGUE, write_demo_dialogue
from hydra_assets.domain.dialogue import (
    EMOTIONS,
    MAX_TEXT_CHARS,
    DialogueFileError,
    dialogue_path,
    load_dialogue,
)
from hydra_assets.domain.roster import load_roster

GOOD_LINE = "  - {id: hello, text: Hello there., level: 0, emotion: neutral}\n"


def write(tmp_path: Path, body: str, slug: str = "nova-sterling") -> Path:
    path = tmp_path / f"{slug}.dialogue.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def only_error(path: Path, **kwargs):
    dialogue = load_dialogue(path, **kwargs)
    assert len(dialogue.errors) == 1, dialogue.errors
    return dialogue, dialogue.errors[0]


def test_valid_file_loads_with_defaults_and_collapsed_whitespace(tmp_path):
    path = write(
        tmp_path,
        """\
        queen: nova-sterling
        lines:
          - id: welcome
            text: >
              Good morning,
              and welcome.
            level: 2
            emotion: happy
          - {id: bye_01, text: "See you.", level: 10, emotion: calm, speed: 1.5}
        """,
    )
    dialogue = load_dialogue(path, slug="nova-sterling")
    assert dialogue.errors == []
    assert dialogue.language == "en"
    first, second = dialogue.lines
    assert (first.id, first.text, first.level, first.emotion, first.speed) == (
        "welcome", "Good morning, and welcome.", 2, "happy", 1.0
    )
    assert (second.id, second.speed) == ("bye_01", 1.5)


@pytest.mark.parametrize(
    ("line", "line_id", "field", "rule"),
    [
        ("{id: a, text: '', level: 0, emotion: neutral}", "a", "text", "text is empty"),
        ("{id: a, text: '   ', level: 0, emotion: neutral}", "a", "text", "text is empty"),
        ("{id: a, text: '...!', level: 0, emotion: neutral}", "a", "text", "nothing to speak"),
        ("{id: a, text: Hi., level: 0, emotion: joyful}", "a", "emotion", "unknown emotion 'joyful'; known: neutral"),
        ("{id: a, text: Hi., level: 11, emotion: neutral}", "a", "level", "less than or equal to 10"),
        ("{id: a, text: Hi., level: 0, emotion: neutral, speed: 3}", "a", "speed", "less than or equal to 2"),
        ("{id: ../etc, text: Hi., level: 0, emotion: neutral}", "../etc", "id", "should match pattern"),
        ("{id: a, text: Hi., level: 0, emotion: neutral, mood: x}", "a", "mood", "not a known field"),
        ("{text: Hi., level: 0, emotion: neutral}", "lines[1]", "id", "required but missing"),
        ("just a string", "lines[1]", "(line)", "must be a mapping"),
    ],
)
def test_bad_line_is_rejected_with_file_line_id_and_rule(tmp_path, line, line_id, field, rule):
    path = write(tmp_path, f"lines:\n{GOOD_LINE}  - {line}\n")
    dialogue, error = only_error(path)
    assert [l.id for l in dialogue.lines] == ["hello"], "one bad line must not sink the good one"
    assert (error.path, error.line_id, error.field, error.yaml_line) == (path, line_id, field, 3)
    assert rule in error.rule
    assert str(error).startswith(f"{path}:3: line {line_id}: {field}: ")


def test_over_long_text_is_rejected_not_split(tmp_path):
    text = "word " * (MAX_TEXT_CHARS // 5 + 1)
    path = write(tmp_path, f"lines:\n  - {{id: speech, text: '{text}', level: 0, emotion: neutral}}\n")
    dialogue, error = only_error(path)
    assert dialogue.lines == []
    assert error.line_id == "speech" and error.field == "text"
    assert f"more than {MAX_TEXT_CHARS}" in error.rule and "split it into several lines" in error.rule


def test_text_at_the_limit_is_accepted(tmp_path):
    text = "a" * MAX_TEXT_CHARS
    path = write(tmp_path, f"lines:\n  - {{id: speech, text: {text}, level: 0, emotion: neutral}}\n")
    assert load_dialogue(path).lines[0].text == text


def test_duplicate_ids_reject_every_occurrence_and_name_the_yaml_lines(tmp_path):
    path = write(
        tmp_path,
        """\
        lines:
          - {id: same, text: First., level: 0, emotion: neutral}
          - {id: other, text: Fine., level: 0, emotion: neutral}
          - {id: same, text: Second., level: 1, emotion: calm}
        """,
    )
    dialogue = load_dialogue(path)
    assert [l.id for l in dialogue.lines] == ["other"]
    assert [(e.line_id, e.field, e.yaml_line) for e in dialogue.errors] == [("same", "id", 2), ("same", "id", 4)]
    assert "used by 2 lines (YAML lines 2, 4)" in dialogue.errors[0].rule
    assert dialogue.rejected_ids == {"same"}


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ("lines: [\n", "is not valid YAML at line"),
        ("- just\n- a list\n", "must be a mapping with a 'lines' list"),
        ("language: en\n", "lines: is required but missing"),
        (f"lines:\n{GOOD_LINE}voice: loud\n", "voice: is not a known field"),
        (f"language: English\nlines:\n{GOOD_LINE}", "language: String should match pattern"),
        (f"queen: ada-marlowe\nlines:\n{GOOD_LINE}", "does not match the file's queen 'nova-sterling'"),
    ],
)
def test_unusable_file_raises_with_file_and_rule(tmp_path, body, rule):
    path = write(tmp_path, body)
    with pytest.raises(DialogueFileError) as caught:
        load_dialogue(path, slug="nova-sterling")
    assert caught.value.path == path
    assert rule in str(caught.value)


def test_dialogue_path_finds_yaml_and_yml_and_none(tmp_path):
    assert dialogue_path(tmp_path, "nova-sterling") is None
    (tmp_path / "nova-sterling.dialogue.yml").write_text("lines: []\n")
    assert dialogue_path(tmp_path, "nova-sterling") == tmp_path / "nova-sterling.dialogue.yml"


def test_demo_dialogue_is_valid_neutral_and_never_overwrites(tmp_path):
    written = write_demo_dialogue(tmp_path)
    assert {p.name for p in written} == {f"{q.slug}.dialogue.yaml" for q in DEMO_QUEENS}
    for queen in DEMO_QUEENS:
        dialogue = load_dialogue(tmp_path / f"{queen.slug}.dialogue.yaml", slug=queen.slug)
        assert dialogue.errors == []
        assert len(dialogue.lines) >= 5
        assert {l.emotion for l in dialogue.lines} <= set(EMOTIONS)
    edited = tmp_path / "ada-marlowe.dialogue.yaml"
    edited.write_text(f"lines:\n{GOOD_LINE}")
    assert write_demo_dialogue(tmp_path) == []
    assert write_demo_dialogue(tmp_path / "other", slugs=["ada-marlowe"]) == [tmp_path / "other" / "ada-marlowe.dialogue.yaml"]
    assert load_dialogue(edited).lines[0].id == "hello"
    assert len(DEMO_DIALOGUE["ada-marlowe"]) >= 5


def test_roster_loader_ignores_dialogue_files(tmp_path):
    write_demo_dialogue(tmp_path)
    roster = load_roster(tmp_path)
    assert roster.queens == {} and roster.errors == []
