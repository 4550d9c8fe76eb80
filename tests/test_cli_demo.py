"""`make demo`'s command, as the README promises it: every stage for the demo queens, headless."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hydra_assets.domain.storage import StorageLayout

REPO = Path(__file__).resolve().parents[1]
HYDRA = Path(sys.executable).with_name("hydra")


def run_demo(tmp_path: Path) -> subprocess.CompletedProcess:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "instance" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HYDRA_ROSTER_DIR": str(tmp_path / "roster"),
        "HYDRA_STORAGE_ROOT": str(tmp_path / "storage"),
        "HYDRA_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
    }
    return subprocess.run([str(HYDRA), "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.timeout(900)  # every stage of `hydra demo` in a subprocess on 2 CPU cores
def test_hydra_demo_runs_every_stage_and_prints_the_summary(tmp_path):
    result = run_demo(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("queen "))
    for column in ("refs", "faces", "lora", "images", "approved", "rate", "lines", "status"):
        assert column in header.split()
    rows = [line.split() for line in lines if line.startswith(("ada-marlowe", "nova-sterling"))]
    assert len(rows) == 2 and all(row[-1] == "ok" for row in rows)
    assert "2 queens, 0 failed" in result.stdout
    chapter_header = next(line for line in lines if line.startswith("chapter "))
    for column in ("scenes", "images", "lines", "audio", "LUFS", "status"):
        assert column in chapter_header.split()
    [chapter_row] = [line.split() for line in lines if line.startswith("chapter-01 ")]
    assert chapter_row[1] == "2" and chapter_row[3] == "10"  # scenes, lines
    assert "ok" in chapter_row
    assert (tmp_path / "storage" / "chapters" / "chapter-01" / "metadata.json").is_file()

    layout = StorageLayout(tmp_path / "storage")
    [night] = [p.name for p in (tmp_path / "storage" / "overnight").iterdir()]
    assert layout.report_path(night).is_file()
    for slug in ("ada-marlowe", "nova-sterling"):
        assert layout.lora_path(slug).is_file()
        assert len(list(layout.voice_dir(slug).glob("*.wav"))) == 6

    again = run_demo(tmp_path)  # everything already made is reused, nothing is redone
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("v1 (reused)") == 2
