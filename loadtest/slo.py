"""Service-level objectives: which limits apply to a model, and which a finished test broke."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

LIMITS = ("p95_ms", "p99_ms", "max_error_rate", "min_rps")


@dataclass(frozen=True)
class Measured:
    model: str
    requests: int
    failures: int
    p95_ms: float
    p99_ms: float
    rps: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def per_model() -> dict[str, dict]:
    """Each model folder's objectives (model.yaml `loadtest: slo:`)."""
    import models

    return {name: models.load(name).objectives for name in models.names()}


def load(path: str | Path | None, model_objectives: dict[str, dict],
         overrides: dict[str, float | None]) -> dict:
    """{"default": {...}, "models": {name: {...}}}: the file's defaults (and any `models:` it
    lists, over the folders'), with flag overrides applied to every model."""
    config = yaml.safe_load(Path(path).read_text()) if path else {}
    listed = {k: dict(v or {}) for k, v in (config.get("models") or {}).items()}
    config = {"default": dict(config.get("default") or {}),
              "models": {k: {**model_objectives.get(k, {}), **listed.get(k, {})}
                         for k in {*model_objectives, *listed}}}
    for key, value in overrides.items():
        if value is not None:
            config["default"][key] = value
            for limits in config["models"].values():
                limits[key] = value
    return config


def limits_for(config: dict, model: str) -> dict[str, float]:
    return {**config["default"], **config["models"].get(model, {})}


def check(config: dict, measured: list[Measured]) -> list[dict]:
    """One row per (model, limit): the limit, the measured value, and whether it held."""
    rows = []
    for m in measured:
        limits = limits_for(config, m.model)
        values = {"p95_ms": m.p95_ms, "p99_ms": m.p99_ms, "max_error_rate": m.error_rate,
                  "min_rps": m.rps}
        for key in LIMITS:
            if key not in limits:
                continue
            ok = values[key] >= limits[key] if key == "min_rps" else values[key] <= limits[key]
            rows.append({"model": m.model, "objective": key, "limit": limits[key],
                         "measured": values[key], "ok": ok})
    return rows
