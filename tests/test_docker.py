"""docker compose for real: the committed compose file validated; images built on a real Docker
engine from a base image made here (no registry); the services up and healthy; a prediction per
model; the composed Prometheus; the locust service's run; then down -v.

Needs a running engine (docker/start-engine.sh, which .ci/run calls): without one these tests skip
and say so, or fail where CI or REQUIRE_DOCKER=1 is set; SKIP_DOCKER_TESTS=1 skips them on purpose
(tests/conftest.py, docker_engine)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from models.efficientnet_lite0.photos import encoded
from serving.run.paths import ROOT
from tests.compose_stack import ComposeStack


PROJECT = "model-serving-test"
STACK = ComposeStack(PROJECT)
compose, container, inspect, url, key = STACK, STACK.container, STACK.inspect, STACK.url, STACK.key


def config(*files: str, profiles: tuple[str, ...] = ()) -> dict:
    binary = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c",
         "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    command = [binary]
    for f in files:
        command += ["-f", f]
    for p in profiles:
        command += ["--profile", p]
    done = subprocess.run([*command, "config", "--format", "json"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def test_the_committed_compose_file_is_valid():
    base = config("docker-compose.yml")
    services = base["services"]
    assert set(services) == {"torchserve", "frontdoor", "grpc", "prometheus", "locust"}  # rest: profiles
    assert "serving" in " ".join(services["torchserve"]["healthcheck"]["test"])
    assert "ready" in services["torchserve"]["healthcheck"]["test"]
    assert "--probe" in services["grpc"]["healthcheck"]["test"]
    published = {name: [p["published"] for p in s.get("ports", [])] for name, s in services.items()}
    assert published == {"frontdoor": ["8080"], "grpc": ["8001"], "torchserve": [],
                         "prometheus": [], "locust": []}
    assert services["grpc"]["depends_on"]["frontdoor"]["condition"] == "service_healthy"
    assert [p["host_ip"] for p in services["grpc"]["ports"]] == ["127.0.0.1"]
    assert services["prometheus"]["depends_on"]["torchserve"]["condition"] == "service_healthy"
    assert {d: c["condition"] for d, c in services["locust"]["depends_on"].items()} == \
        {"frontdoor": "service_healthy", "prometheus": "service_healthy"}
    assert [p["host_ip"] for p in services["frontdoor"]["ports"]] == ["127.0.0.1"]
    mounts = {v["target"]: v for v in services["torchserve"]["volumes"]}
    assert mounts["/app/config.properties"]["read_only"] and mounts["/app/model_store"]["read_only"]
    for name, service in services.items():  # the container hardening, on every service
        assert service["read_only"] and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["mem_limit"] and service["pids_limit"], name
    assert not any("lifecycle" in arg or "admin-api" in arg
                   for arg in services["prometheus"]["command"])
    everything = config("docker-compose.yml", profiles=("distributed", "grafana", "build"))["services"]
    assert {"locust-master", "locust-worker", "grafana", "builder"} <= set(everything)
    assert everything["builder"]["entrypoint"] == ["python", "-m", "serving", "build"]
    assert everything["builder"]["build"]["target"] == "builder"
    assert {v["target"] for v in everything["builder"]["volumes"]} == {"/app/model_store"}
    assert "--master" in everything["locust-master"]["command"]
    assert "--worker" in everything["locust-worker"]["entrypoint"]
    grafana = everything["grafana"]["environment"]
    assert grafana["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana
    host = config("docker-compose.yml", "docker/compose.host.yml",
                  profiles=("distributed", "grafana"))["services"]
    assert {name: s.get("network_mode") for name, s in host.items()} == \
        {name: "host" for name in host}
    # arm64: the images built from docker/Dockerfile, the gRPC door's included (the front door and
    # Prometheus stay native); under emulation TorchServe and the builder see the stand-in CPU
    # folder, read-only, and the builder the host build's weights, read-only.
    arm64 = config("docker-compose.yml", "docker/compose.host.yml", "docker/compose.arm64.yml",
                   "docker/compose.emulated-arm64.yml", profiles=("build",))["services"]
    assert {n: s.get("platform") for n, s in arm64.items() if s.get("platform")} == \
        {"torchserve": "linux/arm64", "grpc": "linux/arm64", "builder": "linux/arm64",
         "locust": "linux/arm64"}
    for name in ("torchserve", "builder"):
        mounts = {v["target"]: v for v in arm64[name]["volumes"]}
        assert mounts["/sys/devices/system/cpu"]["read_only"], name
        assert bool(mounts["/app/model_store"].get("read_only")) == (name == "torchserve"), name
    assert {v["target"]: v.get("read_only") for v in arm64["builder"]["volumes"]}["/app/host-build"]


def test_the_grafana_dashboard_plots_the_recorded_series():
    dashboard = json.loads((ROOT / "docker/grafana/dashboards/serving.json").read_text())
    rules = (ROOT / "prometheus/rules.yml").read_text()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    recorded = [e.split("{")[0].split("(")[-1].split(")")[0].strip() for e in exprs]
    assert recorded and all(f"record: {r}" in rules for r in recorded), recorded


def test_every_image_builds_on_a_base_made_here(docker_engine):
    """No registry here: a base image that is not on the engine fails the build (CI ran into it)."""
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                            check=True).stdout.strip()
    bases = STACK.bases()
    assert set(bases) >= {"torchserve", "builder", "frontdoor", "prometheus", "locust"}, bases
    assert all(b == {"image": "model-serving-base:bookworm", "arch": native} for b in bases.values()), bases


@pytest.fixture(scope="module")
def image(docker_engine) -> dict:
    """The compose images, built (needs no ports: runs while `make up`'s service does)."""
    started = time.monotonic()
    compose("build")
    built = time.monotonic() - started
    size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", "model-serving:cpu"],
                              capture_output=True, text=True, check=True).stdout)
    return {"built_s": built, "size": size}


