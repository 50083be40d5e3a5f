"""Archives made broken on purpose, for the fault tests (native and in Docker)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from serving.paths import MODEL_STORE


def write_broken_digits(target: Path) -> Path:
    """digits.mar whole but for its model file, which cannot load: the worker fails at start."""
    with zipfile.ZipFile(MODEL_STORE / "digits.mar") as good, \
            zipfile.ZipFile(target, "w") as broken:
        for item in good.infolist():
            data = good.read(item.filename)
            broken.writestr(item, b"not a model" if item.filename == "model.pt2" else data)
    return target
