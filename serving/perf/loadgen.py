"""A small HTTP load generator for the served benchmark and the tuner: closed loop or open loop.

Locust drives the load tests (users, SLOs, Prometheus); this measures one server at one operating
point with as little of its own cost as possible, so that two servers are compared under the same
load. It runs in its own process (gevent, keep-alive connections) and reports its own CPU time,
since on a 2-core machine the generator competes with the server it measures.

- closed loop: `clients` connections, each sends its next request when the last one is answered;
  the throughput it reaches at enough clients is the server's saturation throughput.
- open loop: requests start at a fixed rate whatever the server does (evenly spaced); latency is
  counted from each request's scheduled start, so a server that falls behind is charged for the
  queue it builds (no coordinated omission).

    python -m serving.perf.loadgen URL --body FILE --content-type TYPE [--header K:V] \
        (--clients N | --rate R) --seconds S [--warmup S]
prints one JSON object: ok/s, latency percentiles (ms), answers by status (and the p99 of each
status other than 200), the generator's CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import uuid

from serving.perf.measure import percentile


def multipart(body: bytes, content_type: str, field: str = "data") -> tuple[bytes, str]:
    """`body` as a multipart/form-data upload in `field`: the one way to send raw bytes that both
    TorchServe and LitServe's form parsing accept."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"input\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    return head + body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def summary(latencies: list[float], statuses: dict, seconds: float, cpu: float,
            refused: dict | None = None) -> dict:
    """`latencies`: the 200s'; `refused`: the other answers' by status (a server that refuses
    fast is told apart from one that refuses late)."""
    ok = sorted(latencies)
    return {"seconds": seconds, "ok": len(ok), "ok_per_s": len(ok) / seconds if seconds else 0.0,
            "p50_ms": percentile(ok, 0.50) * 1000, "p90_ms": percentile(ok, 0.90) * 1000,
            "p99_ms": percentile(ok, 0.99) * 1000, "max_ms": (ok[-1] if ok else float("nan")) * 1000,
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "p99_ms_by_status": {str(k): percentile(sorted(v), 0.99) * 1000
                                 for k, v in (refused or {}).items() if v},
            "generator_cpu_s": cpu, "generator_cpu_share": cpu / seconds if seconds else 0.0}


def run(url: str, body: bytes, headers: dict, seconds: float, clients: int = 0, rate: float = 0.0,
        warmup: float = 1.0, timeout: float = 60.0) -> dict:
    import gevent
    from gevent.pool import Pool
    from geventhttpclient import HTTPClient, URL

    target = URL(url)
    pool_size = clients or max(16, min(512, int(rate * 2)))
    client = HTTPClient.from_url(target, concurrency=pool_size, connection_timeout=timeout,
                                 network_timeout=timeout)
    path = target.request_uri
    latencies: list[float] = []
    refused: dict = {}
    statuses: dict = {}
    window = {"start": float("inf"), "end": 0.0}

    def send(scheduled: float) -> None:
        try:
            response = client.post(path, body=body, headers=headers)
            response.read()
            status = response.status_code
        except Exception as e:  # noqa: BLE001 - counted as the answer this request got
            status = type(e).__name__
        finished = time.perf_counter()
        if window["start"] <= scheduled < window["end"]:
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(finished - scheduled)
            else:
                refused.setdefault(status, []).append(finished - scheduled)

    started = time.perf_counter()
    window["start"], window["end"] = started + warmup, started + warmup + seconds
    cpu_before = None
    if clients:
        def loop() -> None:
            while time.perf_counter() < window["end"]:
                send(time.perf_counter())

        greenlets = [gevent.spawn(loop) for _ in range(clients)]
        gevent.sleep(warmup)
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        gevent.joinall(greenlets, timeout=warmup + seconds + timeout)
    else:
        requests = Pool(pool_size * 4)
        interval, n = 1.0 / rate, 0
        while True:
            scheduled = started + n * interval
            if scheduled >= window["end"]:
                break
            if cpu_before is None and scheduled >= window["start"]:
                cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            delay = scheduled - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            requests.spawn(send, scheduled)
            n += 1
        requests.join(timeout=timeout)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    client.close()
    return summary(latencies, statuses, seconds, cpu, refused)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.perf.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="file holding one request body")
    parser.add_argument("--content-type", required=True)
    parser.add_argument("--multipart", action="store_true",
                        help="send the body as a multipart/form-data field named 'data'")
    parser.add_argument("--header", action="append", default=[], help="K:V, repeatable")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--clients", type=int, help="closed loop with this many connections")
    mode.add_argument("--rate", type=float, help="open loop at this many requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not counted, first")
    args = parser.parse_args(argv)
    from gevent import monkey

    monkey.patch_all()
    with open(args.body, "rb") as f:
        body = f.read()
    content_type = args.content_type
    if args.multipart:
        body, content_type = multipart(body, content_type)
    headers = {"Content-Type": content_type}
    for header in args.header:
        key, _, value = header.partition(":")
        headers[key.strip()] = value.strip()
    result = run(args.url, body, headers, args.seconds, clients=args.clients or 0,
                 rate=args.rate or 0.0, warmup=args.warmup)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
