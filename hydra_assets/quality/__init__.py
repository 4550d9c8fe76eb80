"""The quality gate for each overnight batch: scoring, publishing, the night's report.

``night_scores`` (quality/night_scores.py) runs the night's models once over every queen's images;
``image_scores`` (quality/scoring.py) scores (what night_scores lacks) and gates every image of a queen × night;
``approved_images`` (quality/publishing.py) publishes the decisions as files;
``quality_report`` (quality/report.py) sums a night up for the studio.
"""

from hydra_assets.quality.night_scores import night_scores
from hydra_assets.quality.publishing import approved_images
from hydra_assets.quality.report import quality_report
from hydra_assets.quality.scoring import image_scores, score_batch

QUALITY_ASSETS = [night_scores, image_scores, approved_images, quality_report]

__all__ = ["QUALITY_ASSETS", "approved_images", "image_scores", "night_scores", "quality_report", "score_batch"]
