"""python -m loadtest {run,report,ceiling}: load tests against the running service.

    run      Locust (headless) with one user class per model, then the report from Prometheus
    report   the report for any past window
    ceiling  the load generator's own ceiling on this machine: requests/s against TorchServe's /ping
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from serving.run.paths import RUN_DIR
from serving.run.prometheus import LOADTEST_METRICS_PORT, Prometheus
from serving.run.torchserve import Instance

import models
from loadtest.protocols import PROTOCOLS
from loadtest import user_class_name
from loadtest.runner import HERE, MEASURE_ONLY, SHAPES, closed_loop, instance_of, locust, seconds, stats


def prometheus_of(args) -> Prometheus:
    if args.prometheus_url:
        return Prometheus.at(args.prometheus_url)
    return Prometheus(port=args.prometheus_port)


def wait_for_scrape(prom: Prometheus, job: str, timeout: float = 30) -> bool:
    """Until Prometheus has a sample of the job: the report measures from the test's start on,
    so the server's counters need a value from before it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(float(r["value"][1]) == 1 for r in prom.query(f'up{{job="{job}"}}')):
            return True
        time.sleep(1)
    return False


def cmd_run(args) -> int:
    from loadtest import report

    host = args.host or Instance.from_config().public_url
    prom = prometheus_of(args)
    try:
        prom.query("up")
    except Exception as e:  # noqa: BLE001
        print(f"error: no Prometheus at {prom.url} ({e}); start the service with `make up`")
        return 2
    if not wait_for_scrape(prom, "torchserve"):
        print(f"error: Prometheus at {prom.url} has not scraped TorchServe; is `make up` running?")
        return 2
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or RUN_DIR / "loadtest" / stamp)
    out.mkdir(parents=True, exist_ok=True)
    names = args.models or list(models.names())
    extra = [f"--slo-file={args.slo_file}", f"--protocol={args.protocol}"]
    for flag in ("slo_p95_ms", "slo_p99_ms", "slo_max_error_rate", "slo_min_rps"):
        if getattr(args, flag) is not None:
            extra.append(f"--{flag.replace('_', '-')}={getattr(args, flag)}")
    print(f"Load test: {args.shape}, {args.users} users, {args.duration}, models {' '.join(names)}, "
          f"{args.protocol} protocol, against {host}; output in {out}", flush=True)
    started = time.time()
    code = locust(out, host, args.users, args.spawn_rate or args.users, args.duration,
                  [user_class_name(m) for m in names], args.shape, args.processes,
                  args.metrics_port, extra + args.locust_args, args.metrics_host, args.key_file)
    ended = time.time()
    meta = {"shape": args.shape, "protocol": args.protocol, "users": args.users,
            "duration": args.duration,
            "generator processes": args.processes or 1, "host": host,
            "locust exit code": code}
    path = report.write(prom, started, ended, out, meta, active_seconds=seconds(args.duration))
    print(f"\nReport: {path}\nLocust's own: {out / 'locust.html'}, {out / 'locust_stats.csv'}")
    if args.echo:
        report.echo(out)
    return code


def cmd_report(args) -> int:
    from loadtest import report

    path = report.write(prometheus_of(args), args.start, args.end, Path(args.out))
    print(f"Report: {path}")
    return 0


