"""`hydra review`: the morning review of a night's images in a browser.

Submodules by concern: ``config`` (settings), ``data`` (reading storage: nights, queens,
images, validated paths), ``thumbnails`` (Pillow thumbnails, cached), ``decisions``
(writing the overrides file), ``launcher`` (Dagster GraphQL), ``links`` (URLs for asset
metadata, importable without the web stack), ``app`` (FastAPI routes and templates).
"""
