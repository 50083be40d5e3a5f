"""Where things live. Everything generated stays inside the repository's ignored folders.

A container can point the service elsewhere through the environment, so that every command in it
(serve, ready, key) agrees: SERVING_CONFIG (a config.properties, with metrics.yaml beside it),
SERVING_MODEL_STORE (a folder of .mar archives): KServe's storage layout, a Kubernetes ConfigMap;
SERVING_RUN_DIR (state; TorchServe's is its torchserve/ folder).
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # serving/run/paths.py
BUILD_DIR = ROOT / "build"  # per-model work folders: exported model, build info
# The .mar archives TorchServe loads.
MODEL_STORE = Path(os.environ.get("SERVING_MODEL_STORE") or ROOT / "model_store")
# State of running services: configs, pid files, logs.
RUN_DIR = Path(os.environ.get("SERVING_RUN_DIR") or ROOT / "run")
CONFIG_PROPERTIES = Path(os.environ.get("SERVING_CONFIG") or ROOT / "config.properties")
