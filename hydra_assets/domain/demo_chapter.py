"""The demo chapter: two neutral scenes with both demo queens, a narrator and ten lines.

One line is exactly a line of Nova's demo dialogue (text, emotion, level), so the demo shows
a chapter line reusing her voice_lines audio instead of synthesising it again. An existing
script is left alone: scripts are edited by writers.
"""

from __future__ import annotations

from pathlib import Path

from hydra_assets.domain.storage import atomic_write_bytes

DEMO_CHAPTER = "chapter-01"

DEMO_SCRIPT = """\
---
title: The Harbour Morning
number: 1
cast: [nova-sterling, ada-marlowe]
language: en
---

# The Harbour Morning

## arrival: The harbour office
Setting: A small harbour office at dawn, charts on the walls and a kettle on the stove.
Queens: nova-sterling, ada-marlowe

> Nova stands by the window with a mug of coffee; Ada studies a sea chart at the desk.

**narrator**: The ferry docked just after six, and the office lights were already on.
**nova-sterling**: Good morning. I hope the trip over was a smooth one.
**player** (calm): It was. Thank you for waiting for me.
**ada-marlowe** (calm, 1): Sit down for a minute. There is tea if you would like some.
**nova-sterling** (happy, 1): The new equipment arrived early, so we can start today.

## deck: On deck
Setting: The deck of a small research boat in the harbour, clear sky, ropes coiled on the planks.
Queens: ada-marlowe, nova-sterling

> Ada points at the horizon while Nova checks a clipboard.

**narrator**: By nine the boat was ready to leave the harbour.
**ada-marlowe** (serious, 2): We keep to the marked channel until the lighthouse.
**player** (2): How long until we reach the first buoy?
**nova-sterling** (calm, 2): About forty minutes, if the wind stays with us.
**ada-marlowe** (happy, 2): Then let us be on our way.
"""


def write_demo_chapter(chapters_dir: Path, *, overwrite: bool = False) -> Path | None:
    """Write ``{chapters_dir}/chapter-01.md`` unless it exists; returns the file written."""
    path = Path(chapters_dir) / f"{DEMO_CHAPTER}.md"
    if path.exists() and not overwrite:
        return None
    return atomic_write_bytes(path, DEMO_SCRIPT.encode())
