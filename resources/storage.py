"""The file store: the roster folder and the storage root (NFS on the cluster)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from hydra_assets.domain.roster import Queen, RosterError, is_valid_slug, load_queen, roster_files, slug_for_file
from hydra_assets.domain.storage import StorageLayout


class HydraStorage(dg.ConfigurableResource):
    """Where roster files are read and every produced file is written."""

    root: str
    roster_dir: str

    @property
    def layout(self) -> StorageLayout:
        return StorageLayout(Path(self.root))

    def roster_file(self, slug: str) -> Path:
        """The roster file of ``slug``; raises :class:`RosterError` naming the folder if there is none."""
        if not is_valid_slug(slug):
            raise RosterError(Path(self.roster_dir) / slug, "slug", f"{slug!r} is not a valid slug")
        matches = [p for p in roster_files(Path(self.roster_dir)) if slug_for_file(p) == slug]
        if not matches:
            raise RosterError(Path(self.roster_dir) / f"{slug}.yaml", "(file)", "no roster file for this queen")
        if len(matches) > 1:
            raise RosterError(matches[1], "slug", f"{slug!r} is already used by {matches[0]}")
        return matches[0]

    def load_queen(self, slug: str) -> Queen:
        return load_queen(self.roster_file(slug))
