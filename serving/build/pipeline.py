"""Build a model: plan the candidates (target x precision), try each (export -> parity gate ->
timing), ship the fastest that passed into a .mar archive with the choice and every candidate's
figures. The gate is serving/build/parity.py, the timing serving/build/timing.py, the archive
serving/build/archive.py, each target's exporter serving/build/targets.py.

A named target (and/or precision) is built alone, and its failure fails the build; without one,
candidates that cannot be built here or fail their gate are reported and skipped, never silently.
A build whose inputs are unchanged since the last one is skipped; any change rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch

import models
from handlers import artifacts
from handlers.base import BUILD_INFO
from handlers.cores import CoreShare, available_cores
from models import ModelSpec
from serving.build import archive
from serving.build import parity
from models import sources
from serving.build import targets
from serving.build import timing
from serving.build.parity import ParityError, check_parity  # noqa: F401 - the build's gate, re-exported
from serving.run.paths import BUILD_DIR, MODEL_STORE, ROOT
from serving.build.targets import NeuronOptions, TargetUnavailable


class BuildError(RuntimeError):
    pass


def say(name: str, message: str) -> None:
    print(f"[{name}] {message}", flush=True)


def source_files(spec: ModelSpec) -> list[Path]:
    """Every file whose content decides what the build produces."""
    folders = [spec.folder, archive.HANDLERS_DIR]
    files = [p for folder in folders for p in folder.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    files += [models.MODELS_DIR / "__init__.py"] + \
        [Path(m.__file__) for m in (archive, parity, sources, targets, timing)] + [Path(__file__)]
    return sorted(files)


def inputs_digest(spec: ModelSpec, request: dict) -> str:
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode())
    for path in source_files(spec):
        digest.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).encode())
        digest.update(path.read_bytes())
    for package in ("torch", "torch-model-archiver", *spec.source_packages):
        digest.update(f"{package}=={metadata.version(package)}".encode())
    return digest.hexdigest()


# Candidates within this factor of the fastest count as equally fast (timings on a shared machine
# vary about that much); among them the build prefers fp32 (exact answers), then the target that is
# most ahead-of-time. So a lower precision ships only when it is clearly faster, and a rebuild
# does not flip between near-equal candidates.
EQUALLY_FAST = 1.10
PREFERRED_PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# ONNX Runtime after the torch targets: among equals, one runtime fewer in the worker.
PREFERRED_TARGETS = ("neuron", "inductor", "torchscript", "onnxruntime", "eager")


def noisy(r: dict) -> bool:
    return (r.get("timing_spread") or 1.0) > timing.NOISY_SPREAD


def rankable(r: dict) -> float:
    """The speedup a candidate ranks by: a noisy one's pessimistic reading (its speedup over its
    blocks' spread), so noise alone never makes a candidate win."""
    return r["speedup"] / r["timing_spread"] if noisy(r) else r["speedup"]


def unranked(passing: list[dict]) -> bool:
    """No timing to rank by: untimed (--no-timing), or every timing too noisy to trust."""
    return any(r["speedup"] is None for r in passing) or all(noisy(r) for r in passing)


def choose(passing: list[dict]) -> dict:
    """By speedup over eager (each measured against eager in the same process, so candidates
    measured at different moments compare fairly), with the preferences above among equals; by
    the preferences alone where the build did not time them (--no-timing) or could not time any
    of them steadily (a busy machine)."""
    if unranked(passing):
        return min(passing, key=lambda r: (PREFERRED_PRECISIONS.index(r["precision"]),
                                           PREFERRED_TARGETS.index(r["target"])))
    best = max(rankable(r) for r in passing)
    equals = [r for r in passing if rankable(r) * EQUALLY_FAST >= best]
    return min(equals, key=lambda r: (PREFERRED_PRECISIONS.index(r["precision"]),
                                      PREFERRED_TARGETS.index(r["target"])))


def hold_back_unasked(passed: list[dict], allowed: tuple[str, ...]) -> list[dict]:
    """The passing candidates that may ship. A reduced precision ships only where the user asked
    for it (model.yaml build.precisions, or --precision): passing its gate, it still changes the
    answers (a user's bf16 model was 5% off on one output). The others stay in the build's report,
    marked, with their parity and timing."""
    for r in passed:
        if r["precision"] not in allowed:
            r["status"] = "passed, not asked for"
            r["reason"] = (f"{r['precision']} ships only when asked: build.precisions in "
                           f"model.yaml (now {list(allowed)}) or --precision")
    return [r for r in passed if r["status"] == "passed"]


