"""Where chapter scripts are read, and the voices of the speakers who are not queens."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from hydra_assets.domain.chapters import NARRATOR, PLAYER
from hydra_assets.domain.roster import VoiceDNA


class ChapterScripts(dg.ConfigurableResource):
    """The chapters folder (HYDRA_CHAPTERS_DIR) and the narrator's and player's voice settings.

    The two voices are voice DNA like a queen's (accent, pitch, timbre, reference clips), so
    every voice backend sets them up the same way it sets up a queen.
    """

    chapters_dir: str = Field(description="Folder of chapter scripts, one {slug}.md per chapter.")
    narrator_accent: str = "british"
    narrator_pitch: str = "low"
    narrator_timbre: str = "warm"
    narrator_reference_clips: list[str] = Field(default_factory=list)
    player_accent: str = "american"
    player_pitch: str = "medium"
    player_timbre: str = "clear"
    player_reference_clips: list[str] = Field(default_factory=list)

    def script_path(self, slug: str) -> Path:
        return Path(self.chapters_dir) / f"{slug}.md"

    def voice_for(self, speaker: str) -> VoiceDNA:
        """The configured voice of ``narrator`` or ``player``."""
        if speaker == NARRATOR:
            return VoiceDNA(accent=self.narrator_accent, pitch=self.narrator_pitch, timbre=self.narrator_timbre,
                            reference_clips=list(self.narrator_reference_clips))
        if speaker == PLAYER:
            return VoiceDNA(accent=self.player_accent, pitch=self.player_pitch, timbre=self.player_timbre,
                            reference_clips=list(self.player_reference_clips))
        raise KeyError(f"{speaker!r} is not a configured voice ({NARRATOR}, {PLAYER})")
