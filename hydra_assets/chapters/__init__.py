"""Chapters: a markdown script in; scene images, voiced dialogue and the game's chapter folder out."""

from hydra_assets.chapters.bundle import chapter_bundle
from hydra_assets.chapters.dialogue import chapter_dialogue
from hydra_assets.chapters.images import scene_images
from hydra_assets.chapters.script import chapter_script

CHAPTER_ASSETS = [chapter_script, chapter_dialogue, scene_images, chapter_bundle]
CHAPTER_ASSET_NAMES = tuple(a.key.to_user_string() for a in CHAPTER_ASSETS)
