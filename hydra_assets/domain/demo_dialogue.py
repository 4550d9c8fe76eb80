"""Neutral demo dialogue for the demo queens (``roster/{slug}.dialogue.yaml``).

Ordinary lines (greetings, directions, small talk) at several story levels and emotions, so
the demo exercises the eSpeak prosody table and every voice_lines check. An existing file is
left alone: dialogue is edited by people, and the demo must not undo their edits.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from hydra_assets.domain.storage import atomic_write_bytes

DEMO_DIALOGUE: dict[str, list[dict]] = {
    "nova-sterling": [
        {"id": "greeting", "text": "Good morning. I hope the trip over was a smooth one.", "level": 0, "emotion": "neutral"},
        {"id": "checklist", "text": "Let's go through the checklist together, one item at a time.", "level": 1, "emotion": "calm"},
        {"id": "weather", "text": "The forecast says clear skies until the evening.", "level": 1, "emotion": "neutral"},
        {"id": "good-news", "text": "The new equipment arrived early, so we can start tomorrow.", "level": 2, "emotion": "happy"},
        {"id": "question", "text": "Did you get a chance to read the notes I left on your desk?", "level": 3, "emotion": "neutral"},
        {"id": "farewell", "text": "Copy that. See you at the briefing after lunch.", "level": 4, "emotion": "calm", "speed": 0.95},
    ],
    "ada-marlowe": [
        {"id": "greeting", "text": "Well now, welcome aboard. Mind the step on your way in.", "level": 0, "emotion": "neutral"},
        {"id": "directions", "text": "The chart room is down the corridor, second door on the left.", "level": 1, "emotion": "neutral"},
        {"id": "schedule", "text": "We leave the harbor at nine, so please be on deck by half past eight.", "level": 1, "emotion": "serious"},
        {"id": "tea", "text": "There is tea in the galley if you would like a cup before we start.", "level": 2, "emotion": "calm"},
        {"id": "well-done", "text": "Nicely done. That knot will hold in any weather.", "level": 3, "emotion": "happy"},
        {"id": "goodnight", "text": "That will be all for today. Get some rest.", "level": 4, "emotion": "calm", "speed": 0.9},
    ],
}


def write_demo_dialogue(
    roster_dir: Path, *, slugs: Iterable[str] | None = None, overwrite: bool = False
) -> list[Path]:
    """Write the demo queens' dialogue files (all, or those in ``slugs``) unless they exist; returns the files written."""
    wanted = set(DEMO_DIALOGUE if slugs is None else slugs)
    written = []
    for slug, lines in DEMO_DIALOGUE.items():
        if slug not in wanted:
            continue
        path = Path(roster_dir) / f"{slug}.dialogue.yaml"
        if path.exists() and not overwrite:
            continue
        document = {"queen": slug, "language": "en", "lines": lines}
        text = "# Demo dialogue written by `hydra demo-data`; edit freely, it is not rewritten.\n"
        written.append(atomic_write_bytes(path, (text + yaml.safe_dump(document, sort_keys=False, width=120)).encode()))
    return written
