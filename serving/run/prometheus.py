"""Run a real Prometheus beside TorchServe: Debian's prometheus binary, on loopback, with the
repository's config and recording rules, its data under the run folder."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from serving.run.paths import ROOT, RUN_DIR
from serving.run.process import owned_process, stop_tree

CONFIG_DIR = ROOT / "prometheus"
DEFAULT_PORT = 9090
LOADTEST_METRICS_PORT = 9646  # where the load generator exposes its client-side histogram


class PrometheusError(RuntimeError):
    pass


def binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise PrometheusError("the prometheus binary is not installed. On Debian/Ubuntu: "
                              "apt-get install prometheus (2.42 on Debian 12); `make setup` "
                              "does this when it runs as root")
    return found


@dataclass(frozen=True)
class Prometheus:
    """One Prometheus server scraping one TorchServe and one load generator."""

    run_dir: Path = RUN_DIR / "prometheus"
    port: int = DEFAULT_PORT
    address: str = "127.0.0.1"  # where it listens (and is reached)
    torchserve_metrics: str = "127.0.0.1:8082"
    loadtest_metrics: str = f"127.0.0.1:{LOADTEST_METRICS_PORT}"
    scrape_interval: str | None = None  # None: as prometheus/prometheus.yml says
    # Several TorchServe instances, as (pod name, host:port): each scraped with the namespace and
    # pod labels the Prometheus Operator adds in a cluster (the autoscaler's per-pod series).
    torchserve_pods: tuple[tuple[str, str], ...] = ()

    @classmethod
    def at(cls, url: str) -> "Prometheus":
        """A Prometheus that runs elsewhere (another container), for queries only."""
        from urllib.parse import urlparse

        parsed = urlparse(url)
        return cls(address=parsed.hostname or "127.0.0.1", port=parsed.port or DEFAULT_PORT)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.run_dir / "prometheus.yml"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "prometheus.pid"

    def render_config(self) -> Path:
        config = yaml.safe_load((CONFIG_DIR / "prometheus.yml").read_text())
        targets = {"torchserve": self.torchserve_metrics, "loadtest": self.loadtest_metrics}
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
            if job["job_name"] == "torchserve" and self.torchserve_pods:
                job["static_configs"] = [{"targets": [target], "labels": {
                    "namespace": "model-serving", "pod": pod}} for pod, target in self.torchserve_pods]
        config["rule_files"] = [str(CONFIG_DIR / f) for f in config["rule_files"]]
        if self.scrape_interval:
            config["global"]["scrape_interval"] = self.scrape_interval
            config["global"]["evaluation_interval"] = self.scrape_interval
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_file

    def process(self):
        return owned_process(self.pid_file, f"--config.file={self.config_file}")

    def start(self) -> int:
        if proc := self.process():
            raise PrometheusError(f"Prometheus already runs from {self.run_dir} (pid {proc.pid})")
        command = [
            binary(),
            f"--config.file={self.render_config()}",
            f"--storage.tsdb.path={self.run_dir / 'data'}",
            f"--web.listen-address={self.address}:{self.port}",
            "--storage.tsdb.retention.time=7d",
            "--web.enable-lifecycle",
        ]
        with open(self.run_dir / "prometheus.log", "ab") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.run_dir)
        self.pid_file.write_text(str(proc.pid))
        # Until the child has exec'd, its command line is still ours and process() cannot know it.
        deadline = time.monotonic() + 10
        while self.process() is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return proc.pid

    def stop(self) -> bool:
        proc = self.process()
        if proc is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop_tree(proc)
        self.pid_file.unlink(missing_ok=True)
        return True

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process() is None:
                raise PrometheusError(f"Prometheus exited; see {self.run_dir / 'prometheus.log'}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise PrometheusError(f"Prometheus not ready after {timeout:.0f}s")

    # -- queries ---------------------------------------------------------------------------------

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._get("query", params)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self._get("query_range", {"query": expr, "start": f"{start:.3f}",
                                          "end": f"{end:.3f}", "step": f"{step:g}"})

    def _get(self, endpoint: str, params: dict) -> list[dict]:
        response = requests.get(f"{self.url}/api/v1/{endpoint}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{endpoint} {params['query']!r}: {body.get('error')}")
        return body["data"]["result"]

    def targets_up(self) -> dict[str, bool]:
        response = requests.get(f"{self.url}/api/v1/targets", timeout=10).json()
        return {t["labels"]["job"]: t["health"] == "up"
                for t in response["data"]["activeTargets"]}
