"""Family 1 (issue 13): any bytes or YAML document gives a valid object or the project's error
naming the file and the rule, fast, and one such file never stops the other queens."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hydra_assets.domain.dialogue import DialogueFileError, load_dialogue
from hydra_assets.domain.overrides import OverrideError, load_overrides
from hydra_assets.domain.roster import RosterError, load_queen, load_roster
from hydra_assets.domain.safe_documents import MAX_DEPTH, MAX_DOCUMENT_BYTES, DocumentError, load_json, load_yaml
from tests.test_roster import VALID

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)

# (document, what the message must say): each of these made yaml.safe_load hang, blow the
# stack, or raise something other than the project's error.
HOSTILE = {
    "billion-laughs": (BILLION_LAUGHS, "expands to more than"),
    "deep-flow": ("[" * 5000 + "]" * 5000, f"nests deeper than {MAX_DEPTH}"),
    "deep-block": ("".join("  " * i + "- \n" for i in range(200)), f"nests deeper than {MAX_DEPTH}"),
    "recursive-alias": ("a: &x [*x]\n", "recursive alias"),
    "duplicate-key": ("slug: a\nslug: b\n", "repeats the key 'slug'"),
    "bad-timestamp": ("when: !!timestamp 2026-13-45\n", "cannot construct"),
    "two-documents": ("a: 1\n---\nb: 2\n", "more than one YAML document"),
    "python-tag": ("a: !!python/object/apply:os.system [ls]\n", "is not valid YAML"),
    "nul-byte": ("name: a\x00b\n", "NUL byte"),
    "huge": ("a: " + "x" * (MAX_DOCUMENT_BYTES + 10) + "\n", f"larger than {MAX_DOCUMENT_BYTES} bytes"),
}


def write(folder: Path, name: str, data: bytes | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_is_refused_fast_with_file_and_rule(tmp_path, case):
    document, rule = HOSTILE[case]
    path = write(tmp_path, "hostile-queen.yaml", document)
    started = time.monotonic()
    with pytest.raises(DocumentError) as caught:
        load_yaml(path)
    assert time.monotonic() - started < 2.0
    assert str(path) in str(caught.value) and rule in str(caught.value)
    for loader, error in ((load_queen, RosterError), (load_overrides, OverrideError), (load_dialogue, DialogueFileError)):
        with pytest.raises(error, match=rule.replace("[", r"\[").replace("*", r"\*")) as caught:
            loader(path)
        assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "text, rule",
    [("[" * 100_000, "nests too deeply"), ('{"a": 1, "a": 2}', "repeats the key 'a'"), ("{", "is not valid JSON"), ("\xff", None)],
)
def test_hostile_json_is_refused_with_file_and_rule(tmp_path, text, rule):
    path = write(tmp_path, "manifest.json", text.encode("latin-1") if text == "\xff" else text)
    with pytest.raises(DocumentError) as caught:
        load_json(path)
    assert str(path) in str(caught.value) and (rule or "is not UTF-8") in str(caught.value)


def test_one_hostile_file_never_stops_the_other_queens(tmp_path):
    good = write(tmp_path, "nova-sterling.yaml", yaml.safe_dump(VALID))
    for case, (document, _) in HOSTILE.items():
        write(tmp_path, f"{case}.yaml", document)
    roster = load_roster(tmp_path)
    assert list(roster.queens) == ["nova-sterling"] and roster.paths["nova-sterling"] == good
    assert sorted(e.path.stem for e in roster.errors) == sorted(HOSTILE)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
# fragments that exercise anchors, aliases, tags, flow/block nesting and escapes
yaml_tokens = st.sampled_from(
    ["&a ", "*a", "&b ", "*b", "<<: ", "[", "]", "{", "}", ", ", ": ", "- ", "\n", "  ", "? ", "!!binary ", "!!timestamp ",
     "!!int ", "!!python/name:os.system ", "'", '"', "\\x00", "\\ud800", "2026-13-45", "0x1f", "1e999", "~", "|", ">", "#",
     "---\n", "...\n", "%YAML 1.1\n", "a", "slug", "nova-sterling", "\t", "\x00", "\ufeff", "\x85", "\u2028"]
)
yaml_texts = st.lists(yaml_tokens, max_size=40).map("".join)


def _loads_or_refuses(path: Path) -> None:
    """The property: a value, or DocumentError naming the file; never another exception."""
    try:
        load_yaml(path)
        event("value")
    except DocumentError as error:
        event("refused: " + re.sub(r"\d+", "N", error.rule.split(" at line")[0].split(":")[0])[:40])
        assert error.path == path and str(path) in str(error)


SETTINGS = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.binary(max_size=300))
def test_any_bytes_give_a_value_or_the_document_error(tmp_path, data):
    _loads_or_refuses(write(tmp_path, "any.yaml", data))


@SETTINGS
@given(text=yaml_texts)
def test_any_yaml_text_gives_a_value_or_the_document_error(tmp_path, text):
    _loads_or_refuses(write(tmp_path, "any.yaml", text))


@SETTINGS
@given(value=yaml_values, flow=st.booleans())
def test_any_yaml_document_round_trips_or_is_refused(tmp_path, value, flow):
    text = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=True)
    path = write(tmp_path, "any.yaml", text)
    try:
        loaded = load_yaml(path)
    except DocumentError as error:
        assert str(path) in str(error)
        return
    assert repr(loaded) == repr(yaml.safe_load(text))  # what it accepts, it reads as PyYAML does (repr: NaN)


@settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=yaml_texts)
def test_any_roster_file_never_stops_the_roster(tmp_path, text):
    folder = tmp_path / "roster"
    write(folder, "nova-sterling.yaml", yaml.safe_dump(VALID))
    write(folder, "broken-queen.yaml", text)
    roster = load_roster(folder)
    assert "nova-sterling" in roster.queens
    assert all(isinstance(error, RosterError) for error in roster.errors)
    assert {e.path.name for e in roster.errors} <= {"broken-queen.yaml"}


def test_hostile_files_never_stop_the_roster_sensor_tick(tmp_path):
    import dagster as dg

    from hydra_assets.domain.demo_data import write_demo_data
    from resources.storage import HydraStorage
    from tests.helpers import hydra_definitions
    from tests.test_roster_sensor import tick

    roster_dir, root = tmp_path / "roster", tmp_path / "storage"
    write_demo_data(roster_dir, root / "reference_images")
    write(roster_dir, "laughs-queen.yaml", BILLION_LAUGHS)
    write(roster_dir, "deep-queen.yaml", HOSTILE["deep-flow"][0])
    write(roster_dir, "nova-sterling.dialogue.yaml", BILLION_LAUGHS)
    storage = HydraStorage(root=str(root), roster_dir=str(roster_dir))
    sensor = hydra_definitions(tmp_path).resolve_sensor_def("roster_sensor")
    with dg.instance_for_test() as instance:
        started = time.monotonic()
        result = tick(sensor, instance, storage)
        assert time.monotonic() - started < 30
    requested = {r.partition_key for r in result.run_requests}
    assert {"ada-marlowe", "nova-sterling"} <= requested


@pytest.mark.parametrize("case", sorted(set(HOSTILE) - {"huge", "two-documents"}))
def test_hostile_markdown_front_matter_is_refused_with_file_and_rule(tmp_path, case):
    from hydra_assets.domain.safe_documents import load_markdown

    document, rule = HOSTILE[case]
    path = write(tmp_path, "chapter-01.md", f"---\n{document}\n---\n# Chapter one\n")
    with pytest.raises(DocumentError) as caught:
        load_markdown(path)
    assert str(path) in str(caught.value) and rule in str(caught.value)


def test_markdown_front_matter_and_body(tmp_path):
    from hydra_assets.domain.safe_documents import load_markdown

    assert load_markdown(write(tmp_path, "a.md", "---\nqueen: nova-sterling\n---\n# One\n")) == ({"queen": "nova-sterling"}, "# One\n")
    assert load_markdown(write(tmp_path, "b.md", "# No front matter\n")) == ({}, "# No front matter\n")
    with pytest.raises(DocumentError, match="no closing"):
        load_markdown(write(tmp_path, "c.md", "---\nqueen: x\n# One\n"))
    with pytest.raises(DocumentError, match="must be a mapping"):
        load_markdown(write(tmp_path, "d.md", "---\n- x\n---\n"))


@SETTINGS
@given(text=yaml_texts, body=st.text(max_size=50))
def test_any_markdown_gives_front_matter_or_the_document_error(tmp_path, text, body):
    from hydra_assets.domain.safe_documents import load_markdown

    path = write(tmp_path, "any.md", f"---\n{text}\n---\n{body}")
    try:
        front, _ = load_markdown(path)
    except DocumentError as error:
        assert str(path) in str(error)
        return
    assert isinstance(front, dict)


@pytest.mark.parametrize("data", [b"[" * 100_000, b"\xff", b'{"files": 1}', b"{"])
def test_damaged_caches_are_misses_not_errors(tmp_path, data):
    """Sensor file stats and the LLM prompt cache: a damaged file costs a re-hash or a new answer."""
    from hydra_assets.domain.fingerprints import FileStatsStore
    from hydra_assets.domain.prompt_expansion import ExpansionCache

    store = FileStatsStore(tmp_path / "stats")
    write(tmp_path / "stats", "nova-sterling.json", data)
    assert store.load("nova-sterling") == {}
    cache = ExpansionCache(tmp_path / "cache")
    key = "ab" + "0" * 62
    write(tmp_path / "cache" / "ab", f"{key}.json", data)
    assert cache.get(key) is None
