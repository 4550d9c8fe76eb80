"""The chapter script format: a table of valid and invalid scripts and the messages they give."""

from __future__ import annotations

from pathlib import Path

import pytest

from hydra_assets.domain.chapters import ChapterFileError, parse_chapter, script_files
from hydra_assets.domain.demo_chapter import DEMO_SCRIPT

FRONT = "---\ntitle: Test\nnumber: 3\ncast: [nova-sterling, ada-marlowe]\n---\n"
SCENE = "## harbour: The harbour\nSetting: A quiet harbour.\nQueens: nova-sterling, ada-marlowe\n\n"
PATH = Path("chapters/chapter-03.md")


def parse(body: str, front: str = FRONT, **kwargs):
    return parse_chapter(PATH, front + body, **kwargs)


def messages(body: str, **kwargs) -> list[str]:
    return [str(e) for e in parse(body, **kwargs).errors]


def test_the_demo_script_parses_into_two_scenes_and_ten_lines():
    parsed = parse_chapter(Path("chapter-01.md"), DEMO_SCRIPT)
    chapter = parsed.chapter
    assert parsed.errors == []
    assert chapter.slug == "chapter-01" and chapter.front.number == 1
    assert [s.id for s in chapter.scenes] == ["arrival", "deck"]
    assert [line.number for line in chapter.lines] == list(range(1, 11))
    first = chapter.scenes[0]
    assert first.setting.startswith("A small harbour office") and first.queens == ["nova-sterling", "ada-marlowe"]
    assert first.directions == ["Nova stands by the window with a mug of coffee; Ada studies a sea chart at the desk."]
    ada = first.lines[3]
    assert (ada.id, ada.speaker, ada.emotion, ada.level, ada.source_line) == ("arrival-04", "ada-marlowe", "calm", 1, 19)
    assert DEMO_SCRIPT.split("\n")[ada.source_line - 1].startswith("**ada-marlowe** (calm, 1)")


VALID = [
    # (body, expected (speaker, emotion, level, text, ask) of each line)
    ("**nova-sterling**: Hello there.", [("nova-sterling", "neutral", 0, "Hello there.", None)]),
    ("nova-sterling (happy, 4): Plain speaker, no bold.", [("nova-sterling", "happy", 4, "Plain speaker, no bold.", None)]),
    ("- **narrator** (level 2): A bullet.", [("narrator", "neutral", 2, "A bullet.", None)]),
    ("**player** (7, sad): Level first.\n~ ask: shorter and kinder", [("player", "sad", 7, "Level first.", "shorter and kinder")]),
    ("**Narrator**: Case does not matter for narrator.", [("narrator", "neutral", 0, "Case does not matter for narrator.", None)]),
    ("<!-- a writer's note -->\n\n**player**: After a comment.", [("player", "neutral", 0, "After a comment.", None)]),
]


@pytest.mark.parametrize("body,expected", VALID)
def test_valid_lines(body, expected):
    parsed = parse(SCENE + body)
    assert parsed.errors == []
    assert [(l.speaker, l.emotion, l.level, l.text, l.ask) for l in parsed.chapter.lines] == expected


def test_front_matter_level_is_the_default_level():
    parsed = parse(SCENE + "**player**: Hi.", front=FRONT.replace("number: 3", "number: 3\nlevel: 5"))
    assert parsed.chapter.lines[0].level == 5


