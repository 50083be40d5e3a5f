"""Build a model: eager reference -> each candidate (target x precision) -> parity gate -> timing ->
the fastest that passes goes into a .mar archive, with the choice and every candidate's figures.

A named target (and/or precision) is built alone, and its failure fails the build; without one,
candidates that cannot be built here or fail their gate are reported and skipped, never silently.
A build whose inputs are unchanged since the last one is skipped; any change rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch
import yaml

import models
from handlers import artifacts
from handlers.base import BUILD_INFO
from models import ModelSpec
from serving import sources, targets
from serving.paths import BUILD_DIR, MODEL_STORE, ROOT
from serving.targets import NeuronOptions, TargetUnavailable

HANDLERS_DIR = ROOT / "handlers"

# The parity gates. fp32 must match the eager model to a relative error (max |diff| / max |eager|)
# of 1e-4. Lower precisions change the numbers by design: a classifier must keep its top-1 answer on
# 99% of real inputs; an embedder must keep each embedding's direction (cosine >= 0.99) and each
# input's nearest neighbour among the others on 99% of them (where the eager model's choice is
# not a near-tie).
FP32_MAX_RELATIVE_ERROR = 1e-4
LOW_PRECISION_MIN_AGREEMENT = 0.99
LOW_PRECISION_MIN_COSINE = 0.99


class ParityError(RuntimeError):
    pass


class BuildError(RuntimeError):
    pass


def say(name: str, message: str) -> None:
    print(f"[{name}] {message}", flush=True)


def source_files(spec: ModelSpec) -> list[Path]:
    """Every file whose content decides what the build produces."""
    folders = [spec.folder, HANDLERS_DIR]
    files = [p for folder in folders for p in folder.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    files += [models.MODELS_DIR / "__init__.py", Path(__file__), Path(targets.__file__),
              Path(sources.__file__)]
    return sorted(files)


def inputs_digest(spec: ModelSpec, request: dict) -> str:
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode())
    for path in source_files(spec):
        digest.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).encode())
        digest.update(path.read_bytes())
    for package in ("torch", "torch-model-archiver", *spec.source_packages):
        digest.update(f"{package}=={metadata.version(package)}".encode())
    return digest.hexdigest()


# -- parity --------------------------------------------------------------------------------------

NEIGHBOUR_MARGIN = 0.01  # cosine by which an input's nearest neighbour must beat the runner-up


def neighbour_agreement(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Share of inputs whose nearest other input (by cosine) stays the same, among those where the
    eager model decides it by a margin; near-ties are a coin toss at any precision."""
    def similarities(e):
        e = torch.nn.functional.normalize(e, dim=-1)
        s = e @ e.T
        s.fill_diagonal_(-float("inf"))
        return s

    ref, out = similarities(reference), similarities(output)
    top2 = ref.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) >= NEIGHBOUR_MARGIN
    if not decided.any():
        return 1.0
    return float((ref.argmax(1) == out.argmax(1))[decided].float().mean())