def serving_config(spec: ModelSpec, target: str, neuron: NeuronOptions | None,
                   device: str = "cpu") -> dict:
    config = dict(spec.config)
    if artifacts.LOADERS[target].fixed_shapes:
        return targets.neuron_serving_config(config, neuron or NeuronOptions(), text=spec.text)
    # TorchServe gives every worker a GPU wherever it finds one unless the archive says cpu
    # (WorkLoadManager at v0.12.0): an archive built for the CPU stays there on a GPU host, and
    # one built for CUDA asks for its GPU. A model folder's own deviceType wins.
    config.setdefault("deviceType", "gpu" if device == "cuda" else "cpu")
    return config



# -- plan ----------------------------------------------------------------------------------------

def candidates(spec: ModelSpec, target: str | None, precision: str | None,
               device: str) -> list[tuple[str, str]]:
    """(target, precision) pairs to try. A target whose compiler picks precisions itself (Neuron's
    --auto-cast) is traced in fp32 unless a precision is named."""
    chosen_targets = [target] if target else list(spec.targets)
    plan = []
    for t in chosen_targets:
        exporter = targets.EXPORTERS[t]
        if precision:
            precisions = [precision]
        elif exporter.compiler_casts:
            precisions = ["fp32"]
        elif exporter.int8 == "own":  # its only reduced precision, on every CPU
            precisions = [p for p in exporter.precisions if device == "cpu" or p != "int8"]
        else:
            precisions = [p for p in targets.candidate_precisions(device)
                          if p in exporter.precisions and (p != "int8" or exporter.int8)]
        plan += [(t, p) for p in precisions]
    return plan


@dataclass
class Reference:
    """What every candidate is measured against: the eager model, on real and timing inputs."""

    eager: torch.nn.Module
    to_export: torch.nn.Module
    batch: int
    timing_inputs: tuple
    parity_batches: list
    threads: int = 1
    eager_seconds: float = 0.0
    results: list[dict] = field(default_factory=list)


def timing_threads(spec: ModelSpec) -> int:
    """The threads the build times candidates with: what each worker runs with when all the
    model's workers are busy (handlers/base.py shares the cores among busy workers). Timed on every
    core instead, a busy machine ranks wrongly: torch's OpenMP threads wait on each other when
    another process takes a core, ONNX Runtime's pool far less, so under CI's load ONNX Runtime
    read 43-65x over eager, against 4x on a quiet machine and at one thread busy or quiet."""
    return CoreShare(None, available_cores()).threads_when(int(spec.config.get("minWorkers") or 1))


def reference(spec: ModelSpec, work_dir: Path, label: str, timed: bool = True) -> Reference:
    eager = spec.load_eager(work_dir).eval()
    batch = int(spec.config.get("batchSize", 1))
    ref = Reference(eager, spec.prepare_export(eager) if spec.prepare_export else eager, batch,
                    spec.example_inputs(batch), spec.parity_inputs(), timing_threads(spec))
    with torch.inference_mode():
        check_output(spec, eager(*ref.parity_batches[0]))
    if timed:
        with timing.torch_threads(ref.threads):
            ref.eager_seconds = timing.median_seconds(eager, ref.timing_inputs)
        say(label, f"eager: {ref.eager_seconds * 1000:.1f} ms per batch of {batch} on "
                   f"{ref.threads} thread{'s' if ref.threads > 1 else ''} (a busy worker's share)")
    else:
        ref.eager_seconds = None
    return ref


def check_output(spec: ModelSpec, output) -> None:
    """The eager model's answer must be what its kind's handler encodes: one tensor, and for
    classifiers and embedders one row of scores per input; a classifier's labels, one per class."""
    if not isinstance(output, torch.Tensor):
        raise spec.fail("kind", f"the model returns {type(output).__name__}; a served model "
                        "returns one tensor (wrap it in a module that picks it)")
    if spec.gate in ("classifier", "embedder") and output.dim() != 2:
        per_input = "classes" if spec.gate == "classifier" else "dimensions"
        raise spec.fail("kind", f"{spec.kind} answers from a (batch, {per_input}) output; this "
                        f"model returns {tuple(output.shape)}: pick the kind tensor, or wrap "
                        "the model")
    if spec.gate != "classifier":
        return
    classes = output.shape[1]
    declared = spec.handler_settings.get("num_classes")
    if declared is not None and int(declared) != classes:
        raise spec.fail("handler.num_classes", f"{declared}, but the model answers {classes} "
                        "classes", models.SERVING_CONFIG)
    labels = sources.generated_files(spec).get(sources.LABELS_FILE)
    if labels is None and sources.LABELS_FILE in spec.extra_files():
        labels = spec.extra_files()[sources.LABELS_FILE].read_text(encoding="utf-8")
    if labels is not None and len(labels.splitlines()) != classes:
        raise spec.fail("extra_files", f"{sources.LABELS_FILE} has {len(labels.splitlines())} "
                        f"labels; the model answers {classes} classes")


