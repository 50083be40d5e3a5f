"""A load test's report, from what Prometheus recorded during its window: Markdown with PNG plots.

Client figures come from the load generator's histogram, server figures from the handlers'
histograms and TorchServe's counters. Totals over the window are differences of counters between
its end and its start, so traffic before the test is left out.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from serving.run.prometheus import Prometheus  # noqa: E402

QUANTILES = (0.5, 0.95, 0.99)
STAGES = ("preprocess", "inference", "postprocess")
CPU_BOTTLENECK_PERCENT = 90
INFERENCE_BUCKETS = 'handler_stage_seconds_bucket{stage="inference"}'


def scrape_seconds(prom: Prometheus) -> float:
    import requests

    config = requests.get(f"{prom.url}/api/v1/status/config", timeout=10).json()["data"]["yaml"]
    interval = yaml.safe_load(config)["global"]["scrape_interval"]
    units = {"ms": 0.001, "s": 1, "m": 60}
    for suffix in ("ms", "s", "m"):
        if interval.endswith(suffix):
            return float(interval[: -len(suffix)]) * units[suffix]
    return 15.0


class Window:
    """Queries over [start, end] of one load test."""

    def __init__(self, prom: Prometheus, start: float, end: float, scrape: float) -> None:
        self.prom, self.start, self.scrape = prom, start, scrape
        self.seconds = max(1, round(end - start))
        self.end = start + self.seconds

    def delta(self, metric: str) -> str:
        """Increase of a counter over the window, exact at its ends: last value minus the value at
        the start; or the last value where there is no fresh start value (a new series, or one
        Prometheus last saw before a restart of TorchServe) or the counter was reset in the window.
        The last value, not the value at the end: once the load generator exits, its series go
        stale at the next scrape."""
        w, m = f"{self.seconds}s", metric
        last = f"last_over_time({m}[{w}])"
        fresh = self.start - 3 * self.scrape
        return (f"((({last} - ({m} offset {w})) and (timestamp({m} offset {w}) > {fresh:.3f})"
                f" unless (resets({m}[{w}]) > 0)) or {last})")

    def vector(self, expr: str) -> dict[tuple, float]:
        out = {}
        for row in self.prom.query(expr, at=self.end):
            value = float(row["value"][1])
            if not math.isnan(value):
                out[tuple(sorted(row["metric"].items()))] = value
        return out

    def by(self, expr: str, *labels: str) -> dict:
        """{label value (or tuple of them): value}."""
        out = {}
        for key, value in self.vector(expr).items():
            metric = dict(key)
            name = tuple(metric.get(label, "") for label in labels)
            out[name[0] if len(labels) == 1 else name] = value
        return out

    def quantile(self, q: float, bucket: str, *labels: str, selector: str = "") -> dict:
        by = ", ".join(("le", *labels))
        return self.by(f"histogram_quantile({q}, sum by ({by}) ({self.delta(bucket + selector)}))",
                       *labels)

    def mean(self, metric: str, *labels: str, selector: str = "") -> dict:
        by = ", ".join(labels)
        return self.by(f"sum by ({by}) ({self.delta(metric + '_sum' + selector)}) / "
                       f"sum by ({by}) ({self.delta(metric + '_count' + selector)})", *labels)

    def series(self, expr: str, *labels: str, step: float) -> dict[str, list[tuple[float, float]]]:
        out = {}
        for row in self.prom.query_range(expr, self.start, self.end, step):
            name = " ".join(row["metric"].get(label, "") for label in labels) or "all"
            out[name] = [(float(t) - self.start, float(v)) for t, v in row["values"]
                         if not math.isnan(float(v))]
        return out


def collect(prom: Prometheus, start: float, end: float, active_seconds: float | None = None) -> dict:
    scrape = scrape_seconds(prom)
    w = Window(prom, start, end, scrape)
    rate = f"{max(3 * scrape, 4):g}s"
    step = max(scrape, w.seconds / 120)
    client = "loadtest_request_duration_seconds"
    data = {
        "start": w.start, "end": w.end, "seconds": w.seconds, "scrape_seconds": scrape,
        # Seconds with load on (the test's run time), for requests/s; default: the whole window.
        "active_seconds": min(active_seconds or w.seconds, w.seconds),
        "requests": w.by(f"sum by (model_name, status) ({w.delta('loadtest_requests_total')})",
                         "model_name", "status"),
        "client_quantiles": {q: w.quantile(q, f"{client}_bucket", "model_name") for q in QUANTILES},
        "client_mean": w.mean(client, "model_name"),
        "stage_quantiles": {q: w.quantile(q, "handler_stage_seconds_bucket", "model_name", "stage")
                            for q in QUANTILES},
        "stage_mean": w.mean("handler_stage_seconds", "model_name", "stage"),
        "inference_buckets": w.by(f"sum by (model_name, le) ({w.delta(INFERENCE_BUCKETS)})",
                                  "model_name", "le"),
        "batch_buckets": w.by(f"sum by (model_name, le) ({w.delta('handler_batch_size_bucket')})",
                              "model_name", "le"),
        "batch_mean": w.mean("handler_batch_size", "model_name"),
        "server_responses": w.by(f"sum by (model_name, status) "
                                 f"({w.delta('handler_responses_total')})", "model_name", "status"),
        "queue_mean": w.by(f"sum by (model_name) ({w.delta('ts_queue_latency_microseconds')}) / "
                           f"sum by (model_name) ({w.delta('ts_inference_requests_total')}) / 1e6",
                           "model_name"),
        "frontend_mean": w.by(f"sum by (model_name) ({w.delta('ts_inference_latency_microseconds')})"
                              f" / sum by (model_name) ({w.delta('ts_inference_requests_total')}) / 1e6",
                              "model_name"),
        "generator_cpu_max": w.by(f"max_over_time(loadtest_cpu_percent[{w.seconds}s])", "process"),
        "over_time": {
            "throughput": w.series(f"sum by (model_name) (rate(loadtest_requests_total[{rate}]))",
                                   "model_name", step=step),
            "errors": w.series(f'sum by (model_name, status) (rate(loadtest_requests_total'
                               f'{{status!="200"}}[{rate}]))', "model_name", "status", step=step),
            "client_p95": w.series(f"histogram_quantile(0.95, sum by (le, model_name) "
                                   f"(rate({client}_bucket[{rate}])))", "model_name", step=step),
            "inference_p95": w.series(
                f'histogram_quantile(0.95, sum by (le, model_name) (rate(handler_stage_seconds_bucket'
                f'{{stage="inference"}}[{rate}])))', "model_name", step=step),
            "queue_mean": w.series(f"sum by (model_name) (rate(ts_queue_latency_microseconds[{rate}]))"
                                   f" / sum by (model_name) (rate(ts_inference_requests_total[{rate}]))"
                                   f" / 1e6", "model_name", step=step),
            "users": w.series("sum(loadtest_users)", step=step),
            "generator_cpu": w.series("loadtest_cpu_percent", "process", step=step),
        },
    }
    data["models"] = sorted({m for m, _ in data["requests"]})
    return data


def quantile_bucket(cumulative: dict[str, float], q: float) -> tuple[float, float] | None:
    """The (lower, upper] bounds of the histogram bucket that holds quantile q: how precisely a
    histogram_quantile() figure is known."""
    bounds = sorted((float(le), count) for le, count in cumulative.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank, lower = q * bounds[-1][1], 0.0
    for upper, count in bounds:
        if count >= rank:
            return lower, upper
        lower = upper
    return None


def model_summary(data: dict, model: str) -> dict:
    statuses = {s: int(n) for (m, s), n in data["requests"].items() if m == model and n}
    total = sum(statuses.values())
    stage = {s: data["stage_mean"].get((model, s), 0.0) for s in STAGES}
    client_mean = data["client_mean"].get(model, 0.0)
    frontend = data["frontend_mean"].get(model, 0.0)
    queue = data["queue_mean"].get(model, 0.0)
    return {
        "requests": total, "statuses": statuses, "rps": total / data["active_seconds"],
        "errors": total - statuses.get("200", 0),
        "client": {q: data["client_quantiles"][q].get(model) for q in QUANTILES},
        "client_mean": client_mean,
        "inference": {q: data["stage_quantiles"][q].get((model, "inference")) for q in QUANTILES},
        "inference_bucket": {q: quantile_bucket({le: n for (m, le), n in data["inference_buckets"].items()
                                                 if m == model}, q) for q in QUANTILES},
        "stage_quantiles": {(s, q): data["stage_quantiles"][q].get((model, s))
                            for s in STAGES for q in QUANTILES},
        "stage_mean": stage,
        "queue_mean": queue,
        "batch_mean": data["batch_mean"].get(model),
        "server_statuses": {s: int(n) for (m, s), n in data["server_responses"].items()
                            if m == model and n},
        # Where a request's time goes, as means: the parts add up to the client's mean.
        "time_split": {
            "queue": queue, **stage,
            "frontend + worker IPC": max(0.0, frontend - queue - sum(stage.values())),
            "network + client": max(0.0, client_mean - frontend),
        },
    }


def ms(seconds: float | None) -> str:
    return "–" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.1f}"


def generator_warning(data: dict) -> str | None:
    busy = {p: c for p, c in data["generator_cpu_max"].items() if c >= CPU_BOTTLENECK_PERCENT}
    if not busy:
        return None
    where = ", ".join(f"{p} {c:.0f}%" for p, c in sorted(busy.items()))
    return (f"**The load generator was the bottleneck**: its CPU reached {where}. Client "
            f"latencies include time waiting for the generator itself, and the server may have "
            f"had capacity left. Run with more processes (`--processes N`) or on other cores.")


# -- plots ---------------------------------------------------------------------------------------

def colors(models) -> dict[str, str]:
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: palette[i % len(palette)] for i, m in enumerate(sorted(models))}


def line(ax, points, scale: float = 1.0, **style) -> None:
    if points:
        ax.plot([t for t, _ in points], [v * scale for _, v in points], **style)


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_over_time(data: dict, out: Path) -> Path:
    series = data["over_time"]
    color = colors(data["models"])
    fig, axes = plt.subplots(3, 1, figsize=(10, 10), sharex=True)

    ax = axes[0]
    for model, points in sorted(series["throughput"].items()):
        line(ax, points, color=color.get(model), label=model)
    ax.set_ylabel("requests/s (client)")
    ax.set_title("Throughput, and users (dotted)")
    ax.legend(loc="upper left")
    twin = ax.twinx()
    line(twin, series["users"].get("all"), color="grey", linestyle=":")
    twin.set_ylabel("users")

    ax = axes[1]
    for model in data["models"]:
        line(ax, series["client_p95"].get(model), 1000, color=color[model],
             label=f"{model}: client p95")
        line(ax, series["inference_p95"].get(model), 1000, color=color[model], linestyle="--",
             label="server inference p95")
        line(ax, series["queue_mean"].get(model), 1000, color=color[model], linestyle=":",
             label="queue mean")
    ax.set_ylabel("ms (log)")
    ax.set_yscale("log")
    ax.set_title("Latency: client p95 (solid), server inference p95 (dashed), queue mean (dotted)")
    ax.legend(fontsize=7, ncol=3)

    ax = axes[2]
    for name, points in sorted(series["errors"].items()):
        line(ax, points, color=color.get(name.split()[0]), label=name)
    ax.set_ylabel("errors/s")
    ax.set_xlabel("seconds since start")
    ax.set_title("Errors by model and status")
    if any(series["errors"].values()):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no errors", transform=ax.transAxes, ha="center", va="center")
    return save(fig, out / "over_time.png")


def plot_latency(summaries: dict[str, dict], out: Path) -> Path:
    fig, axes = plt.subplots(1, len(summaries), figsize=(4 * len(summaries), 3.5), squeeze=False)
    labels = [f"p{int(q * 100)}" for q in QUANTILES]
    for ax, (model, s) in zip(axes[0], summaries.items()):
        x = range(len(QUANTILES))
        ax.bar([i - 0.2 for i in x], [(s["client"][q] or 0) * 1000 for q in QUANTILES], 0.4,
               label="client")
        server = [(s["inference"][q] or 0) * 1000 for q in QUANTILES]
        spans = [s["inference_bucket"][q] or (0, 0) for q in QUANTILES]
        below = [max(0.0, v - low * 1000) for v, (low, _) in zip(server, spans)]
        above = [max(0.0, min(high, 1e3) * 1000 - v) for v, (_, high) in zip(server, spans)]
        ax.bar([i + 0.2 for i in x], server, 0.4, yerr=[below, above], capsize=4,
               label="server inference\n(bar: its histogram bucket)")
        ax.set_xticks(list(x), labels)
        ax.set_title(model)
        ax.set_ylabel("ms")
        ax.legend(fontsize=8)
    fig.suptitle("Client against server latency percentiles (error bar: the server histogram's "
                 "bucket)")
    return save(fig, out / "latency_percentiles.png")


def plot_time_split(summaries: dict[str, dict], out: Path) -> Path:
    models = list(summaries)
    parts = list(next(iter(summaries.values()))["time_split"])
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 1.0 + 1.1 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        left = 0.0
        for part in parts:
            value = summaries[model]["time_split"][part] * 1000
            ax.barh([model], [value], left=left, label=part)
            left += value
        ax.set_xlabel("mean ms per request")
    axes[0, 0].set_title("Where the time goes (means; each model on its own scale)")
    axes[-1, 0].legend(fontsize=8, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.6))
    return save(fig, out / "time_split.png")


def batch_histogram(data: dict, model: str) -> dict[str, int]:
    """Cumulative buckets -> counts per range of batch sizes."""
    cumulative = sorted(((float(le), n) for (m, le), n in data["batch_buckets"].items() if m == model))
    bins, previous_bound, previous = {}, 0.0, 0.0
    for bound, count in cumulative:
        if count - previous > 0:
            low = math.floor(previous_bound) + 1
            high = "∞" if math.isinf(bound) else math.floor(bound)
            bins[f"{low}" if low == high else f"{low}–{high}"] = int(count - previous)
        previous_bound, previous = bound, count
    return bins


def plot_batches(data: dict, models: list[str], out: Path) -> Path:
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        bins = batch_histogram(data, model)
        ax.bar(list(bins), list(bins.values()))
        ax.set_title(f"{model}: batch sizes")
        ax.set_xlabel("requests per batch")
        ax.set_ylabel("batches")
    return save(fig, out / "batch_sizes.png")


# -- the report ----------------------------------------------------------------------------------

def write(prom: Prometheus, start: float, end: float, out: Path, meta: dict | None = None,
          active_seconds: float | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = collect(prom, start, end, active_seconds)
    summaries = {m: model_summary(data, m) for m in data["models"]}
    meta = meta or {}
    when = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        "# Load test report", "",
        f"Window {when(data['start'])} – {when(data['end'])} UTC ({data['seconds']} s, "
        f"{data['active_seconds']:g} s of it under load); "
        f"Prometheus {prom.url}, scrape every {data['scrape_seconds']:g} s.",
    ]
    if meta:
        lines += ["", " · ".join(f"{k}: {v}" for k, v in meta.items())]
    warning = generator_warning(data)
    cpu = ", ".join(f"{p} {c:.0f}%" for p, c in sorted(data["generator_cpu_max"].items()))
    lines += ["", f"> ⚠ {warning}" if warning else
              f"Load generator CPU peaked at {cpu or 'n/a'}: below {CPU_BOTTLENECK_PERCENT}%, "
              f"so the server, not the generator, set the pace."]
    if not summaries:
        lines += ["", "No requests were recorded in this window."]
    else:
        lines += ["", "## Summary", "",
                  "| model | requests | req/s | errors | client p50 / p95 / p99 ms | "
                  "server inference p50 / p95 / p99 ms | queue mean ms | mean batch |",
                  "|---|---|---|---|---|---|---|---|"]
        for model, s in summaries.items():
            batch = f"{s['batch_mean']:.2f}" if s["batch_mean"] else "–"
            lines.append(
                f"| {model} | {s['requests']} | {s['rps']:.1f} | {s['errors']} | "
                f"{' / '.join(ms(s['client'][q]) for q in QUANTILES)} | "
                f"{' / '.join(ms(s['inference'][q]) for q in QUANTILES)} | {ms(s['queue_mean'])} | "
                f"{batch} |")
        slo_file = out / "slo.json"
        if slo_file.exists():
            rows = json.loads(slo_file.read_text())["rows"]
            lines += ["", "## Service-level objectives", "", "| model | objective | limit | measured | |",
                      "|---|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['objective']} | {r['limit']} | {r['measured']:.3f} | "
                      f"{'ok' if r['ok'] else '**broken**'} |" for r in rows]
        for model, s in summaries.items():
            lines += ["", f"## {model}", "", "| figure | value |", "|---|---|",
                      f"| requests (client) by status | "
                      f"{', '.join(f'{k}: {v}' for k, v in sorted(s['statuses'].items()))} |",
                      f"| answers (handler) by status | "
                      f"{', '.join(f'{k}: {v}' for k, v in sorted(s['server_statuses'].items())) or '–'} |",
                      f"| client mean ms | {ms(s['client_mean'])} |"]
            lines += [f"| client p{int(q * 100)} ms | {ms(s['client'][q])} |" for q in QUANTILES]
            lines += [f"| queue mean ms | {ms(s['queue_mean'])} |"]
            for stage in STAGES:
                lines.append(f"| {stage} mean / p50 / p95 / p99 ms | {ms(s['stage_mean'][stage])} / "
                             f"{' / '.join(ms(s['stage_quantiles'][(stage, q)]) for q in QUANTILES)} |")
            lines.append(f"| batch sizes | {', '.join(f'{k}: {v}' for k, v in batch_histogram(data, model).items()) or '–'} |")
            lines.append(f"| where the time goes (mean ms) | "
                         f"{', '.join(f'{k} {v * 1000:.1f}' for k, v in s['time_split'].items())} |")
        plots = [plot_over_time(data, out), plot_latency(summaries, out),
                 plot_time_split(summaries, out), plot_batches(data, list(summaries), out)]
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
        lines += ["", "Server percentiles come from TorchServe histograms with its fixed buckets "
                  "(5 ms, 10 ms, 25 ms, 50 ms, 75 ms, 100 ms, 250 ms, ...): read them as within a "
                  "bucket; the means are exact."]
    (out / "report.json").write_text(json.dumps(
        {"window": [data["start"], data["end"]], "models": {
            m: {k: v for k, v in s.items() if k not in ("stage_quantiles",)}
            for m, s in summaries.items()}}, indent=2, default=str))
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- a report that leaves the pod it was made in ------------------------------------------------

ECHO_BEGIN, ECHO_END = "===== BEGIN FILE {} =====", "===== END FILE {} ====="
ECHOED_SUFFIXES = (".md", ".csv", ".json")


def echo(out: Path) -> None:
    """Print the run's text files whole, between markers: in a Kubernetes Job the pod and its
    volumes go with it, its log stays (`kubectl logs`), and `files_in_log` gets the files back."""
    for path in sorted(p for p in out.iterdir() if p.suffix in ECHOED_SUFFIXES and p.is_file()):
        print(ECHO_BEGIN.format(path.name), flush=True)
        print(path.read_text(errors="replace").rstrip("\n"), flush=True)
        print(ECHO_END.format(path.name), flush=True)


def files_in_log(log: str) -> dict[str, str]:
    """The files `echo` printed into a log: name -> text (a file cut off by the log's end is
    left out)."""
    prefix, suffix = ECHO_BEGIN.split("{}")
    found, name, lines = {}, None, []
    for line in log.splitlines():
        if name is None:
            if line.startswith(prefix) and line.endswith(suffix):
                name, lines = line[len(prefix):-len(suffix)], []
        elif line == ECHO_END.format(name):
            found[Path(name).name] = "\n".join(lines) + "\n"
            name = None
        else:
            lines.append(line)
    return found