def check_parity(name: str, gate: str, precision: str, eager: torch.nn.Module, exported,
                 batches: list[tuple[torch.Tensor, ...]]) -> dict:
    """Compares an exported model with the eager one on real inputs; raises ParityError when the
    gate for its precision fails. `gate` (the model kind's): classifier, embedder or tensor."""
    references, outputs = [], []
    with torch.inference_mode():
        for batch in batches:
            references.append(eager(*batch).float())
            outputs.append(exported(*batch).float().cpu())
    reference, output = torch.cat(references), torch.cat(outputs)
    result = {"inputs": len(reference),
              "relative_error": float((reference - output).abs().max() / reference.abs().max())}
    if gate == "classifier":
        result["top1_agreement"] = float((reference.argmax(-1) == output.argmax(-1)).float().mean())
    else:
        cosine = torch.nn.functional.cosine_similarity(reference, output, dim=-1)
        result["min_cosine"] = float(cosine.min())
        if gate == "embedder":
            result["neighbour_agreement"] = neighbour_agreement(reference, output)

    if precision == "fp32":
        result["gate"] = f"relative error <= {FP32_MAX_RELATIVE_ERROR:g}"
        passed = result["relative_error"] <= FP32_MAX_RELATIVE_ERROR
    elif gate == "classifier":
        result["gate"] = f"top-1 agreement >= {LOW_PRECISION_MIN_AGREEMENT:g}"
        passed = result["top1_agreement"] >= LOW_PRECISION_MIN_AGREEMENT
    elif gate == "tensor":
        result["gate"] = f"min cosine >= {LOW_PRECISION_MIN_COSINE:g}"
        passed = result["min_cosine"] >= LOW_PRECISION_MIN_COSINE
    else:
        result["gate"] = (f"min cosine >= {LOW_PRECISION_MIN_COSINE:g}, nearest-neighbour "
                          f"agreement >= {LOW_PRECISION_MIN_AGREEMENT:g}")
        passed = (result["min_cosine"] >= LOW_PRECISION_MIN_COSINE and
                  result["neighbour_agreement"] >= LOW_PRECISION_MIN_AGREEMENT)
    figures = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in result.items() if k != "gate")
    if not passed:
        raise ParityError(f"fails its gate ({result['gate']}): {figures}")
    return result


def paired_speedup(reference, candidate, inputs: tuple, rounds: int = 3,
                   block_seconds: float = 0.4) -> tuple[float, float]:
    """(candidate's median seconds per call, its speedup over the reference). Both run in this
    process, in alternating blocks (A B A B ...), and the speedup is the median of the blocks'
    ratios: on a shared VM, medians taken in different processes minutes apart differ by more than
    the effects measured here, and call-by-call interleaving makes each evict the other's caches."""
    def block(model, runs: int) -> list[float]:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            model(*inputs)
            times.append(time.perf_counter() - started)
        return times

    with torch.inference_mode():
        warm = {m: min(block(m, 3)) for m in (reference, candidate)}
        runs = {m: max(3, min(200, int(block_seconds / max(t, 1e-6)))) for m, t in warm.items()}
        ratios, candidate_times = [], []
        for _ in range(rounds):
            a = statistics.median(block(reference, runs[reference]))
            b_times = block(candidate, runs[candidate])
            candidate_times += b_times
            ratios.append(a / statistics.median(b_times))
    return statistics.median(candidate_times), statistics.median(ratios)


def call_times(model, inputs: tuple, min_runs: int = 10, budget: float = 1.0,
               max_runs: int = 1000) -> list[float]:
    """Seconds per call, after two warm-up calls: at least min_runs, more while under budget."""
    with torch.inference_mode():
        for _ in range(2):
            model(*inputs)
        times: list[float] = []
        while len(times) < min_runs or (sum(times) < budget and len(times) < max_runs):
            started = time.perf_counter()
            model(*inputs)
            times.append(time.perf_counter() - started)
    return times


def median_seconds(model, inputs: tuple) -> float:
    return statistics.median(call_times(model, inputs))


# Candidates within this factor of the fastest count as equally fast (timings on a shared machine
# vary about that much); among them the build prefers fp32 (exact answers), then the target that is
# most ahead-of-time. So a lower precision ships only when it is clearly faster, and a rebuild
# does not flip between near-equal candidates.
EQUALLY_FAST = 1.10
PREFERRED_PRECISIONS = ("fp32", "bf16", "fp16")
PREFERRED_TARGETS = ("neuron", "inductor", "torchscript", "eager")


def choose(passing: list[dict]) -> dict:
    """By speedup over eager (each measured against eager in the same process, so candidates
    measured at different moments compare fairly), with the preferences above among equals."""
    best = max(r["speedup"] for r in passing)
    equals = [r for r in passing if r["speedup"] * EQUALLY_FAST >= best]
    return min(equals, key=lambda r: (PREFERRED_PRECISIONS.index(r["precision"]),
                                      PREFERRED_TARGETS.index(r["target"])))


