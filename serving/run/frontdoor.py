"""The front door: nginx with docker/nginx/nginx.conf in front of TorchServe's inference API, the
one way in wherever the service runs (`make up` here, docker compose, a Kubernetes pod, a KServe
predictor). TorchServe listens on a private loopback port behind it; the front door bounds bodies,
connections and time, allows only the content types the handlers read, checks the key, routes the
KServe v1 and Open Inference Protocol paths, and answers every refusal in JSON."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil

from serving.run.paths import ROOT

PORT = 8080  # where clients reach the service (SERVING_FRONTDOOR_PORT overrides it)
READY_PORT = 8086  # per-model readiness beside TorchServe, for it (SERVING_READY_PORT)
# The Open Inference Protocol over gRPC, in front of this door (serving/run/oip_grpc.py;
# SERVING_V2_GRPC_PORT): Triton's gRPC port, where its clients and perf_analyzer look first.
V2_GRPC_PORT = 8001
TEMPLATE = ROOT / "docker" / "nginx" / "nginx.conf"
RENDER = ROOT / "docker" / "nginx" / "render.sh"


def admission_limit(config: dict) -> int:
    """Requests the front door lets in flight to one model (its model-config.yaml): two full
    batches per worker, one running and one ready to go. That keeps every worker busy, so the
    model is saturated and nothing below saturation is refused, while no request waits behind
    more than one batch: past it the front door answers 503 at once. TorchServe's own queue
    (jobQueueSize) holds at least this many, so it never refuses what the front door admitted."""
    return 2 * int(config.get("minWorkers") or 1) * int(config.get("batchSize") or 1)


def admission_limits(instance, models: list[str]) -> dict[str, int]:
    """admission_limit of each of `models`, from the archives `instance` serves."""
    return {name: admission_limit(instance.archive_config(name)) for name in models}


def model_limits(limits: dict[str, int]) -> str:
    """render.sh's FRONTDOOR_MODEL_LIMITS."""
    return " ".join(f"{name}={limit}" for name, limit in sorted(limits.items()))


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise RuntimeError("nginx is not installed: apt-get install nginx-light (make setup "
                           "does this as root)")
    return nginx


def running_in(run_dir: Path) -> psutil.Process | None:
    """The nginx master of the front door whose files are in `run_dir`: its pid file's process,
    when its command line names that folder's config (nginx rewrites its title into one string,
    "nginx: master process ... -c <config> ...", so a stale pid is never signalled)."""
    try:
        proc = psutil.Process(int((run_dir / "nginx.pid").read_text().split()[0]))
        cmdline = " ".join(proc.cmdline())
    except (FileNotFoundError, ValueError, IndexError, psutil.Error):
        return None
    return proc if str(run_dir / "nginx.conf") in cmdline else None


class FrontDoor:
    """docker/nginx's config rendered for `upstreams` (host:port of TorchServe's inference API),
    listening on 127.0.0.1:`port`, with its temporary files and pid in `run_dir`."""

    def __init__(self, run_dir: Path, upstreams: list[str], key: str, port: int,
                 extra_env: dict[str, str] | None = None, other_keys: tuple[str, ...] = ()) -> None:
        """`key`: the inference key clients must send ("" lets every request through to
        TorchServe). `other_keys`: keys of other APIs (TorchServe's management key), refused
        with 403. `extra_env`: more of render.sh's settings (TORCHSERVE_READY,
        FRONTDOOR_MAX_REQUESTS), as a pod sets them."""
        self.run_dir, self.port, self.key = run_dir, port, key
        run_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TORCHSERVE_INFERENCE": " ".join(upstreams),
               "FRONTDOOR_PORT": f"127.0.0.1:{port}", "FRONTDOOR_KEY": key,
               "FRONTDOOR_OTHER_KEYS": " ".join(other_keys), **(extra_env or {})}
        config = subprocess.run(["sh", str(RENDER), str(TEMPLATE)], env=env, check=True,
                                capture_output=True, text=True).stdout
        # Its temporary files and pid under this run folder (the image puts them in /tmp).
        config = config.replace("/tmp/nginx", str(run_dir / "nginx"))
        self.config = run_dir / "nginx.conf"
        self.config.write_text(config)
        os.chmod(self.config, 0o600)  # it holds the key
        self.process: subprocess.Popen | None = None

    @classmethod
    def before(cls, instance, models: list[str], run_dir: Path | None = None,
               port: int | None = None, ready: str = "") -> "FrontDoor":
        """The front door `make up` runs before `instance`, serving `models`: its inference key is
        the one clients send (TorchServe checks it again), its other keys are answered 403 here,
        and each model is admitted up to its admission_limit. `ready`: host:port of the
        per-model readiness (`python -m serving readiness`)."""
        keys = instance.keys()
        limits = admission_limits(instance, models)
        return cls(run_dir or instance.run_dir.parent / "frontdoor",
                   [f"127.0.0.1:{instance.ports['inference']}"], keys.get("inference", ""),
                   port or instance.ports["frontdoor"],
                   extra_env={"FRONTDOOR_MODEL_LIMITS": model_limits(limits),
                              **({"TORCHSERVE_READY": ready} if ready else {})},
                   other_keys=tuple(k for api, k in sorted(keys.items()) if api != "inference"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> psutil.Process | None:
        return running_in(self.run_dir)

    def start(self, detach: bool = False) -> None:
        """Starts nginx and waits until it answers. `detach`: it outlives this process (`make
        up`); `stop` finds it again by its pid file."""
        from serving.run.process import wait_http

        log = open(self.run_dir / "nginx.log", "ab")
        self.process = subprocess.Popen([nginx_binary(), "-c", str(self.config), "-e", "stderr",
                                         "-g", "daemon off;"], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            wait_http(f"{self.url}/nginx-health", timeout=20)
        except Exception:
            self.stop()
            raise RuntimeError(f"the front door did not start; see {self.run_dir / 'nginx.log'}")
        if detach:
            self.process = None

    def process_handle(self) -> psutil.Process | None:
        """nginx's master process as psutil sees it (its workers are its children)."""
        if self.process is None:
            return self.running()
        try:
            return psutil.Process(self.process.pid)
        except psutil.NoSuchProcess:
            return None

    def stop(self, timeout: float = 10) -> bool:
        stopped = stop(self.process_handle(), timeout)
        if self.process:
            self.process.wait(timeout=5)  # reaped: no zombie left behind
        return stopped


def stop(proc: psutil.Process | None, timeout: float = 10) -> bool:
    """A graceful stop (SIGQUIT: what it accepted is answered first); False when not running."""
    if proc is None or not proc.is_running():
        return False
    try:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(timeout=timeout)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.NoSuchProcess:
        pass
    return True
