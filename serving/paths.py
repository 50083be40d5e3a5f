"""Where things live. Everything generated stays inside the repository's ignored folders."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build"          # per-model work folders: exported model, build info
MODEL_STORE = ROOT / "model_store"  # the .mar archives TorchServe loads
RUN_DIR = ROOT / "run"              # state of running services: configs, pid files, logs
CONFIG_PROPERTIES = ROOT / "config.properties"
