"""Clients nobody here wrote, run with .venv-clients' interpreter (`make test` installs
requirements-clients.txt there: their pins clash with the serving environment's)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from serving.run.paths import ROOT

CLIENTS = Path(__file__).resolve().parent


def run_client(environment: str, script: str, plan: dict) -> dict:
    """`script` (in this folder) run by the interpreter of `environment` with the plan on stdin;
    the JSON it printed."""
    python = ROOT / environment / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: `make test` installs it (requirements-*.txt)")
    done = subprocess.run([str(python), str(CLIENTS / script)], input=json.dumps(plan),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def environments_missing() -> list[str]:
    return [env for env in (".venv-clients", ".venv-triton")
            if not (ROOT / env / "bin" / "python").exists()]


def kserve_sdk(plan: dict) -> dict:
    """KServe's Python SDK (kserve_sdk.py) run with the plan; what it returned."""
    return run_client(".venv-clients", "kserve_sdk.py", plan)


def triton_client(plan: dict) -> dict:
    """Triton's Python clients (triton.py) run with the plan; what they returned."""
    return run_client(".venv-triton", "triton.py", plan)


def descriptors(environment: str, modules: list[str], messages: list[str]) -> dict:
    """The messages' fields as `modules` (a client project's generated code) define them."""
    return run_client(environment, "descriptors.py", {"modules": modules, "messages": messages})
