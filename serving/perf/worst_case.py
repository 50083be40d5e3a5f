"""python -m serving worst-case: each model's most expensive request, next to a normal one.

Through the real handler loaded from the real archive (serving.run.inprocess), in this process: a
normal full batch (batchSize copies of the model's example request), the worst requests the
limits admit (or refuse last), alone and as a full batch. The target: the worst request costs at
most 3x a normal full batch, and a full batch of it ends well inside the model's responseTimeout.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import models
from serving.run.cpu import cpu_name

TARGET_RATIO = 3.0


def timed(model, batch: list[tuple[bytes, str]], runs: int) -> tuple[float, list]:
    times, answers = [], None
    for _ in range(runs):
        started = time.perf_counter()
        answers = model.handle(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times), answers


def measure_worst(name: str, work_dir: Path, runs: int) -> list[dict]:
    from serving.run.inprocess import LoadedModel

    model = LoadedModel(name, work_dir)
    spec = models.load(name)
    file, content_type = spec.example_request
    normal = ((models.MODELS_DIR / name / file).read_bytes(), content_type)
    full = model.batch_size
    normal_batch, _ = timed(model, [normal] * full, runs)
    rows = [{"model": name, "request": "normal (example)", "status": 200,
             "alone ms": timed(model, [normal], runs)[0] * 1000,
             "full batch ms": normal_batch * 1000, "x normal batch": 1.0}]
    for label, request in type(model.handler).worst_requests(model.handler.settings).items():
        alone, [answer] = timed(model, [request], runs)
        batch, _ = timed(model, [request] * full, max(1, runs // 2))
        rows.append({"model": name, "request": label, "status": answer.status,
                     "alone ms": alone * 1000, "full batch ms": batch * 1000,
                     "x normal batch": alone / normal_batch})
    timeout = model.context.model_yaml_config.get("responseTimeout")
    for row in rows:
        row["batch size"], row["responseTimeout s"] = full, timeout
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving worst-case", description=__doc__)
    parser.add_argument("models", nargs="*", default=list(models.NAMES))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="run/worst-case.json")
    args = parser.parse_args(argv)
    import torch

    print(f"CPU: {cpu_name()} ({platform.machine()}), torch {torch.__version__}; "
          f"median of {args.runs} runs, in process", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += measure_worst(name, Path(tmp), args.runs)
    print(f"\n{'model':20s} {'request':30s} {'status':>6s} {'alone ms':>9s} {'batch':>5s} "
          f"{'full batch ms':>13s} {'x normal batch':>14s} {'timeout s':>9s}")
    worst_ratio = {}
    for r in rows:
        print(f"{r['model']:20s} {r['request']:30s} {r['status']:6d} {r['alone ms']:9.1f} "
              f"{r['batch size']:5d} {r['full batch ms']:13.1f} {r['x normal batch']:14.2f} "
              f"{r['responseTimeout s']:9}")
        worst_ratio[r["model"]] = max(worst_ratio.get(r["model"], 0), r["x normal batch"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    over = {m: x for m, x in worst_ratio.items() if x > TARGET_RATIO}
    print("\nWorst request / normal full batch: " + ", ".join(
        f"{m} {x:.2f}x" for m, x in worst_ratio.items()) +
        (f"; over the {TARGET_RATIO:g}x target: {sorted(over)}" if over else
         f"; all within {TARGET_RATIO:g}x"))
    return 1 if over else 0
