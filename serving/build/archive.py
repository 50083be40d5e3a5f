"""Packing a built artifact into a .mar: torch-model-archiver with the handler package, the model
folder's model.yaml, its handler resources, its serving config and the build's record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import models
from handlers.base import BUILD_INFO
from models import ModelSpec
from models import sources
from serving.run.paths import ROOT

HANDLERS_DIR = ROOT / "handlers"


def archive(spec: ModelSpec, artifact: Path, config: dict, info: dict, work_dir: Path,
            model_store: Path, archive_name: str) -> Path:
    """Packs artifact, handler package, extra files, model-config and build info into a .mar."""
    stage = work_dir / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "handlers").mkdir(parents=True)
    for module in HANDLERS_DIR.glob("*.py"):
        shutil.copy2(module, stage / "handlers" / module.name)
    sources.stage_resources(spec, stage)
    shutil.copy2(spec.folder / models.MODEL_YAML, stage / models.MODEL_YAML)
    (stage / BUILD_INFO).write_text(json.dumps(info, indent=2))
    config_file = work_dir / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    out = work_dir / "archive"
    shutil.rmtree(out, ignore_errors=True)
    (work_dir / "tmp").mkdir(exist_ok=True)
    out.mkdir()
    command = [
        str(Path(sys.executable).parent / "torch-model-archiver"),
        "--model-name", archive_name, "--version", "1.0",
        "--serialized-file", str(artifact),
        "--handler", str(HANDLERS_DIR / f"{spec.handler}.py"),
        "--extra-files", str(stage),
        "--config-file", str(config_file),
        "--export-path", str(out), "--force",
    ]
    # The archiver stages files in $TMPDIR/NAME: give each build its own so builds never collide.
    subprocess.run(command, check=True, env={**os.environ, "TMPDIR": str(work_dir / "tmp")})
    model_store.mkdir(parents=True, exist_ok=True)
    target = model_store / f"{archive_name}.mar"
    # Copied beside the target, then renamed over it: atomic, so a running server never sees half
    # a file, also where model_store is another file system (a volume) than the build folder.
    partial = model_store / f".{archive_name}.mar.partial"
    shutil.copyfile(out / f"{archive_name}.mar", partial)
    os.replace(partial, target)
    return target


def with_config(source: Path, target: Path, settings: dict) -> Path:
    """A copy of the archive `source` at `target` whose model-config.yaml has `settings` merged
    in (top-level keys, and a `handler:` dict merged key by key): the tuner serves each candidate
    configuration from such a copy, without rebuilding the model."""
    import zipfile

    with zipfile.ZipFile(source) as mar:
        config = yaml.safe_load(mar.read("model-config.yaml")) or {}
        for key, value in settings.items():
            if key == "handler":
                config["handler"] = {**(config.get("handler") or {}), **value}
            else:
                config[key] = value
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w") as out:
            for entry in mar.infolist():
                data = (yaml.safe_dump(config, sort_keys=False).encode()
                        if entry.filename == "model-config.yaml" else mar.read(entry.filename))
                out.writestr(entry, data)
    os.replace(partial, target)
    return target


def shipped_settings(name: str) -> dict:
    """The archive's serving settings as a tuner candidate (model-config.yaml)."""
    return serving_settings(models.load(name).config)


def serving_settings(config: dict) -> dict:
    """A model-config's serving settings in the tuner's terms (serving/perf/tune.py KNOBS)."""
    workers = int(config.get("minWorkers") or 1)
    return {"batchSize": int(config.get("batchSize") or 1),
            "maxBatchDelay": int(config.get("maxBatchDelay") or 0),
            "workers": workers,
            "threads": int((config.get("handler") or {}).get("torch_threads") or
                           max(1, (os.cpu_count() or 1) // workers))}