INVALID = [
    # (body, [messages]) — every message names the file and the line
    ("**bob**: Hello.", ["chapters/chapter-03.md:10: unknown speaker 'bob': queen not in the cast (nova-sterling, ada-marlowe)"]),
    ("**Bob Smith**: Hello.", ["chapters/chapter-03.md:10: not a dialogue line"]),
    ("**nova_sterling**: Hello.", ["chapters/chapter-03.md:10: unknown speaker 'nova_sterling': use a cast slug, narrator or player"]),
    ("**nova-sterling**:", ["chapters/chapter-03.md:10: empty line: the speaker has no text"]),
    ("**nova-sterling**: ...", ["chapters/chapter-03.md:10: text '...' has nothing to speak"]),
    ("**nova-sterling** (joyful): Hi.", ["chapters/chapter-03.md:10: unknown emotion 'joyful'; known: neutral, calm"]),
    ("**nova-sterling** (11): Hi.", ["chapters/chapter-03.md:10: level 11 is outside 0-10"]),
    ("**nova-sterling**: " + "word " * 60, ["chapters/chapter-03.md:10: text is 299 characters, more than 250"]),
    ("~ ask: warmer", ["chapters/chapter-03.md:10: `~ ask:` must follow the dialogue line it varies"]),
    ("**player**: Hi.\n~ ask:", ["chapters/chapter-03.md:11: empty `~ ask:` instruction"]),
    ("Just some prose.", ["chapters/chapter-03.md:10: not a dialogue line (`speaker (emotion, level): text`)"]),
    ("### sub heading", ["chapters/chapter-03.md:10: only `#` (title) and `##` (scene) headings are used, got ###"]),
    ("```\ncode\n```", ["chapters/chapter-03.md:10: code blocks are not part of a script"]),
    ("## harbour: Again\nSetting: x\nQueens: none\n\n**player**: Lost.", ["chapters/chapter-03.md:10: duplicate scene id 'harbour' (first used at line 6)"]),
    ("## Harbour Two\nSetting: x\nQueens: none", ["chapters/chapter-03.md:10: scene id 'Harbour Two' must be lowercase"]),
    ("## quay\nSetting: x\nQueens: nova-sterling, zoe-quinn\n\n**zoe-quinn**: Hi.", [
        "chapters/chapter-03.md:12: queen 'zoe-quinn' is not in the cast",
        "chapters/chapter-03.md:14: unknown speaker 'zoe-quinn': queen not in the cast",
    ]),
    ("## quay\nSetting: x\nQueens: nova-sterling\n\n**ada-marlowe**: Hi.", [
        "chapters/chapter-03.md:14: speaker 'ada-marlowe' is not among the queens present in scene 'quay'",
    ]),
    ("## quay\nQueens: none\n**player**: Hi.", ["chapters/chapter-03.md:10: scene 'quay' has no Setting: line"]),
    ("## quay\nSetting: x\nSetting: y\nQueens: none", ["chapters/chapter-03.md:12: scene 'quay' already has a Setting: line"]),
]


@pytest.mark.parametrize("body,expected", INVALID)
def test_invalid_lines_name_file_line_and_rule(body, expected):
    found = messages(SCENE + body)
    assert len(found) == len(expected), found
    for message, prefix in zip(found, expected):
        assert message.startswith(prefix), (message, prefix)


def test_a_bad_line_never_drops_the_others():
    body = SCENE + "**player**: One.\n**bob**: Two.\n**nova-sterling** (joyful): Three.\n**ada-marlowe** (calm): Four.\n"
    parsed = parse(body)
    assert [str(e).split(": ", 1)[0] for e in parsed.errors] == ["chapters/chapter-03.md:11", "chapters/chapter-03.md:12"]
    assert [(l.text, l.source_line) for l in parsed.chapter.lines] == [("One.", 10), ("Four.", 13)]
    assert [l.id for l in parsed.chapter.lines] == ["harbour-01", "harbour-02"]


def test_text_before_the_first_scene_is_reported():
    assert messages("**player**: Too early.\n\n" + SCENE) == [
        "chapters/chapter-03.md:6: text before the first scene heading (`## scene-id: Title`)"
    ]


def test_lazy_continuation_after_a_quote_is_dialogue_not_direction():
    parsed = parse(SCENE + "> Ada looks up.\n**ada-marlowe**: Morning.")
    assert parsed.errors == [] and parsed.chapter.scenes[0].directions == ["Ada looks up."]
    assert parsed.chapter.lines[0].text == "Morning."


