"""The quality gate's pure rules: measures, calibration, gate order, overrides, near-duplicates, report.

Run as a script (``.venv/bin/python tests/test_quality_domain.py``) to print the measurement
table that the calibration anchors in hydra_assets/domain/image_measures.py come from.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from hydra_assets.domain import image_measures as measures
from hydra_assets.domain import quality, quality_report
from hydra_assets.domain.demo_data import astronaut_photo, grace_hopper_photo
from hydra_assets.domain.roster import GenerationConfig
from hydra_assets.domain.quality import Override, OverrideError, Thresholds

SIZE = 768
"""Generated images' size: the measures' anchors are set for images downscaled from here."""


def photo(path) -> Image.Image:
    image = Image.open(path).convert("RGB")
    scale = SIZE / min(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def noisy(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    pixels = pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def shifted(image: Image.Image, pixels: int = 1) -> Image.Image:
    array = np.asarray(image)
    return Image.fromarray(np.concatenate([array[:, pixels:], array[:, -pixels:]], axis=1))


def degraded(image: Image.Image) -> dict[str, Image.Image]:
    return {
        "blur 2 px": image.filter(ImageFilter.GaussianBlur(2)),
        "noise sigma 10": noisy(image, 10),
        "brightness 1.6": ImageEnhance.Brightness(image).enhance(1.6),
    }


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {"astronaut": photo(astronaut_photo()), "grace_hopper": photo(grace_hopper_photo())}


# ------------------------------------------------------------------------------ measures


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_classical_technical_scores_the_sharp_photo_above_its_damaged_versions(photos, name):
    sharp = measures.technical_quality(np.asarray(photos[name]))
    assert sharp >= 70.0, "a clean photo must pass the default technical gate"
    for edit, image in degraded(photos[name]).items():
        damaged = measures.technical_quality(np.asarray(image))
        assert damaged < 70.0 <= sharp, f"{name} {edit}: {damaged:.1f} vs sharp {sharp:.1f}"


def test_each_technical_factor_reacts_to_its_own_flaw(photos):
    base = measures.factor_values(measures.image_statistics(np.asarray(photos["astronaut"])), measures.TECHNICAL_FACTORS)
    assert all(value == 1.0 for value in base.values()), base
    edits = degraded(photos["astronaut"])
    flaw_of = {"blur 2 px": "sharpness", "noise sigma 10": "noise", "brightness 1.6": "highlights"}
    for edit, image in edits.items():
        factors = measures.factor_values(measures.image_statistics(np.asarray(image)), measures.TECHNICAL_FACTORS)
        assert factors[flaw_of[edit]] < measures.FLAW_FACTOR, (edit, factors)
    small = np.asarray(photos["astronaut"].resize((300, 300)))
    assert measures.factor_values(measures.image_statistics(small), measures.TECHNICAL_FACTORS)["resolution"] < 0.7


def test_noise_estimate_tracks_added_noise_and_ignores_edges():
    original = np.asarray(Image.open(astronaut_photo()).convert("RGB"), dtype=np.float64)  # 512 px: no downscale
    assert measures.image_statistics(original.astype(np.uint8)).noise_sigma < 1.5, "edges must not read as noise"
    for sigma in (6, 12):
        grey_noise = np.random.default_rng(sigma).normal(0.0, sigma, original.shape[:2])[..., None]
        pixels = np.clip(original + grey_noise, 0, 255).astype(np.uint8)
        assert measures.image_statistics(pixels).noise_sigma == pytest.approx(sigma, rel=0.15)


def test_aesthetic_proxy_keeps_clean_photos_above_the_gate_and_flat_ones_below(photos):
    clean = measures.aesthetic_proxy(np.asarray(photos["astronaut"]))
    assert 6.5 <= clean <= 8.0
    flat = ImageEnhance.Contrast(photos["astronaut"]).enhance(0.4)
    dark = ImageEnhance.Brightness(photos["astronaut"]).enhance(0.3)
    for image in (flat, dark):
        score = measures.aesthetic_proxy(np.asarray(image))
        assert 1.0 <= score < 6.5


def test_statistics_refuse_non_rgb_input():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        measures.image_statistics(np.zeros((20, 20), dtype=np.uint8))


# ------------------------------------------------------------------------------ calibration


def test_calibrations_put_one_visible_flaw_on_the_default_thresholds():
    assert float(measures.calibrate(measures.CLASSICAL_TECHNICAL, measures.FLAW_FACTOR)) == pytest.approx(70.0)
    assert float(measures.calibrate(measures.AESTHETIC_PROXY, measures.FLAW_FACTOR)) == pytest.approx(6.5)
    assert float(measures.calibrate(measures.AESTHETIC_PROXY, 1.0)) == pytest.approx(8.0)
    # the model backends' own scales are the thresholds' scales: only clipped
    assert measures.calibrate(measures.LAION_AESTHETIC, [0.3, 6.5, 11.2]).tolist() == [1.0, 6.5, 10.0]
    assert measures.calibrate(measures.MUSIQ_KONIQ, [-2.0, 70.0, 104.0]).tolist() == [0.0, 70.0, 100.0]


@pytest.mark.parametrize("backend", sorted(measures.CALIBRATIONS))
def test_calibrations_are_monotonic_and_land_in_the_score_range(backend):
    raw = np.linspace(-5, 120, 400)
    mapped = measures.calibrate(backend, raw)
    assert np.all(np.diff(mapped) >= 0)
    low, high = quality.SCORE_RANGES[quality.AESTHETIC if mapped.max() <= 10 else quality.TECHNICAL]
    assert mapped.min() >= low and mapped.max() <= high


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(KeyError, match="classical-technical-v1"):
        measures.calibrate("mystery", 1.0)


def test_composite_formula():
    value = quality.composite_score([10.0, 1.0, 5.5], [100.0, 0.0, 50.0], [1.0, np.nan, 0.5])
    assert value.tolist() == pytest.approx([1.0, 0.0, 0.4 * 0.5 + 0.3 * 0.5 + 0.3 * 0.5])


# ------------------------------------------------------------------------------ gate

DEFAULT = Thresholds()


@pytest.mark.parametrize(
    ("aesthetic", "technical", "face", "reason"),
    [
        (7.0, 80.0, 0.9, None),
        (6.5, 70.0, 0.7, None),  # meeting a threshold passes
        (7.0, 80.0, None, "no_face"),
        (2.0, 10.0, None, "no_face"),  # no face comes first of all
        (2.0, 10.0, 0.2, "face<0.7"),
        (2.0, 10.0, 0.95, "technical<70"),
        (6.49, 69.99, 0.9, "technical<70"),
        (6.49, 99.0, 0.9, "aesthetic<6.5"),
        (math.nan, 80.0, 0.9, "unreadable"),
    ],
)
def test_first_failed_gate_in_spec_order(aesthetic, technical, face, reason):
    assert quality.first_failed_gate(aesthetic, technical, face, DEFAULT) == reason


def test_reasons_name_the_queens_own_thresholds_as_written():
    config = GenerationConfig(aesthetic_threshold=7, technical_threshold=65.5, face_match_threshold=0.75)
    thresholds = Thresholds.from_generation_config(config)
    assert quality.first_failed_gate(9.0, 90.0, 0.74, thresholds) == "face<0.75"
    assert quality.first_failed_gate(9.0, 65.4, 0.8, thresholds) == "technical<65.5"
    assert quality.first_failed_gate(6.9, 90.0, 0.8, thresholds) == "aesthetic<7"


def frame_of(rows: list[tuple[str, float, float, float | None]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["image_id", quality.AESTHETIC, quality.TECHNICAL, quality.FACE_MATCH])
    frame[quality.FACE_MATCH] = frame[quality.FACE_MATCH].astype(float)
    frame[quality.COMPOSITE] = quality.composite_score(frame[quality.AESTHETIC], frame[quality.TECHNICAL], frame[quality.FACE_MATCH])
    return frame


def orthogonal(n: int, dim: int = 8) -> np.ndarray:
    return np.eye(dim, dtype=np.float32)[:n]


def test_manual_overrides_win_and_are_recorded_as_manual():
    frame = frame_of([("a", 7.0, 90.0, 0.9), ("b", 7.0, 40.0, 0.9), ("c", 7.0, 90.0, 0.9)])
    overrides = {
        "b": Override("b", "approve", "maria"),
        "c": Override("c", "reject", "li", "wrong outfit"),
        "zz": Override("zz", "approve", "maria"),
    }
    decisions = quality.decide(frame, orthogonal(3), DEFAULT, 0.95, overrides=overrides)
    assert decisions.approved == [True, True, False]
    assert decisions.approval_method == ["auto", "manual", "manual"]
    assert decisions.rejection_reason == [None, None, "manual: wrong outfit"]
    assert decisions.decided_by == [None, "maria", "li"]
    assert decisions.unknown_overrides == ["zz"]


# ------------------------------------------------------------------------------ overrides file


def test_overrides_file_parses(tmp_path):
    path = tmp_path / "nova-sterling.yaml"
    path.write_text("img-1: {decision: approve, by: maria}\nimg-2:\n  decision: reject\n  by: li\n  reason: hands\n")
    overrides = quality.load_overrides(path)
    assert overrides == {
        "img-1": Override("img-1", "approve", "maria", None),
        "img-2": Override("img-2", "reject", "li", "hands"),
    }
    assert quality.load_overrides(tmp_path / "missing.yaml") == {}
    path.write_text("")
    assert quality.load_overrides(path) == {}


@pytest.mark.parametrize(
    ("text", "image_id", "rule"),
    [
        ("img-1: {decision: maybe, by: maria}", "img-1", "decision must be one of approve, reject"),
        ("img-1: {decision: approve}", "img-1", "by is required"),
        ("img-1: {decision: approve, by: maria, when: today}", "img-1", "unknown field"),
        ("img-1: approve", "img-1", "must be a mapping"),
        ("- img-1", None, "must map image ids to decisions"),
        ("img-1: {decision: approve, by: [maria", None, "is not valid YAML at line 1"),
    ],
)
def test_bad_overrides_name_the_file_the_image_and_the_rule(tmp_path, text, image_id, rule):
    path = tmp_path / "overrides.yaml"
    path.write_text(text)
    with pytest.raises(OverrideError) as error:
        quality.load_overrides(path)
    message = str(error.value)
    assert str(path) in message and rule in message
    assert error.value.image_id == image_id
    if image_id:
        assert f": {image_id}: " in message


# ------------------------------------------------------------------------------ near-duplicates


def test_an_image_and_its_one_pixel_shift_keep_only_the_better_one(photos):
    original = photos["astronaut"]
    images = [original, shifted(original), ImageOps.mirror(original)]
    embeddings = np.stack([measures.tiny_image_embedding(np.asarray(i)) for i in images])
    # the shifted copy has the better composite here, so it is the one kept
    frame = frame_of([("orig", 7.0, 90.0, 0.90), ("shift", 7.0, 90.0, 0.95), ("mirror", 7.0, 90.0, 0.9)])
    decisions = quality.decide(frame, embeddings, DEFAULT, 0.95)
    assert decisions.approved == [False, True, True]
    assert decisions.rejection_reason == ["near_duplicate", None, None]
    assert decisions.near_duplicate_of == ["shift", None, None]


def test_near_duplicates_keep_the_best_approvable_image_and_respect_earlier_nights():
    vectors = np.array([[1, 0, 0], [0.99, 0.14, 0], [0.98, 0.2, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    frame = frame_of(
        [
            ("best-but-blurry", 9.0, 40.0, 0.99),  # fails technical: keeps nothing
            ("good", 7.0, 90.0, 0.9),
            ("good-copy", 7.0, 85.0, 0.8),
            ("unique", 7.0, 90.0, 0.9),
            ("seen-before", 7.0, 90.0, 0.9),
        ]
    )
    prior = np.array([[0, 0.1, 0.995]], dtype=np.float32)
    decisions = quality.decide(frame, vectors, DEFAULT, 0.95, prior_embeddings=prior, prior_ids=["last-week"])
    assert decisions.rejection_reason == ["technical<70", None, "near_duplicate", None, "near_duplicate"]
    assert decisions.near_duplicate_of == [None, None, "good", None, "last-week"]


def test_greedy_grouping_does_not_chain():
    angle = np.deg2rad([0, 15, 30])  # neighbours at cos 0.966, the ends at cos 0.866
    vectors = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    matches = quality.mark_near_duplicates(vectors, [3, 2, 1], [True] * 3, ["a", "b", "c"], 0.95)
    assert [(m.index, m.of) for m in matches] == [(1, "a")]


# ------------------------------------------------------------------------------ report


@pytest.fixture
def night_scores() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    reasons = ["no_face", "face<0.7", "technical<70", "aesthetic<6.5", "near_duplicate"]
    for queen, n in (("ada-marlowe", 9), ("nova-sterling", 14)):
        for i in range(n):
            approved = bool(rng.random() < 0.6)
            no_face = not approved and i % 5 == 0
            rows.append(
                {
                    "queen": queen,
                    "image_id": f"{queen}-{i}",
                    quality.AESTHETIC: rng.uniform(1, 10),
                    quality.TECHNICAL: rng.uniform(0, 100),
                    quality.FACE_MATCH: np.nan if no_face else rng.uniform(0, 1),
                    quality.COMPOSITE: rng.uniform(0, 1),
                    "approved": approved,
                    "rejection_reason": None if approved else ("no_face" if no_face else reasons[1 + i % 4]),
                }
            )
    return pd.DataFrame(rows)


def test_report_matches_an_independent_pandas_computation(night_scores):
    summary = quality_report.quality_summary(night_scores)
    assert list(summary) == ["ada-marlowe", "nova-sterling", "overall"]
    groups = {**dict(tuple(night_scores.groupby("queen"))), "overall": night_scores}
    for name, frame in groups.items():
        got = summary[name]
        assert got["generated"] == len(frame)
        assert got["approved"] == frame["approved"].sum()
        assert got["rejected"] == (~frame["approved"]).sum()
        assert got["approval_rate"] == pytest.approx(frame["approved"].mean())
        expected_reasons = frame.loc[~frame["approved"], "rejection_reason"].value_counts().to_dict()
        assert got["rejection_reasons"] == expected_reasons
        for column in quality.SCORE_COLUMNS:
            values = frame[column].dropna()
            expected = values.describe(percentiles=[0.1, 0.5, 0.9])
            stats = got["scores"][column]
            assert stats["count"] == len(values)
            for name_, key in [("min", "min"), ("max", "max"), ("mean", "mean"), ("std", "std"),
                               ("p10", "10%"), ("p50", "50%"), ("p90", "90%")]:
                assert stats[name_] == pytest.approx(expected[key]), (name, column, name_)


def test_report_of_a_single_image_has_no_std():
    frame = frame_of([("a", 7.0, 90.0, 0.9)]).assign(queen="q", approved=True, rejection_reason=None)
    stats = quality_report.quality_summary(frame)["q"]["scores"][quality.AESTHETIC]
    assert stats["count"] == 1 and stats["std"] is None and stats["p50"] == 7.0


# ------------------------------------------------------------------------------ the calibration table


def measurement_rows() -> list[dict[str, object]]:
    """The statistics behind the anchors, for every sample photo and edit."""
    from skimage import data

    sources = {
        "astronaut": photo(astronaut_photo()),
        "grace_hopper": photo(grace_hopper_photo()),
        "coffee": Image.fromarray(data.coffee()),
        "chelsea": Image.fromarray(data.chelsea()),
        "rocket": Image.fromarray(data.rocket()),
    }
    rows = []
    for name, image in sources.items():
        scale = SIZE / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        edits = {
            "none": image,
            "blur 1 px": image.filter(ImageFilter.GaussianBlur(1)),
            **degraded(image),
            "noise sigma 5": noisy(image, 5),
            "brightness 1.3": ImageEnhance.Brightness(image).enhance(1.3),
            "brightness 0.4": ImageEnhance.Brightness(image).enhance(0.4),
        }
        for edit, edited in edits.items():
            pixels = np.asarray(edited)
            stats = measures.image_statistics(pixels)
            rows.append(
                {
                    "photo": name,
                    "edit": edit,
                    "sharpness": round(stats.sharpness, 1),
                    "noise": round(stats.noise_sigma, 2),
                    "highlights": round(stats.highlights, 3),
                    "shadows": round(stats.shadows, 3),
                    "mean": round(stats.mean_luminance, 2),
                    "range": round(stats.tonal_range, 2),
                    "colour": round(stats.colourfulness, 1),
                    "technical": round(measures.technical_quality(pixels), 1),
                    "aesthetic proxy": round(measures.aesthetic_proxy(pixels), 2),
                }
            )
    return rows


if __name__ == "__main__":
    print(pd.DataFrame(measurement_rows()).to_string(index=False))