def cmd_ceiling(args) -> int:
    """Requests/s the generator reaches against the cheapest endpoint there is, per setting."""
    host = args.host or Instance.from_config().public_url
    results = []
    for processes in args.processes:
        out = RUN_DIR / "loadtest" / f"ceiling-p{processes}"
        out.mkdir(parents=True, exist_ok=True)
        locust(out, host, args.users, args.users, args.duration, ["PingUser"],
               processes=processes if processes > 1 else 0,
               extra=MEASURE_ONLY, key_file=args.key_file)
        total = stats(out)["Aggregated"]
        results.append((processes, float(total["Requests/s"]), float(total["50%"]),
                        float(total["99%"])))
    print(f"\nLoad generator ceiling against {host}/ping ({args.users} users, {args.duration}):")
    print(f"{'processes':>10s} {'req/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for processes, rps, p50, p99 in results:
        print(f"{processes:10d} {rps:10.0f} {p50:8.0f} {p99:8.0f}")
    return 0


def cmd_soak(args) -> int:
    from loadtest import soak

    instance = instance_of(args.key_file)
    host = args.host or Instance.from_config().public_url
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or RUN_DIR / "loadtest" / f"soak-{stamp}")
    names = args.models or list(models.names())
    rates = {}
    for model in names:
        alone = float(closed_loop(model, host, out / f"capacity-{model}", 8,
                                  args.capacity_duration, args.key_file)["Requests/s"])
        # The models share the cores: each gets an equal part of LOAD x the machine.
        rates[model] = alone * args.load / len(names)
        print(f"[soak] {model}: capacity {alone:.1f} req/s alone; soaking at {rates[model]:.1f}",
              flush=True)
    result = soak.run(host, instance, out, rates, seconds(args.duration), args.key_file)
    print("\n" + soak.report(result) + f"\nDetails: {out / 'soak.json'}")
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--prometheus-port", type=int, default=9090,
                       help="the Prometheus on 127.0.0.1 that `make up` started")
    where.add_argument("--prometheus-url", help="a Prometheus elsewhere, e.g. http://prometheus:9090")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="a load test, then its report", parents=[where])
    p.add_argument("models", nargs="*", metavar="MODEL", help="default: every model folder")
    p.add_argument("-u", "--users", type=int, default=12)
    p.add_argument("-r", "--spawn-rate", type=float, help="users started per second (default: all at once)")
    p.add_argument("-t", "--duration", default="60s", help="e.g. 30s, 5m")
    p.add_argument("--shape", choices=list(SHAPES), default="constant")
    p.add_argument("--protocol", choices=PROTOCOLS, default="native",
                   help="what the users speak: native REST, KServe v1, or the Open Inference "
                   "Protocol in JSON or binary (loadtest/protocols.py); the same inputs in each")
    p.add_argument("--processes", type=int, default=0, help="Locust worker processes (0: one process)")
    p.add_argument("--host", help="inference URL (default: from config.properties)")
    p.add_argument("--key-file", help="the server's key_file.json (default: that of `make up`)")
    p.add_argument("--metrics-port", type=int, default=LOADTEST_METRICS_PORT)
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="where the client metrics listen (0.0.0.0 in a container Prometheus scrapes)")
    p.add_argument("--out", help="output folder (default: run/loadtest/<UTC time>)")
    p.add_argument("--slo-file", default=str(HERE / "slo.yaml"),
                   help="default objectives; each model's own are in its model.yaml")
    p.add_argument("--slo-p95-ms", type=float)
    p.add_argument("--slo-p99-ms", type=float)
    p.add_argument("--slo-max-error-rate", type=float)
    p.add_argument("--slo-min-rps", type=float)
    p.add_argument("--echo", action="store_true",
                   help="print the report and CSVs whole into the log (a Kubernetes Job: "
                        "`python -m serving deploy results` gets them back)")
    p.add_argument("--locust-args", nargs=argparse.REMAINDER, default=[],
                   help="anything after this goes to locust as is")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="the report for a past window", parents=[where])
    p.add_argument("--start", type=float, required=True, help="UNIX time")
    p.add_argument("--end", type=float, required=True, help="UNIX time")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ceiling", help="the load generator's own ceiling on this machine")
    p.add_argument("--host")
    p.add_argument("--key-file", help="the server's key_file.json (default: that of `make up`)")
    p.add_argument("-u", "--users", type=int, default=32)
    p.add_argument("-t", "--duration", default="15s")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.set_defaults(func=cmd_ceiling)

    p = sub.add_parser("soak", help="every model at LOAD x capacity for a long time: RSS, open "
                       "files, latency drift")
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.add_argument("--host")
    p.add_argument("--key-file", help="the server's key_file.json (default: that of `make up`)")
    p.add_argument("--load", type=float, default=0.7, help="fraction of the capacity the models "
                   "share (default 0.7)")
    p.add_argument("-t", "--duration", default="10m")
    p.add_argument("--capacity-duration", default="10s")
    p.add_argument("--out")
    p.set_defaults(func=cmd_soak)

    args = parser.parse_args(argv)
    known = models.names()
    unknown = [m for m in [*getattr(args, "models", []), getattr(args, "model", None)]
               if m is not None and m not in known]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {' '.join(known)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
