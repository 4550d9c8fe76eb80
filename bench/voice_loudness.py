"""Loudness of the demo queens' voice lines as stored, measured independently of the pipeline.

    .venv/bin/python bench/voice_loudness.py [--target -23] [--target -18]

Synthesises every demo dialogue line with eSpeak NG through ``synthesize_lines`` (the path
``voice_lines`` takes), then reads each WAV back and prints its integrated loudness (pyloudnorm,
ITU-R BS.1770) and true peak (4x oversampled with scipy's resample_poly), per target.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile as sf
from scipy.signal import resample_poly

from hydra_assets.domain.demo_data import DEMO_QUEENS
from hydra_assets.domain.demo_dialogue import DEMO_DIALOGUE
from hydra_assets.domain.dialogue import DialogueLine
from hydra_assets.domain.roster import Queen
from hydra_assets.domain.voice_synthesis import Mastering, synthesize_lines
from resources.voice import EspeakBackend


def measure(path: Path) -> tuple[float, float, float]:
    samples, rate = sf.read(str(path), dtype="float64")
    true_peak = 20 * np.log10(np.max(np.abs(resample_poly(samples, 4, 1))))
    return float(pyloudnorm.Meter(rate).integrated_loudness(samples)), float(true_peak), len(samples) / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, action="append", help="LUFS (default: -23 and -18)")
    targets = parser.parse_args().target or [-23.0, -18.0]
    backend = EspeakBackend()
    print(f"{'target':>6}  {'queen':<14} {'line':<11} {'seconds':>7} {'LUFS':>7} {'dBTP':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            for demo in DEMO_QUEENS:
                queen = Queen.model_validate(demo.roster)
                lines = [DialogueLine(**line) for line in DEMO_DIALOGUE[demo.slug]]
                plan = backend.plan(demo.slug, queen.voice_dna, "en", lines)
                out = Path(tmp) / f"{target:g}" / demo.slug
                targets_by_id = {line.id: out / f"{line.id}.wav" for line in lines}
                outcome = synthesize_lines(backend, plan, targets_by_id, mastering=Mastering(target_lufs=target))
                assert outcome.aborted is None, outcome.aborted
                for line in lines:
                    lufs, true_peak, seconds = measure(targets_by_id[line.id])
                    print(f"{target:>6g}  {demo.slug:<14} {line.id:<11} {seconds:>7.2f} {lufs:>7.2f} {true_peak:>6.2f}")


if __name__ == "__main__":
    main()
