#!/usr/bin/env bash
# pyiqa for the Musiq technical scorer, into the Python given as $1 (default: python).
#
# --no-deps: pyiqa declares training and dataset tooling that MUSIQ never imports; everything
# MUSIQ imports (torch, torchvision, numpy, Pillow...) the project already installs.
# The wheel also puts top-level folders (tests, build, options, docs, ResultsCalibra) into
# site-packages, where `tests` would shadow a project's own tests package: they are removed.
set -euo pipefail
PYTHON=${1:-python}
PYIQA_SPEC=${PYIQA_SPEC:-pyiqa==0.1.16}

"$PYTHON" -m pip install --quiet --no-deps "$PYIQA_SPEC"
"$PYTHON" - <<'PY'
import importlib.metadata
import pathlib

dist = importlib.metadata.distribution("pyiqa")
stray = [f for f in dist.files or [] if f.parts[0] != "pyiqa" and not f.parts[0].endswith(".dist-info")]
folders = set()
for entry in stray:
    path = pathlib.Path(dist.locate_file(entry))
    path.unlink(missing_ok=True)
    folders.update(path.parents[: len(entry.parts) - 1])
for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
print(f"pyiqa {dist.version} installed for Musiq; {len(stray)} stray files removed")
PY