# -- try one candidate ---------------------------------------------------------------------------

def try_candidate(spec: ModelSpec, ref: Reference, t: str, p: str, work_dir: Path, device: str,
                  neuron: NeuronOptions | None, label: str, timed: bool = True) -> dict:
    """Exports, loads as a worker would, gates and times one candidate. Raises TargetUnavailable
    or ParityError; returns its figures."""
    entry = {"target": t, "precision": p}
    step = time.perf_counter()
    say(label, f"{t}/{p}: exporting")
    example = spec.example_inputs(2)
    fixed = artifacts.LOADERS[t].fixed_shapes
    options = neuron or NeuronOptions()
    if fixed:  # traced at one batch (and sequence) size
        fixed_batch = options.batch_size or ref.batch
        fixed_length = options.sequence_length if spec.text else None
        example = spec.example_inputs(fixed_batch)
        if fixed_length:
            example = targets.fit_sequence(example, spec.dims, fixed_length)
    artifact = targets.export(t, ref.to_export, p, example, spec.dims, spec.dim_ranges,
                              work_dir / f"{t}-{p}", device, neuron, spec.channels_last,
                              spec.int8_skip)
    entry["export_seconds"] = round(time.perf_counter() - step, 2)
    entry["artifact"] = str(artifact)
    exported = load_artifact(entry, device)
    if fixed and not options.dynamic_batch:
        exported = targets.FixedShape(exported, spec.dims, fixed_batch, fixed_length)
    entry["parity"] = check_parity(label, spec.gate, p, ref.eager, exported, ref.parity_batches,
                                   served_batch=ref.batch)
    entry["status"] = "passed"
    if not timed:
        entry["batch_ms"] = entry["speedup"] = None
        say(label, f"{t}/{p}: passed its gate ({entry['parity']['gate']}); not timed "
                   f"(export {entry['export_seconds']:.1f}s)")
        return entry
    with timing.torch_threads(ref.threads):
        if hasattr(exported, "with_threads"):  # a runtime whose pool is sized at load (ORT)
            exported = exported.with_threads(ref.threads)
        paired = timing.paired_timing(ref.eager, exported, ref.timing_inputs)
    entry["batch_ms"] = round(paired.candidate_s * 1000, 2)
    entry["speedup"] = round(paired.speedup, 2)
    entry["eager_ms_beside"] = round(paired.reference_s * 1000, 2)  # what the speedup divides
    entry["timing_spread"] = round(paired.spread, 2)
    say(label, f"{t}/{p}: passed its gate ({entry['parity']['gate']}); {entry['batch_ms']:.1f} ms "
               f"per batch of {ref.batch} against eager's {entry['eager_ms_beside']:.1f} ms beside "
               f"it: {entry['speedup']:.2f}x" + (f", NOISY (blocks {paired.spread:.2f}x apart: a "
                                                 "busy machine)" if paired.noisy else "")
               + f" (export {entry['export_seconds']:.1f}s)")
    return entry


class OnDevice:
    """An artifact on `device`, called as the gates, the timing and the model's hooks call every
    candidate: with CPU tensors, answering CPU tensors. The eager reference stays on the CPU (exact
    fp32), so a CUDA candidate's time includes its copies, as a worker's does."""

    def __init__(self, model, device: torch.device) -> None:
        self.model, self.device = model, device

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*(x.to(self.device) for x in inputs)).cpu()


def load_artifact(entry: dict, device: str):
    path = Path(entry["artifact"])
    info = {"target": entry["target"], "precision": entry["precision"], "device": device,
            "arch": platform.machine(), "torch": torch.__version__}
    model = artifacts.load(path.parent, path.name, info, torch.device(device))
    where = artifacts.artifact_device(info, torch.device(device))
    return model if where.type == "cpu" else OnDevice(model, where)


# -- ship ----------------------------------------------------------------------------------------

