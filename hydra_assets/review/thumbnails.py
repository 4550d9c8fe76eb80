"""Grid thumbnails: made once with Pillow, cached on disk under a key of the file's identity.

The key is the resolved path, its size and modification time and the thumbnail size, so a
re-generated image never shows a stale thumbnail; the cache is disposable (an emptyDir on the
cluster).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

from PIL import Image, ImageDraw

from hydra_assets.domain.contact_sheets import thumbnail_of
from hydra_assets.domain.storage import atomic_write_bytes

JPEG_QUALITY = 85


class ThumbnailCache:
    def __init__(self, folder: Path, size_px: int):
        self.folder = Path(folder)
        self.size_px = size_px

    def key(self, path: Path) -> str:
        stat = path.stat()
        identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.size_px}"
        return hashlib.sha256(identity.encode()).hexdigest()

    def get(self, path: Path) -> tuple[bytes, bool]:
        """(JPEG bytes, whether it came from the cache); a file that cannot be decoded gets a placeholder."""
        key = self.key(path)
        cached = self.folder / key[:2] / f"{key}.jpg"
        if cached.is_file():
            return cached.read_bytes(), True
        data = self.render(path)
        if data is None:
            return placeholder(self.size_px, "cannot be decoded"), False
        atomic_write_bytes(cached, data)
        return data, False

    def render(self, path: Path) -> bytes | None:
        """The contact sheets' thumbnail (upright, RGB as the gate reads it) as JPEG; None when undecodable."""
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a near-bomb is refused too
            thumbnail = thumbnail_of(path, self.size_px)
        if thumbnail is None:
            return None
        buffer = io.BytesIO()
        thumbnail.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()


def placeholder(size_px: int, text: str) -> bytes:
    image = Image.new("RGB", (size_px, size_px), (60, 60, 64))
    draw = ImageDraw.Draw(image)
    draw.line((0, 0, size_px, size_px), fill=(120, 60, 60), width=3)
    draw.line((0, size_px, size_px, 0), fill=(120, 60, 60), width=3)
    draw.text((12, size_px // 2 - 6), text, fill=(235, 235, 235))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