def test_cast_is_checked_against_the_roster_when_given():
    parsed = parse(SCENE + "**ada-marlowe**: Hi.\n**nova-sterling**: Hello.", known_queens={"nova-sterling"})
    found = [str(e) for e in parsed.errors]
    assert found[0] == "chapters/chapter-03.md:4: cast: 'ada-marlowe' is not in the roster (no queen_profile for it)"
    assert any("queen 'ada-marlowe' is not in the cast" in m for m in found)
    assert [l.speaker for l in parsed.chapter.lines] == ["nova-sterling"]


FILE_ERRORS = [
    ("no front matter\n", "chapters/chapter-03.md:1: must start with a '---' front matter block"),
    ("---\ntitle: x\n", "chapters/chapter-03.md:1: front matter is not closed by a '---' line"),
    ("---\ntitle: [unclosed\n---\n", "chapters/chapter-03.md:2: front matter is not valid YAML"),
    ("---\n- a list\n---\n", "chapters/chapter-03.md:2: front matter must be a mapping"),
    ("---\ntitle: x\nnumber: 1\n---\n", "chapters/chapter-03.md:2: front matter cast: is required but missing"),
    ("---\ntitle: x\nnumber: 0\ncast: [a]\n---\n", "chapters/chapter-03.md:3: front matter number: Input should be greater than or equal to 1"),
    ("---\ntitle: x\nnumber: 1\ncast: [a, a]\n---\n", "chapters/chapter-03.md:4: front matter cast: lists a more than once"),
    ("---\ntitle: x\nnumber: 1\ncast: [Bad Slug]\n---\n", "chapters/chapter-03.md:4: front matter cast.0: String should match pattern"),
    ("---\ntitle: x\nnumber: 1\ncast: [narrator]\n---\n", "chapters/chapter-03.md:4: front matter cast: 'narrator' and 'player' are voices"),
    ("---\ntitle: x\nnumber: 1\ncast: [a]\nmood: dark\n---\n", "chapters/chapter-03.md:5: front matter mood: is not a known field"),
    ("---\na: &x [1, 2]\nb: [*x, *x]\n---\n", "chapters/chapter-03.md:2: front matter may not use YAML anchors or aliases"),
    ("---\ntitle: !!python/object:os.system x\n---\n", "chapters/chapter-03.md:2: front matter is not valid YAML"),
    ("---\n" + "x: " + "y" * 20000 + "\n---\n", "chapters/chapter-03.md:2: front matter is larger than 16384 bytes"),
]


@pytest.mark.parametrize("text,expected", FILE_ERRORS)
def test_unusable_scripts_raise_naming_file_line_and_rule(text, expected):
    with pytest.raises(ChapterFileError) as raised:
        parse_chapter(PATH, text)
    assert str(raised.value).startswith(expected), str(raised.value)


def test_bad_file_names_and_oversized_scripts_are_refused(tmp_path):
    with pytest.raises(ChapterFileError, match="file name 'Chapter 3' is not a valid slug"):
        parse_chapter(tmp_path / "Chapter 3.md", FRONT)
    big = tmp_path / "big.md"
    big.write_text(FRONT + "x" * (1 << 20))
    with pytest.raises(ChapterFileError, match="is larger than 1048576 bytes"):
        parse_chapter(big)
    binary = tmp_path / "binary.md"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ChapterFileError, match="cannot be read"):
        parse_chapter(binary)


def test_script_files_lists_markdown_only(tmp_path):
    for name in ("b.md", "a.md", ".hidden.md", "notes.txt"):
        (tmp_path / name).write_text(FRONT)
    assert [p.name for p in script_files(tmp_path)] == ["a.md", "b.md"]
    assert script_files(tmp_path / "missing") == []


def test_deeply_nested_front_matter_is_the_scripts_own_error(tmp_path):
    from hydra_assets.domain.chapters import ChapterFileError, parse_chapter

    path = tmp_path / "deep.md"
    path.write_text("---\ntitle: " + "[" * 900 + "]" * 900 + "\nnumber: 1\ncast: []\n---\n")
    with pytest.raises(ChapterFileError) as caught:
        parse_chapter(path)
    assert str(path) in str(caught.value)
