"""Build a model: eager reference -> TorchScript (trace + freeze) -> parity gate -> .mar archive.

A build whose inputs (model folder, handlers, this file, package versions) are unchanged since the
last one is skipped; any change rebuilds. Every step prints as it goes, and the build fails loudly
when the exported model drifts from the eager one past the model's tolerance.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

import models
from models import ModelSpec, Tolerance
from serving.paths import BUILD_DIR, MODEL_STORE, ROOT

HANDLERS_DIR = ROOT / "handlers"
BUILD_INFO = "build-info.json"
TARGET = "torchscript"
PRECISION = "fp32"


class ParityError(RuntimeError):
    pass


def say(name: str, message: str) -> None:
    print(f"[{name}] {message}", flush=True)


def source_files(spec: ModelSpec) -> list[Path]:
    """Every file whose content decides what the build produces."""
    folders = [spec.folder, HANDLERS_DIR]
    files = [p for folder in folders for p in folder.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    files += [models.MODELS_DIR / "__init__.py", models.MODELS_DIR / "photos.py", Path(__file__)]
    return sorted(files)


def inputs_digest(spec: ModelSpec) -> str:
    digest = hashlib.sha256()
    for path in source_files(spec):
        digest.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).encode())
        digest.update(path.read_bytes())
    for package in ("torch", "torch-model-archiver", *spec.source_packages):
        digest.update(f"{package}=={metadata.version(package)}".encode())
    return digest.hexdigest()


def trace(eager: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    with torch.no_grad():
        traced = torch.jit.trace(eager, example, check_trace=False)
        return torch.jit.freeze(traced.eval())


def check_parity(name: str, eager: torch.nn.Module, exported: torch.nn.Module,
                 batches: list[tuple[torch.Tensor, ...]], tolerance: Tolerance) -> dict:
    """Compares the exported model with the eager one on real inputs; raises past tolerance."""
    max_diff, agree, total = 0.0, 0, 0
    with torch.no_grad():
        for i, batch in enumerate(batches, 1):
            reference, output = eager(*batch).float(), exported(*batch).float()
            max_diff = max(max_diff, float((reference - output).abs().max()))
            agree += int((reference.argmax(-1) == output.argmax(-1)).sum())
            total += len(reference)
            say(name, f"  parity batch {i}/{len(batches)}: {len(reference)} inputs, "
                      f"max |diff| so far {max_diff:.2e}")
    result = {"inputs": total, "max_abs_diff": max_diff, "tolerance_max_abs_diff": tolerance.max_abs_diff}
    failures = []
    if max_diff > tolerance.max_abs_diff:
        failures.append(f"max |diff| {max_diff:.3e} > {tolerance.max_abs_diff:.1e}")
    if tolerance.min_top1_agreement is not None:
        result["top1_agreement"] = agree / total
        result["tolerance_min_top1_agreement"] = tolerance.min_top1_agreement
        if agree / total < tolerance.min_top1_agreement:
            failures.append(f"top-1 agreement {agree / total:.4f} < {tolerance.min_top1_agreement}")
    summary = ", ".join(f"{k} {v:.3e}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in result.items())
    if failures:
        raise ParityError(f"{name}: exported model fails parity: {'; '.join(failures)}")
    say(name, f"  parity passed: {summary}")
    return result


def archive(spec: ModelSpec, model_file: Path, info: dict, work_dir: Path, model_store: Path) -> Path:
    """Packs model, handler package, extra files and build info into model_store/NAME.mar."""
    stage = work_dir / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "handlers").mkdir(parents=True)
    for module in HANDLERS_DIR.glob("*.py"):
        shutil.copy2(module, stage / "handlers" / module.name)
    for name, source in spec.extra_files().items():
        shutil.copy2(source, stage / name)
    (stage / BUILD_INFO).write_text(json.dumps(info, indent=2))

    out = work_dir / "archive"
    shutil.rmtree(out, ignore_errors=True)
    (work_dir / "tmp").mkdir(exist_ok=True)
    out.mkdir()
    command = [
        str(Path(sys.executable).parent / "torch-model-archiver"),
        "--model-name", spec.name, "--version", "1.0",
        "--serialized-file", str(model_file),
        "--handler", str(HANDLERS_DIR / f"{spec.handler}.py"),
        "--extra-files", str(stage),
        "--config-file", str(spec.config_file),
        "--export-path", str(out), "--force",
    ]
    # The archiver stages files in $TMPDIR/NAME: give each build its own so builds never collide.
    subprocess.run(command, check=True, env={**os.environ, "TMPDIR": str(work_dir / "tmp")})
    model_store.mkdir(parents=True, exist_ok=True)
    target = model_store / f"{spec.name}.mar"
    os.replace(out / f"{spec.name}.mar", target)  # atomic: a running server never sees half a file
    return target


def build(name: str, force: bool = False, model_store: Path = MODEL_STORE,
          work_root: Path = BUILD_DIR) -> dict:
    """Builds model_store/NAME.mar unless it is up to date; returns its build info."""
    spec = models.load(name)
    work_dir = work_root / name
    info_file = work_dir / BUILD_INFO
    mar = model_store / f"{name}.mar"
    digest = inputs_digest(spec)
    if not force and mar.exists() and info_file.exists():
        info = json.loads(info_file.read_text())
        if info.get("inputs_sha256") == digest:
            say(name, f"up to date: {mar}")
            return info

    work_dir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    started = step = time.perf_counter()

    def lap(label: str) -> None:
        nonlocal step
        now = time.perf_counter()
        seconds[label] = round(now - step, 2)
        step = now

    say(name, "1/4 loading the eager model")
    eager = spec.load_eager(work_dir).eval()
    lap("eager")
    say(name, f"2/4 tracing to TorchScript and freezing ({seconds['eager']:.1f}s so far)")
    exported = trace(eager, spec.example_inputs())
    lap("trace")
    say(name, "3/4 checking the exported model against the eager one on real inputs")
    parity = check_parity(name, eager, exported, spec.parity_inputs(), spec.tolerance)
    evaluation = spec.evaluate(exported) if spec.evaluate else {}
    lap("parity")
    model_file = work_dir / "model.pt"
    torch.jit.save(exported, str(model_file))
    info = {
        "name": name,
        "target": TARGET,
        "precision": PRECISION,
        "torch": torch.__version__,
        "arch": platform.machine(),
        "inputs_sha256": digest,
        "parity": parity,
        "evaluation": evaluation,
    }
    say(name, "4/4 archiving with torch-model-archiver")
    archive(spec, model_file, info, work_dir, model_store)
    lap("archive")
    info["seconds"] = {**seconds, "total": round(time.perf_counter() - started, 2)}
    info_file.write_text(json.dumps(info, indent=2))
    say(name, f"built {mar} in {info['seconds']['total']:.1f}s")
    return info


def build_all(names: list[str] | None = None, force: bool = False,
              model_store: Path = MODEL_STORE) -> dict[str, dict]:
    return {name: build(name, force, model_store) for name in (names or models.NAMES)}