def test_each_image_carries_its_bill_of_materials_and_every_component_is_reviewed(image, tmp_path):
    """The bills the image builds wrote (/app/sbom), checked completely against docs/security.md:
    a new or upgraded component fails here until the review covers it."""
    from serving.build import sbom

    for tag, path in (("model-serving:cpu", "/app/sbom/serve.cdx.json"),
                      ("model-serving-frontdoor:nginx", "/app/sbom/frontdoor.cdx.json")):
        created = subprocess.run(["docker", "create", tag], capture_output=True, text=True,
                                 check=True).stdout.strip()
        try:
            out = tmp_path / Path(path).name
            subprocess.run(["docker", "cp", f"{created}:{path}", str(out)], check=True,
                           capture_output=True)
        finally:
            subprocess.run(["docker", "rm", created], capture_output=True)
        bill = json.loads(out.read_text())
        names = {sbom.component_name(c) for c in bill["components"]}
        assert {"torchserve", "io.netty/netty-codec-http", "java-runtime"} <= names or \
            {"nginx", "libssl3"} <= names, (tag, names)
        assert sbom.check(bill, sbom.reviewed(), complete=True) == [], tag


@pytest.fixture(scope="module")
def stack(image, tmp_path_factory):
    if busy := STACK.busy_ports():
        STACK.use_free_ports(tmp_path_factory.mktemp("compose"))
        print(f"\nports {busy} are taken (`make up`'s service?): the stack runs on {STACK.ports}")
    built, size = image["built_s"], image["size"]
    started = time.monotonic()
    compose("up", "-d")
    try:
        STACK.wait_healthy("torchserve", 300)
        healthy = time.monotonic() - started
        print(f"\nimages built in {built:.0f}s; model-serving:cpu is {size / 1e9:.2f} GB; "
              f"`up` to healthy in {healthy:.1f}s")
        yield {"size": size, "healthy_s": healthy}
    finally:
        STACK.down()


