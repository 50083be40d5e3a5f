"""python -m serving bench: every model x target x precision x batch size, in-process, no server.

Each combination runs in fresh processes, so that one's memory and caches never flatter another:
one process exports the artifact (its build time), another loads it and measures the first call
and then the steady state at each batch size, and reports its own peak RSS. "eager" is the
reference nn.Module itself. Results: a table on stdout, JSON, and a PNG of throughput against
batch size per target.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import models
from handlers import PRECISIONS, TARGETS
from serving.perf.measure import percentile
from serving.run.paths import BUILD_DIR, ROOT, RUN_DIR

BATCHES = (1, 8, 32)


def measure_batch(model, inputs: tuple) -> dict:
    from serving.build.timing import call_times

    times = sorted(call_times(model, inputs, min_runs=5, budget=3.0, max_runs=200))
    median = statistics.median(times)
    p99 = percentile(times, 0.99)
    batch = inputs[0].shape[0]
    return {"batch": batch, "runs": len(times), "median_ms": median * 1000, "p99_ms": p99 * 1000,
            "items_per_s": batch / median}


def child_export(args) -> dict:
    from serving.build import targets

    spec = models.load(args.model)
    work = BUILD_DIR / "bench" / args.model
    eager = spec.load_eager(BUILD_DIR / args.model).eval()
    started = time.perf_counter()
    if spec.prepare_export:
        eager = spec.prepare_export(eager)
    path = targets.export(args.target, eager, args.precision, spec.example_inputs(2), spec.dims,
                          spec.dim_ranges, work / f"{args.target}-{args.precision}", args.device,
                          channels_last=spec.channels_last, int8_skip=spec.int8_skip)
    return {"artifact": str(path), "build_s": time.perf_counter() - started}


def child_measure(args) -> dict:
    from handlers import artifacts
    from serving.build.targets import Served

    spec = models.load(args.model)
    device = torch.device(args.device)
    started = time.perf_counter()
    if args.target == "eager":
        model = Served(spec.load_eager(BUILD_DIR / args.model).eval(), args.precision,
                       spec.channels_last, int8_skip=spec.int8_skip).to(device)
    else:
        path = Path(args.artifact)
        info = {"target": args.target, "precision": args.precision, "device": args.device,
                "torch": torch.__version__, "arch": platform.machine()}
        model = artifacts.load(path.parent, path.name, info, device)
    load_s = time.perf_counter() - started
    on_device = lambda batch: tuple(x.to(device) for x in spec.example_inputs(batch))  # noqa: E731
    first_inputs = on_device(8)
    with torch.inference_mode():
        started = time.perf_counter()
        model(*first_inputs)
        first_call_ms = (time.perf_counter() - started) * 1000
    rows = [measure_batch(model, on_device(b)) for b in args.batches]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Speedup over eager, from calls interleaved with the eager model in this same process (medians
    # taken in different processes minutes apart differ by more than that on a shared machine).
    if args.target != "eager" or args.precision != "fp32":
        from serving.build.timing import paired_speedup

        reference = spec.load_eager(BUILD_DIR / args.model).eval().to(device)
        for row in rows:
            row["speedup"] = paired_speedup(reference, model, on_device(row["batch"]))[1]
    return {"load_s": load_s, "first_call_ms": first_call_ms, "rows": rows,
            "peak_rss_mb": peak_rss_mb}


def run_child(*arguments: str, timeout: float = 900, module: str = "serving.perf.bench") -> dict:
    """Runs `python -m module arguments` in a fresh process; its last JSON line is the result."""
    command = [sys.executable, "-m", module, *arguments]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(" / ".join(tail) or f"exit code {done.returncode}")
    return json.loads(lines[-1])


def combinations(names, chosen_targets, precisions, device):
    from serving.build.targets import TargetUnavailable, check_available

    for name in names:
        for target in chosen_targets:
            for precision in precisions:
                if precision == "fp16" and device != "cuda":
                    continue
                reason = None
                try:
                    if target != "eager":
                        check_available(target, device)
                except TargetUnavailable as e:
                    reason = str(e)
                yield name, target, precision, reason


def run(names, chosen_targets, precisions, batches, device, out: Path) -> list[dict]:
    results = []
    for name, target, precision, reason in combinations(names, chosen_targets, precisions, device):
        label = f"{name} {target}/{precision}"
        entry = {"model": name, "target": target, "precision": precision, "device": device}
        if reason:
            print(f"{label}: not run: {reason}", flush=True)
            results.append({**entry, "status": "unavailable", "reason": reason})
            continue
        common = ["--model", name, "--target", target, "--precision", precision,
                  "--device", device, "--batches", *map(str, batches)]
        try:
            built = {"build_s": 0.0, "artifact": ""}
            if target != "eager":
                print(f"{label}: exporting...", flush=True)
                built = run_child("--child", "export", *common)
            print(f"{label}: measuring...", flush=True)
            measured = run_child("--child", "measure", *common, "--artifact", built["artifact"])
            results.append({**entry, "status": "measured", "build_s": built["build_s"], **measured})
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"{label}: failed: {e}", flush=True)
            results.append({**entry, "status": "failed", "reason": str(e)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({
        "machine": {"arch": platform.machine(), "torch": torch.__version__, "device": device,
                    "cpu_threads": torch.get_num_threads()},
        "results": results}, indent=2))
    return results


def table(results: list[dict]) -> str:
    header = ("| model | target | precision | batch | median ms | p99 ms | items/s | "
              "x eager | peak RSS MB | build s | first call ms (batch 8) |\n|" + "---|" * 11)
    lines = [header]
    for r in results:
        if r["status"] != "measured":
            lines.append(f"| {r['model']} | {r['target']} | {r['precision']} | – | "
                         f"{r['status']}: {r['reason'][:80]} | | | | | | |")
            continue
        for row in r["rows"]:
            lines.append(f"| {r['model']} | {r['target']} | {r['precision']} | {row['batch']} | "
                         f"{row['median_ms']:.1f} | {row['p99_ms']:.1f} | "
                         f"{row['items_per_s']:.0f} | {row.get('speedup', 1.0):.2f} | "
                         f"{r['peak_rss_mb']:.0f} | {r['build_s']:.1f} | {r['first_call_ms']:.1f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["model"] for r in results if r["status"] == "measured"})
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in results:
            if r["model"] == name and r["status"] == "measured":
                ax.plot([row["batch"] for row in r["rows"]], [row["items_per_s"] for row in r["rows"]],
                        marker="o", linestyle="-" if r["precision"] == "fp32" else "--",
                        label=f"{r['target']}/{r['precision']}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("items/s")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.suptitle(f"Throughput against batch size ({platform.machine()}, torch {torch.__version__}, "
                 f"{torch.get_num_threads()} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(models.NAMES))
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32", "bf16"])
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default=str(RUN_DIR / "bench"))
    parser.add_argument("--child", choices=("export", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child_export(args) if args.child == "export" else child_measure(args)
        print(json.dumps(result))
        return 0
    unknown = [m for m in args.models if m not in models.NAMES]
    if unknown:
        parser.error(f"unknown models {unknown}")
    out = Path(args.out)
    results = run(args.models, args.targets, args.precisions, args.batches, args.device, out)
    print("\n" + table(results))
    print(f"\nJSON: {out / 'bench.json'}\nPlot: {plot(results, out / 'throughput.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