# -- archive -------------------------------------------------------------------------------------

def serving_config(spec: ModelSpec, target: str, neuron: NeuronOptions | None) -> dict:
    config = yaml.safe_load(spec.config_file.read_text())
    if target == "neuron":
        config = targets.neuron_serving_config(config, neuron or NeuronOptions(),
                                               text=spec.text)
    return config


def archive(spec: ModelSpec, artifact: Path, config: dict, info: dict, work_dir: Path,
            model_store: Path, archive_name: str) -> Path:
    """Packs artifact, handler package, extra files, model-config and build info into a .mar."""
    stage = work_dir / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "handlers").mkdir(parents=True)
    for module in HANDLERS_DIR.glob("*.py"):
        shutil.copy2(module, stage / "handlers" / module.name)
    sources.stage_resources(spec, stage)
    shutil.copy2(spec.folder / models.CARD, stage / models.CARD)
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
    os.replace(out / f"{archive_name}.mar", target)  # atomic: a running server never sees half a file
    return target


# -- build ---------------------------------------------------------------------------------------

def candidates(spec: ModelSpec, target: str | None, precision: str | None,
               device: str) -> list[tuple[str, str]]:
    """(target, precision) pairs to try. Neuron casts inside its compiler (--auto-cast), so it is
    traced in fp32 unless a precision is named."""
    chosen_targets = [target] if target else list(spec.targets)
    plan = []
    for t in chosen_targets:
        precisions = [precision] if precision else \
            ["fp32"] if t == "neuron" else targets.candidate_precisions(device)
        plan += [(t, p) for p in precisions]
    return plan


