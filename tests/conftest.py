"""Fixtures shared by the tests. Integration tests run against a real TorchServe that this session
starts on free loopback ports, with its own run folder, and stops at the end."""

from __future__ import annotations

import os

import pytest

import models
from serving.build import build_all
from serving.torchserve import Instance
from serving.torchserve import start_on_free_ports as serving_on_free_ports

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
    """The front door `make up` runs (docker/nginx, serving/frontdoor.py) before `server`: it
    checks the server's inference key, and TorchServe checks it again."""
    from serving.frontdoor import FrontDoor
    from serving.torchserve import free_port

    door = FrontDoor.before(server, list(models.NAMES), tmp_path_factory.mktemp("door"), free_port())
    door.start()
    try:
        yield door
    finally:
        door.stop()
