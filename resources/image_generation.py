"""Moved to the package resources.image (one module per backend); kept so older imports work."""

from resources.image import *  # noqa: F403
from resources.image import __all__  # noqa: F401
