"""A compose project run through docker/compose.sh, for the Docker tests (amd64 and arm64)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from serving.run.paths import ROOT
from serving.run.torchserve import free_port

# The compose services' ports on the host network, as shipped. Where one is taken (`make up`'s
# service runs), a stack runs on free ports of its own instead (use_free_ports).
PORTS = {"frontdoor": 8080, "management": 8081, "metrics": 8082, "inference": 8085, "ready": 8086,
         "grpc_inference": 7070, "grpc_management": 7071, "prometheus": 9090, "locust": 9646,
         "v2_grpc": 8001}


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


class ComposeStack:
    def __init__(self, project: str, env: dict[str, str] | None = None) -> None:
        self.project = project
        self.env = dict(env or {})  # e.g. ARCH=arm64 for docker/compose.sh
        self.ports = dict(PORTS)
        self.override: dict[str, str] = {}  # COMPOSE_OVERRIDE, when the stack has its own ports

    def __call__(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(ROOT / "docker" / "compose.sh"), "-p", self.project, *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env, **self.override})
        if check and done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def bases(self) -> dict[str, dict]:
        """Each service built here: the base image docker/compose.sh gives its build, and that
        image's architecture on this engine (None: not there, so a build would ask a registry)."""
        services = json.loads(self("--profile", "build", "config", "--format", "json").stdout)["services"]
        found = {}
        for name, service in services.items():
            if "build" not in service:
                continue
            base = service["build"]["args"]["BASE_IMAGE"]
            done = subprocess.run(["docker", "image", "inspect", "-f", "{{.Architecture}}", base],
                                  capture_output=True, text=True)
            found[name] = {"image": base, "arch": done.stdout.strip() if done.returncode == 0 else None}
        return found

    def container(self, service: str) -> str:
        """The service's container (not a `compose run` one-off of the same service)."""
        return subprocess.run(
            ["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
             "--filter", f"label=com.docker.compose.service={service}",
             "--filter", "label=com.docker.compose.oneoff=False"],
            capture_output=True, text=True, check=True).stdout.strip()

    def inspect(self, service: str, template: str) -> str:
        return subprocess.run(["docker", "inspect", "-f", template, self.container(service)],
                              capture_output=True, text=True, check=True).stdout.strip()

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def key(self, api: str = "inference") -> dict[str, str]:
        """The key TorchServe wrote inside its container, read as a user would."""
        done = subprocess.run(["docker", "exec", self.container("torchserve"), "python", "-m",
                               "serving", "key", api], capture_output=True, text=True, check=True)
        return {"Authorization": f"Bearer {done.stdout.strip()}"}

    def busy_ports(self) -> list[int]:
        return [p for p in PORTS.values() if socket.socket().connect_ex(("127.0.0.1", p)) == 0]

    def use_free_ports(self, work: Path) -> None:
        """Free ports for every service, through the environment the images read
        (SERVING_*_PORT, FRONTDOOR_PORT) and a compose override with Prometheus' config and the
        Locust command."""
        self.ports.update({name: free_port() for name in PORTS})
        ports = self.ports
        prometheus_yml = (ROOT / "prometheus" / "prometheus.yml").read_text() \
            .replace("127.0.0.1:8082", f"127.0.0.1:{ports['metrics']}") \
            .replace("127.0.0.1:9646", f"127.0.0.1:{ports['locust']}")
        (work / "prometheus.yml").write_text(prometheus_yml)
        frontdoor, prometheus = f"http://127.0.0.1:{ports['frontdoor']}", f"127.0.0.1:{ports['prometheus']}"
        override = {"services": {
            "torchserve": {"environment": {f"SERVING_{key.upper()}_PORT": str(ports[key]) for key in
                                           ("inference", "management", "metrics", "grpc_inference",
                                            "grpc_management", "ready")}},
            "frontdoor": {"environment": {"TORCHSERVE_INFERENCE": f"127.0.0.1:{ports['inference']}",
                                          "TORCHSERVE_READY": f"127.0.0.1:{ports['ready']}",
                                          "FRONTDOOR_PORT": f"127.0.0.1:{ports['frontdoor']}"}},
            "grpc": {"environment": {"GRPC_UPSTREAM": f"127.0.0.1:{ports['frontdoor']}",
                                     "SERVING_V2_GRPC_PORT": str(ports["v2_grpc"])}},
            "prometheus": {
                "command": ["--config.file=/etc/prometheus/prometheus.yml",
                            "--storage.tsdb.path=/prometheus", f"--web.listen-address={prometheus}"],
                "volumes": [f"{work / 'prometheus.yml'}:/etc/prometheus/prometheus.yml:ro"],
                "healthcheck": {"test": ["CMD", "curl", "-fs", f"http://{prometheus}/-/ready"]}},
            "locust": {"command": [
                "run", "--host", frontdoor, "--prometheus-url", f"http://{prometheus}",
                "--metrics-host", "127.0.0.1", "--metrics-port", str(ports["locust"]), "-u", "6",
                "-t", "20s", "--slo-p95-ms", "30000", "--slo-p99-ms", "60000", "--slo-min-rps", "0.1"]},
        }}
        (work / "compose.ports.yml").write_text(json.dumps(override, indent=2))
        self.override["COMPOSE_OVERRIDE"] = str(work / "compose.ports.yml")

    def wait_healthy(self, service: str, timeout: float) -> float:
        """Seconds until the service's health check passes; fails with its log after timeout."""
        started = time.monotonic()
        while self.inspect(service, "{{.State.Health.Status}}") != "healthy":
            assert time.monotonic() - started < timeout, \
                self("logs", service, check=False).stdout[-3000:]
            time.sleep(2)
        return time.monotonic() - started

    def down(self) -> None:
        self("down", "-v", check=False)
        self.ports = dict(PORTS)
        self.override.clear()