def test_torchserve_answers_every_model(stack):
    predictions = url("frontdoor", "/predictions")
    auth = key()
    digits = requests.post(f"{predictions}/digits", data=(ROOT / "models/digits/example.json").read_bytes(),
                           headers={"Content-Type": "application/json", **auth}, timeout=30)
    assert digits.status_code == 200 and digits.json()["predictions"][0]["label"] == "0"
    cat = requests.post(f"{predictions}/efficientnet_lite0", data=encoded("chelsea", "JPEG"),
                        headers={"Content-Type": "image/jpeg", **auth}, timeout=30)
    assert cat.status_code == 200 and cat.json()["predictions"][0]["index"] in range(281, 286)
    text = requests.post(f"{predictions}/minilm", json={"texts": ["a cat", "a dog sleeps"]}, headers=auth,
                         timeout=30)
    assert text.status_code == 200 and text.json()["dimensions"] == 384
    bad = requests.post(f"{predictions}/digits", data=b"{oops",
                        headers={"Content-Type": "application/json", **auth}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"] == "malformed_json"



def test_the_front_door_checks_keys_and_answers_health_and_readiness(stack):
    """The key TorchServe wrote, checked by nginx (401/403 in JSON, where TorchServe says 400
    InvalidKeyException); health open; per-model readiness from the serving process."""
    endpoint, body = url("frontdoor", "/predictions/digits"), b'{"pixels": [[0]]}'
    management = key("management")["Authorization"]
    for authorization, status, error in ((None, 401, "unauthorized"),
                                         ("Bearer wrong-key-0123", 401, "unauthorized"),
                                         (management, 403, "forbidden")):
        headers = {"Content-Type": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        started = time.monotonic()
        refused = requests.post(endpoint, data=body, headers=headers, timeout=30)
        assert (refused.status_code, refused.json()["error"]) == (status, error)
        assert time.monotonic() - started < 1
    assert requests.get(url("frontdoor", "/ping"), timeout=10).json() == {"status": "Healthy"}
    assert requests.get(url("frontdoor", "/v2/health/live"), timeout=10).status_code == 200
    ready = requests.get(url("frontdoor", "/v1/models/minilm"), timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
    listed = requests.get(url("frontdoor", "/v1/models"), timeout=10).json()["models"]
    assert sorted(listed) == ["digits", "efficientnet_lite0", "minilm"]
    # On the host's network nginx itself listens on loopback (`ports:` does not apply there).
    table = subprocess.run(["docker", "exec", container("frontdoor"), "cat", "/proc/net/tcp"],
                           capture_output=True, text=True, check=True).stdout
    door = [line.split()[1] for line in table.splitlines()[1:]
            if line.split()[3] == "0A" and int(line.split()[1].rsplit(":", 1)[1], 16) == STACK.ports["frontdoor"]]
    assert door == [f"0100007F:{STACK.ports['frontdoor']:04X}"], table


def test_the_grpc_door_serves_the_oip_with_the_front_doors_keys(stack):
    """compose's gRPC door (serving/run/oip_grpc.py), on loopback like the front door, in front of
    it: the key is checked, and a digit is answered as over REST."""
    import grpc

    from tests.test_grpc import call, digits_request

    STACK.wait_healthy("grpc", 120)
    address = f"127.0.0.1:{STACK.ports['v2_grpc']}"
    with pytest.raises(grpc.RpcError) as caught:
        call(address, "ModelInfer", digits_request())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answer = call(address, "ModelInfer", digits_request(),
                  [("authorization", key()["Authorization"])])
    labels = answer.raw_output_contents[[o.name for o in answer.outputs].index("label")]
    assert labels[4:5] == b"0"
    table = subprocess.run(["docker", "exec", container("grpc"), "cat", "/proc/net/tcp",
                            "/proc/net/tcp6"], capture_output=True, text=True).stdout
    listening = [line.split()[1].rsplit(":", 1)[0] for line in table.splitlines()
                 if len(line.split()) > 3 and line.split()[3] == "0A"
                 and line.split()[1].endswith(f":{STACK.ports['v2_grpc']:04X}")]
    # 127.0.0.1, as IPv4 or as gRPC's IPv4-mapped IPv6 socket (::ffff:127.0.0.1)
    assert listening and set(listening) <= {"0100007F", "0000000000000000FFFF00000100007F"}, table


def test_the_front_door_refuses_form_floods_and_passes_the_models_inputs(stack):
    endpoint = url("frontdoor", "/predictions/efficientnet_lite0")
    auth = key()
    started = time.monotonic()
    flood = requests.post(endpoint, data=b"a=1&" * 2_000_000, timeout=30, headers={
        "Content-Type": "application/x-www-form-urlencoded", **auth})
    assert flood.status_code == 415 and flood.json()["error"] == "unsupported_media_type"
    fields = "".join(f'--b\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n1\r\n'
                     for i in range(60_000)) + "--b--\r\n"
    multipart = requests.post(endpoint, data=fields.encode(), timeout=30, headers={
        "Content-Type": "multipart/form-data; boundary=b", **auth})
    assert multipart.status_code == 413 and multipart.json()["error"] == "too_large"
    assert time.monotonic() - started < 5
    upload = requests.post(endpoint, files={"data": ("cat.jpg", encoded("chelsea", "JPEG"), "image/jpeg")},
                           headers=auth, timeout=30)
    assert upload.status_code == 200 and upload.json()["predictions"][0]["index"] in range(281, 286)
    assert requests.get(url("frontdoor", "/other"), timeout=10).status_code == 404


def test_torchserve_runs_as_a_non_root_user_on_a_read_only_filesystem(stack):
    done = subprocess.run(["docker", "exec", container("torchserve"), "id", "-u"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() != "0"
    assert inspect("torchserve", "{{.HostConfig.ReadonlyRootfs}}") == "true"
    for path in ("/app/model_store/digits.mar", "/app/handlers/base.py", "/app/x"):
        write = subprocess.run(["docker", "exec", container("torchserve"), "sh", "-c",
                                f"echo x >> {path}"], capture_output=True, text=True)
        assert write.returncode != 0, path
    # Every listening socket of the container, from the kernel's table: management (8081) and
    # gRPC (7070, 7071) on loopback only, whatever the network mode.
    table = subprocess.run(["docker", "exec", container("torchserve"), "cat", "/proc/net/tcp",
                            "/proc/net/tcp6"], capture_output=True, text=True).stdout
    listening = {}
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:  # 0A: LISTEN
            address, port = fields[1].rsplit(":", 1)
            listening.setdefault(int(port, 16), set()).add(address)
    loopback = {"0100007F", "0000000000000000FFFF00000100007F",  # 127.0.0.1, ::ffff:127.0.0.1
                "00000000000000000000000001000000"}                  # ::1
    for port in (STACK.ports["management"], STACK.ports["grpc_inference"], STACK.ports["grpc_management"]):
        assert listening.get(port) and listening[port] <= loopback, (port, listening)


def test_the_composed_prometheus_records_torchserve(stack):
    requests.post(url("frontdoor", "/predictions/digits"),
                  data=(ROOT / "models/digits/example.json").read_bytes(),
                  headers={"Content-Type": "application/json", **key()}, timeout=30)
    deadline = time.monotonic() + 60
    while True:
        result = requests.get(url("prometheus", "/api/v1/query"), timeout=10, params={
            "query": 'sum(handler_stage_seconds_count{model_name="digits"})'}).json()["data"]["result"]
        if result and float(result[0]["value"][1]) > 0:
            break
        assert time.monotonic() < deadline, "Prometheus never recorded the handler histogram"
        time.sleep(2)
    up = requests.get(url("prometheus", "/api/v1/query"), params={"query": 'up{job="torchserve"}'},
                      timeout=10).json()["data"]["result"]
    assert [r["value"][1] for r in up] == ["1"]


def test_the_locust_service_runs_a_load_test(stack):
    # `up` started it once TorchServe and Prometheus were healthy; it runs 20 s and exits.
    deadline = time.monotonic() + 240
    while inspect("locust", "{{.State.Status}}") != "exited":
        assert time.monotonic() < deadline, compose("logs", "locust", check=False).stdout[-3000:]
        time.sleep(2)
    logs = compose("logs", "locust").stdout
    assert inspect("locust", "{{.State.ExitCode}}") == "0", logs[-3000:]
    assert "Report: /app/run/loadtest/" in logs
    for model in ("digits", "efficientnet_lite0", "minilm"):
        assert f"ok     {model}" in logs
    series = requests.get(url("prometheus", "/api/v1/query"), timeout=10, params={
        "query": "count by (model_name) (last_over_time(loadtest_requests_total[5m]))"}).json()
    assert len(series["data"]["result"]) == 3


def run_hardened(name: str, work: Path, store: Path | None, *serve_args: str) -> None:
    """The serving image run as compose runs it (hardened, host network, readiness as its health
    check), on ports of its own beside the stack, with short waits; `store` over the image's own
    model store (None: the archives built in the image)."""
    ports = {"8085": "18085", "8081": "18081", "8082": "18082", "7070": "17070",
             "7071": "17071", "9000": "19000"}
    text = (ROOT / "config.properties").read_text()
    for old, new in ports.items():
        text = re.sub(rf"(?<=[:=]){old}\b", new, text)
    (work / "config.properties").write_text(text)
    (work / "run").mkdir()
    (work / "run").chmod(0o777)  # TorchServe's logs and unpacked archive, as compose's volume
    for path in (work, *([store] if store else [])):
        path.chmod(0o755)
    for path in (*(store.iterdir() if store else []), work / "config.properties"):
        path.chmod(0o644)
    subprocess.run(["docker", "run", "-d", "--name", name, "--network", "host",
                    "--read-only", "--tmpfs", "/tmp", "-v", f"{work / 'run'}:/app/run/torchserve",
                    "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
                    "--restart", "on-failure:5",
                    "-e", "SERVING_MODELS=digits",  # what the health check asks about too
                    "--health-cmd", "python -m serving ready", "--health-interval", "3s",
                    "--health-retries", "1", "--health-timeout", "10s",
                    "--health-start-period", "1s",  # the image allows 180 s to warm up
                    *(["-v", f"{store}:/app/model_store:ro"] if store else []),
                    "-v", f"{work / 'config.properties'}:/app/config.properties:ro",
                    "model-serving:cpu", "python", "-m", "serving", "serve", "digits",
                    "--no-build", *serve_args],
                   capture_output=True, text=True, check=True)


def wait_for_state(name: str, done, timeout: float = 120) -> tuple[set, int]:
    """Polls the container until done(health statuses seen, restart count)."""
    seen, deadline = set(), time.monotonic() + timeout
    while True:
        found = json.loads(subprocess.run(["docker", "inspect", name], capture_output=True,
                                          text=True, check=True).stdout)[0]
        state, restarts = found["State"], found["RestartCount"]
        seen.add((state.get("Health") or {}).get("Status"))
        if done(seen, restarts):
            return seen, restarts
        assert time.monotonic() < deadline, (seen, restarts, state)
        time.sleep(1)


def test_an_archive_that_cannot_load_makes_the_container_unhealthy_and_restarted(image,
                                                                                 build_info):
    """A broken digits archive: the model never gets READY, so `serving serve` exits 1 when its
    start timeout passes, saying which model and where to look, the container reports unhealthy,
    and its restart policy starts it again; never a silent crash loop."""
    import tempfile

    from tests.archives import write_broken_digits

    work = Path(tempfile.mkdtemp(prefix="broken-archive-"))
    name = f"{PROJECT}-broken-archive"
    try:
        store = work / "store"
        store.mkdir()
        write_broken_digits(store / "digits.mar")
        run_hardened(name, work, store, "--timeout", "20", "--unready-exit", "10")
        seen, restarts = wait_for_state(name, lambda seen, restarts: restarts >= 1
                                        and "unhealthy" in seen)
        logs = subprocess.run(["docker", "logs", name], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True).stdout
        assert "not READY" in logs and "digits" in logs and "model_log" in logs, logs[-3000:]
        # on-failure restarts only after a non-zero exit: `serving serve` exited 1
        print(f"\nbroken archive: unhealthy, then restarted {restarts}x")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def test_a_model_that_stops_loading_after_ready_makes_the_container_exit_and_restart(image):
    """The other path of `serving serve --unready-exit` (the one above ends at the start timeout):
    digits READY and healthy, then its unpacked model file is broken and its workers killed, so
    every replacement fails to load; after --unready-exit seconds unready, serve exits 1 naming
    the model, and the restart policy starts the container again."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="stops-loading-"))
    name = f"{PROJECT}-stops-loading"
    try:
        # The image's own digits archive: built inside it, so its compiled artifact matches the
        # image's torch (one built on the host may not: a worker refuses it, never READY).
        manifest = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python",
                                   "model-serving:cpu", "-c",
                                   "import zipfile; print(zipfile.ZipFile('model_store/digits.mar')"
                                   ".read('MAR-INF/MANIFEST.json').decode())"],
                                  capture_output=True, text=True, check=True).stdout
        model_file = json.loads(manifest)["model"]["serializedFile"]
        run_hardened(name, work, None, "--timeout", "120", "--unready-exit", "8")
        wait_for_state(name, lambda seen, restarts: "healthy" in seen)
        unpacked = list((work / "run" / "tmp").rglob(model_file))
        assert unpacked, sorted(str(p) for p in (work / "run").rglob("*"))[:40]
        for path in unpacked:
            path.write_bytes(b"not a model")
        # (not this very process, whose own command line names the workers)
        subprocess.run(["docker", "exec", name, "python", "-c",
                        "import os, psutil\nfor p in psutil.process_iter(['cmdline']):\n"
                        "    if p.pid != os.getpid() and 'model_service_worker' in "
                        "' '.join(p.info['cmdline'] or []):\n        p.kill()"],
                       check=True, capture_output=True, text=True)
        seen, restarts = wait_for_state(name, lambda seen, restarts: restarts >= 1)
        logs = subprocess.run(["docker", "logs", name], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True).stdout
        assert "All 1 models READY" in logs, logs[-3000:]
        assert "digits not READY for 8s" in logs and "model_log" in logs, logs[-3000:]
        # ...because the replacements could not load the broken file, not merely slow to start
        model_log = (work / "run" / "logs" / "model_log.log").read_text(errors="replace")
        assert f"ArtifactLoadError: cannot load {model_file}" in model_log, model_log[-3000:]
        print(f"\nstopped loading after READY: exited, restarted {restarts}x (health seen: {seen})")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def test_docker_stop_under_load_loses_no_request(stack):
    """`docker stop` (SIGTERM) while clients keep EfficientNet busy through the front door: the
    server drains (readiness false, queues empty, quiet) before it stops, so every request sent
    until the clients stop is answered 200, and the container exits 0 well inside its grace.
    Last in this file: it stops the stack's TorchServe."""
    endpoint = url("frontdoor", "/predictions/efficientnet_lite0")
    auth = {"Content-Type": "image/jpeg", **key()}
    body = encoded("chelsea", "JPEG")
    answers: list[int] = []
    failures: list[tuple] = []  # (status, answer, seconds after SIGTERM it was sent)
    stop_at: list[float] = []
    lock = threading.Lock()
    started = time.monotonic()

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() - started < 4:  # SIGTERM goes at 1.5 s
                sent = time.monotonic() - stop_at[0] if stop_at else None
                try:
                    answer = session.post(endpoint, data=body, headers=auth, timeout=60)
                    status = answer.status_code
                    if status != 200:
                        failures.append((status, answer.text[:200], sent))
                except requests.RequestException as e:
                    status = type(e).__name__
                    failures.append((status, str(e)[:200], sent))
                with lock:
                    answers.append(status)

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop_started = time.monotonic()
    stop_at.append(stop_started)
    stop = subprocess.run(["docker", "stop", "-t", "40", container("torchserve")],
                          capture_output=True, text=True, timeout=60)
    stopped_in = time.monotonic() - stop_started
    for t in threads:
        t.join(timeout=90)
    logs = compose("logs", "torchserve", check=False).stdout
    assert stop.returncode == 0, stop.stderr
    counts = {status: answers.count(status) for status in set(answers)}
    print(f"\ndocker stop under load: {counts}; stopped in {stopped_in:.1f}s")
    assert set(counts) == {200} and counts[200] > 12, (counts, failures[:5])
    assert inspect("torchserve", "{{.State.ExitCode}}") == "0", logs[-3000:]
    assert "Drained in" in logs, logs[-3000:]
    assert stopped_in < 35, stopped_in
