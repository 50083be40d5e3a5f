"""Clients nobody here wrote, run with .venv-clients' interpreter (`make test` installs
requirements-clients.txt there: their pins clash with the serving environment's)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from serving.paths import ROOT

CLIENTS = Path(__file__).resolve().parent


def client_python() -> Path:
    python = ROOT / ".venv-clients" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: `make test` installs requirements-clients.txt there")
    return python


def kserve_sdk(plan: dict) -> dict:
    """KServe's Python SDK (kserve_sdk.py here) run with the plan; what it returned."""
    done = subprocess.run([str(client_python()), str(CLIENTS / "kserve_sdk.py")],
                          input=json.dumps(plan), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)
