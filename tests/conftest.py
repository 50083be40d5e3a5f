"""Fixtures shared by the tests. Integration tests run against a real TorchServe that this session
starts on free loopback ports, with its own run folder, and stops at the end."""

from __future__ import annotations

import os

import pytest

import models
from serving.build import build_all
from serving.torchserve import Instance, ServeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def build_info() -> dict[str, dict]:
    """Every model built (or found up to date) in model_store/, with its build info."""
    return build_all()


def start_on_free_ports(tmp_path_factory, models_to_serve: list[str], attempts: int = 2,
                        **instance_options) -> Instance:
    """Free ports are only free when picked: another process may take one before TorchServe
    binds it, so a failed start is retried once on new ports (the log of each try is kept)."""
    for attempt in range(1, attempts + 1):
        instance = Instance.on_free_ports(run_dir=tmp_path_factory.mktemp("ts"), **instance_options)
        try:
            instance.start(models_to_serve)
            instance.wait_ready(models_to_serve, timeout=300)
            return instance
        except ServeError:
            instance.stop()
            if attempt == attempts:
                raise


@pytest.fixture(scope="session")
def server(build_info, tmp_path_factory) -> Instance:
    instance = start_on_free_ports(tmp_path_factory, list(models.NAMES))
    try:
        yield instance
    finally:
        instance.stop()
