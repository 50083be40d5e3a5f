"""Fixtures shared by the tests, and the tiers. Integration tests run against a real TorchServe that
this session starts on free loopback ports, with its own run folder, and stops at the end.

A test's tier follows from the fixtures it uses (pytest's fixture closure), so it cannot drift from
what the test really needs: `unit` needs no model built and no server (`make test-fast`),
`integration` builds or serves, `docker` needs an engine, `arm64` the emulated images, `gpu` a CUDA
device. Registered in pyproject.toml."""

from __future__ import annotations

import os

import pytest

import models
from serving.build.pipeline import build_all
from serving.run.torchserve import Instance
from serving.run.torchserve import start_on_free_ports as serving_on_free_ports

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The fixtures that put a test in a tier above `unit` (the most demanding one wins the marker
# list's first place; a test gets every tier it reaches, e.g. arm64 tests are docker tests too).
TIER_OF_FIXTURE = {
    "docker_engine": "docker", "arm64_engine": "arm64", "cuda_device": "gpu",
    "build_info": "integration", "builds_or_serves": "integration",
    "client_environments": "integration",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = {tier for name, tier in TIER_OF_FIXTURE.items() if name in item.fixturenames}
        if tiers & {"docker", "arm64", "gpu"}:
            tiers.add("integration")
        for tier in sorted(tiers) or ["unit"]:
            item.add_marker(tier)


@pytest.fixture(scope="session")
def builds_or_serves() -> None:
    """Asked for by a test or fixture that builds a model or starts a server by itself (rather than
    through build_info or server), so that its tier says so."""


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine, or a skip that says why; where REQUIRE_DOCKER=1 or CI is set (as CI
    services set it) it fails instead, so a CI machine whose engine died cannot pass by skipping
    (.ci/run also stops when docker/start-engine.sh cannot start one)."""
    from tests.compose_stack import engine_answers

    if os.environ.get("SKIP_DOCKER_TESTS") == "1":
        pytest.skip("SKIP_DOCKER_TESTS=1: the Docker tests were skipped on purpose")
    if not engine_answers():
        reason = "no Docker engine answers (docker/start-engine.sh starts one, as .ci/run does)"
        if os.environ.get("REQUIRE_DOCKER") == "1" or \
                os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason + "; REQUIRE_DOCKER=1 or CI asks for the Docker tests")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def arm64_engine(docker_engine) -> None:
    if os.environ.get("SKIP_ARM64_TESTS") == "1":
        pytest.skip("SKIP_ARM64_TESTS=1: the arm64 tests were skipped on purpose")


@pytest.fixture(scope="session")
def cuda_device():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: the GPU tests run on a GPU machine (the device tool)")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def client_environments() -> None:
    """The environments of the clients nobody here wrote (.venv-clients, .venv-triton), which
    `make test` installs and `make test-fast` does not."""
    from tests.clients import environments_missing

    if missing := environments_missing():
        pytest.fail(f"{', '.join(missing)} missing: `make test` installs them")


@pytest.fixture(scope="session")
def build_info() -> dict[str, dict]:
    """Every model built (or found up to date) in model_store/, with its build info."""
    return build_all()


def start_on_free_ports(tmp_path_factory, models_to_serve: list[str], **instance_options) -> Instance:
    return serving_on_free_ports(tmp_path_factory.mktemp("ts"), models_to_serve, **instance_options)


@pytest.fixture(scope="session")
def server(build_info, tmp_path_factory) -> Instance:
    instance = start_on_free_ports(tmp_path_factory, list(models.NAMES))
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def front_door(server, tmp_path_factory):
    """The front door `make up` runs (docker/nginx, serving/run/frontdoor.py) before `server`: it
    checks the server's inference key, and TorchServe checks it again."""
    from serving.run.frontdoor import FrontDoor
    from serving.run.torchserve import free_port

    door = FrontDoor.before(server, list(models.NAMES), tmp_path_factory.mktemp("door"), free_port())
    door.start()
    try:
        yield door
    finally:
        door.stop()


@pytest.fixture(scope="session")
def grpc_door(front_door, client_environments, tmp_path_factory):
    """The Open Inference Protocol over gRPC in front of `front_door`, as `make up` runs it
    (`python -m serving grpc`, its own process); its address, host:port."""
    from serving.run import oip_grpc
    from serving.run.torchserve import free_port

    port = free_port()
    process = oip_grpc.start_process(f"127.0.0.1:{front_door.port}", port,
                                     tmp_path_factory.mktemp("grpc") / "grpc.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=15)