def build(name: str, force: bool = False, model_store: Path = MODEL_STORE,
          work_root: Path = BUILD_DIR, target: str | None = None, precision: str | None = None,
          device: str = "cpu", neuron: NeuronOptions | None = None,
          archive_name: str | None = None) -> dict:
    """Builds model_store/<archive_name or NAME>.mar unless it is up to date; returns its info."""
    spec = models.load(name)
    if target:
        try:
            targets.check_available(target, device)
        except TargetUnavailable as e:
            raise BuildError(f"{name}: {target}: {e}") from e
    archive_name = archive_name or name
    work_dir = work_root / archive_name
    info_file = work_dir / BUILD_INFO
    mar = model_store / f"{archive_name}.mar"
    plan = candidates(spec, target, precision, device)
    request = {"candidates": plan, "device": device, "arch": platform.machine(),
               "neuron": asdict(neuron) if neuron else None}
    digest = inputs_digest(spec, request)
    if not force and mar.exists() and info_file.exists():
        info = json.loads(info_file.read_text())
        if info.get("inputs_sha256") == digest:
            say(archive_name, f"up to date: {mar} ({info['target']}, {info['precision']})")
            return info

    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    say(archive_name, f"loading the eager model; candidates: "
                      f"{', '.join(f'{t}/{p}' for t, p in plan)}")
    eager = spec.load_eager(work_dir).eval()
    config = yaml.safe_load(spec.config_file.read_text())
    batch = int(config.get("batchSize", 1))
    timing_inputs = spec.example_inputs(batch)
    eager_seconds = median_seconds(eager, timing_inputs)
    say(archive_name, f"eager: {eager_seconds * 1000:.1f} ms per batch of {batch}")
    parity_batches = spec.parity_inputs()
    to_export = spec.prepare_export(eager) if spec.prepare_export else eager

    results = []
    for t, p in plan:
        label = f"{t}/{p}"
        entry = {"target": t, "precision": p}
        step = time.perf_counter()
        try:
            say(archive_name, f"{label}: exporting")
            example = spec.example_inputs(2)
            if t == "neuron":  # shapes are fixed at trace time
                options = neuron or NeuronOptions()
                fixed_batch = options.batch_size or batch
                fixed_length = options.sequence_length if spec.text else None
                example = spec.example_inputs(fixed_batch)
                if fixed_length:
                    example = targets.fit_sequence(example, spec.dims, fixed_length)
            artifact = targets.export(t, to_export, p, example, spec.dims, spec.dim_ranges,
                                      work_dir / f"{t}-{p}", device, neuron, spec.channels_last)
            entry["export_seconds"] = round(time.perf_counter() - step, 2)
            entry["artifact"] = str(artifact)
            trial_info = {"target": t, "precision": p, "device": device, "arch": platform.machine(),
                          "torch": torch.__version__}
            exported = artifacts.load(artifact.parent, artifact.name, trial_info, torch.device(device))
            if t == "neuron" and not (neuron or NeuronOptions()).dynamic_batch:
                exported = targets.FixedShape(exported, spec.dims, fixed_batch, fixed_length)
            entry["parity"] = check_parity(archive_name, spec.gate, p, eager, exported, parity_batches)
            seconds, speedup = paired_speedup(eager, exported, timing_inputs)
            entry["batch_ms"] = round(seconds * 1000, 2)
            entry["speedup"] = round(speedup, 2)
            entry["status"] = "passed"
            say(archive_name, f"{label}: passed its gate ({entry['parity']['gate']}); "
                              f"{entry['batch_ms']:.1f} ms per batch of {batch}, "
                              f"{entry['speedup']:.2f}x eager (export {entry['export_seconds']:.1f}s)")
        except (TargetUnavailable, ParityError) as e:
            entry["status"] = "unavailable" if isinstance(e, TargetUnavailable) else "failed parity"
            entry["reason"] = str(e)
            say(archive_name, f"{label}: {entry['status']}: {e}")
            if target and (precision or len(plan) == 1):
                raise BuildError(f"{archive_name}: {label} {entry['status']}: {e}") from e
        results.append(entry)

    passing = [r for r in results if r["status"] == "passed"]
    if not passing:
        raise BuildError(f"{archive_name}: no candidate passed: " +
                         "; ".join(f"{r['target']}/{r['precision']}: {r['reason']}" for r in results))
    chosen = choose(passing)
    skipped = [f"{r['target']}/{r['precision']} ({r['status']})" for r in results
               if r["status"] != "passed"]
    say(archive_name, f"shipping {chosen['target']}/{chosen['precision']}: the fastest of "
                      f"{len(passing)} that passed (within {EQUALLY_FAST - 1:.0%}: fp32 first, "
                      f"then {' > '.join(PREFERRED_TARGETS[1:])})"
                      + (f"; not shipped: {', '.join(skipped)}" if skipped else ""))
    evaluation = {}
    if spec.evaluate:
        shipped = artifacts.load(Path(chosen["artifact"]).parent, Path(chosen["artifact"]).name,
                                 {**chosen, "device": device, "arch": platform.machine(),
                                  "torch": torch.__version__}, torch.device(device))
        evaluation = spec.evaluate(shipped)
    info = {
        "name": archive_name, "model": name,
        "target": chosen["target"], "precision": chosen["precision"], "device": device,
        "torch": torch.__version__, "arch": platform.machine(),
        "inputs_sha256": digest,
        "chosen_because": "named on the command line" if target and precision else
                          f"fastest passing candidate at batch {batch}",
        "eager_batch_ms": round(eager_seconds * 1000, 2), "timing_batch": batch,
        "parity": chosen["parity"], "evaluation": evaluation,
        "candidates": [{k: v for k, v in r.items() if k != "artifact"} for r in results],
    }
    artifact = Path(chosen["artifact"])
    archive(spec, artifact, serving_config(spec, chosen["target"], neuron), info, work_dir,
            model_store, archive_name)
    info["build_seconds"] = round(time.perf_counter() - started, 2)
    info_file.write_text(json.dumps(info, indent=2))
    say(archive_name, f"built {mar} in {info['build_seconds']:.1f}s")
    return info


def build_all(names: list[str] | None = None, force: bool = False,
              model_store: Path = MODEL_STORE, **options) -> dict[str, dict]:
    return {name: build(name, force, model_store, **options) for name in (names or models.NAMES)}
