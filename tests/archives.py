"""Archives made broken on purpose, for the fault tests (native and in Docker)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from serving.run.paths import MODEL_STORE


def write_broken_digits(target: Path) -> Path:
    """digits.mar whole but for its model file, which cannot load: the worker fails at start.
    The model file is the one the manifest names: model.pt2 or model.pt, by the target the build
    chose on this CPU (an AMD EPYC shipped TorchScript, and a test that broke only model.pt2 got
    a good archive)."""
    with zipfile.ZipFile(MODEL_STORE / "digits.mar") as good, \
            zipfile.ZipFile(target, "w") as broken:
        model_file = json.loads(good.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        assert model_file in good.namelist(), (model_file, good.namelist())
        for item in good.infolist():
            data = good.read(item.filename)
            broken.writestr(item, b"not a model" if item.filename == model_file else data)
    return target
