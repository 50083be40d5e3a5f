"""Fixtures shared by the tests. Integration tests run against a real TorchServe that this session
starts on free loopback ports, with its own run folder, and stops at the end."""

from __future__ import annotations

import os

import pytest

import models
from serving.build import build_all
from serving.torchserve import Instance

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def build_info() -> dict[str, dict]:
    """Every model built (or found up to date) in model_store/, with its build info."""
    return build_all()


@pytest.fixture(scope="session")
def server(build_info, tmp_path_factory) -> Instance:
    instance = Instance.on_free_ports(run_dir=tmp_path_factory.mktemp("ts"))
    instance.start(list(models.NAMES))
    try:
        instance.wait_ready(list(models.NAMES), timeout=300)
        yield instance
    finally:
        instance.stop()