def ship(spec: ModelSpec, ref: Reference, results: list[dict], request: dict, digest: str,
         work_dir: Path, model_store: Path, archive_name: str, neuron: NeuronOptions | None,
         named: bool, asked_precision: str | None = None) -> dict:
    passed = [r for r in results if r["status"] == "passed"]
    if not passed:
        raise BuildError(f"{archive_name}: no candidate passed: " +
                         "; ".join(f"{r['target']}/{r['precision']}: {r['reason']}" for r in results))
    asked = (asked_precision,) if asked_precision else spec.ship_precisions
    passing = hold_back_unasked(passed, asked)
    if not passing:
        only = ", ".join(sorted({r["precision"] for r in passed}))
        raise BuildError(f"{archive_name}: only {only} passed, which model.yaml does not ask for "
                         f"(build.precisions: {list(spec.ship_precisions)})")
    chosen = choose(passing)
    skipped = [f"{r['target']}/{r['precision']} ({r['status']})" for r in results
               if r["status"] != "passed"]
    timed = chosen["speedup"] is not None
    ranked = not unranked(passing)
    n = len(passing)
    if ranked:
        how = f"fastest of {n} that passed (within {EQUALLY_FAST - 1:.0%}: "
    elif not timed:
        how = f"first of {n} that passed, not timed ("
    else:
        how = (f"first of {n} that passed: the machine was too busy to rank them (every timing "
               "noisy; `make build ARGS=--force` on a quiet machine ranks them) (")
    say(archive_name, f"shipping {chosen['target']}/{chosen['precision']}: the {how}"
                      f"fp32 first, then {' > '.join(PREFERRED_TARGETS[1:])})"
                      + (f"; not shipped: {', '.join(skipped)}" if skipped else ""))
    device = request["device"]
    evaluation = spec.evaluate(load_artifact(chosen, device)) if spec.evaluate else {}
    info = {
        "name": archive_name, "model": spec.name,
        "target": chosen["target"], "precision": chosen["precision"], "device": device,
        "torch": torch.__version__, "arch": platform.machine(),
        "inputs_sha256": digest,
        "chosen_because": "named on the command line" if named else
                          f"fastest passing candidate at batch {ref.batch} on {ref.threads} "
                          "thread(s)" if ranked else
                          "the preferred passing candidate (not timed)" if not timed else
                          "the preferred passing candidate (timings too noisy to rank)",
        "eager_batch_ms": round(ref.eager_seconds * 1000, 2) if timed else None,
        "timing_batch": ref.batch, "timing_threads": ref.threads if timed else None,
        "parity": chosen["parity"], "evaluation": evaluation,
        "candidates": [{k: v for k, v in r.items() if k != "artifact"} for r in results],
    }
    archive.archive(spec, Path(chosen["artifact"]),
                    serving_config(spec, chosen["target"], neuron, device), info, work_dir,
                    model_store, archive_name)
    return info


def build(name: str, force: bool = False, model_store: Path = MODEL_STORE,
          work_root: Path = BUILD_DIR, target: str | None = None, precision: str | None = None,
          device: str = "cpu", neuron: NeuronOptions | None = None,
          archive_name: str | None = None, spec: ModelSpec | None = None,
          timed: bool = True) -> dict:
    """Builds model_store/<archive_name or NAME>.mar unless it is up to date; returns its info.
    `spec`: a model folder outside models/ (tests), instead of the one NAME names. timed=False:
    parity gates only, no timing, the preferred passing candidate shipped (where timings would
    mean nothing, as under emulation)."""
    spec = spec or models.load(name)
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
    if not timed:  # another choice: not up to date with a timed build
        request["timed"] = False
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
    ref = reference(spec, work_dir, archive_name, timed)
    results = []
    for t, p in plan:
        try:
            results.append(try_candidate(spec, ref, t, p, work_dir, device, neuron, archive_name,
                                         timed))
        except (TargetUnavailable, ParityError) as e:
            status = "unavailable" if isinstance(e, TargetUnavailable) else "failed parity"
            results.append({"target": t, "precision": p, "status": status, "reason": str(e)})
            say(archive_name, f"{t}/{p}: {status}: {e}")
            if target and (precision or len(plan) == 1):
                raise BuildError(f"{archive_name}: {t}/{p} {status}: {e}") from e
    info = ship(spec, ref, results, request, digest, work_dir, model_store, archive_name, neuron,
                named=bool(target and precision), asked_precision=precision)
    info["build_seconds"] = round(time.perf_counter() - started, 2)
    info_file.write_text(json.dumps(info, indent=2))
    say(archive_name, f"built {mar} in {info['build_seconds']:.1f}s")
    return info


def build_all(names: list[str] | None = None, force: bool = False,
              model_store: Path = MODEL_STORE, **options) -> dict[str, dict]:
    return {name: build(name, force, model_store, **options) for name in (names or models.names())}
