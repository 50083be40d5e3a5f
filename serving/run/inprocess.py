"""A model's archive served in this process: the real handler, initialised from the real .mar with
TorchServe's own Context, called as a worker calls it. For fuzzing, worst-case timing and
benchmarks that need the handler without the frontend and its sockets."""

from __future__ import annotations

import importlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from serving.run.paths import MODEL_STORE


@dataclass
class Answer:
    status: int
    body: dict


class LoadedModel:
    """One archive's handler, initialised as a TorchServe worker initialises it."""

    def __init__(self, name: str, work_dir: Path, model_store: Path = MODEL_STORE,
                 gpu: int | None = None) -> None:
        from ts.context import Context

        model_dir = work_dir / name
        with zipfile.ZipFile(model_store / f"{name}.mar") as mar:
            mar.extractall(model_dir)
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        config = yaml.safe_load((model_dir / manifest["model"]["configFile"]).read_text())
        self.name = name
        self.batch_size = int(config.get("batchSize") or 1)
        if gpu is None and config.get("deviceType") == "gpu":
            import torch

            gpu = 0 if torch.cuda.is_available() else None  # as TorchServe gives its first worker
        self.context = Context(name, str(model_dir), manifest, self.batch_size, gpu, "0.12.0",
                               model_yaml_config=config)
        module = importlib.import_module(f"handlers.{Path(manifest['model']['handler']).stem}")
        from handlers.base import handler_class

        self.handler = handler_class(module)()
        self.handler.initialize(self.context)

    def handle(self, requests: list[tuple[bytes, str]]) -> list[Answer]:
        """One batch: (body, content type) per request -> each request's answer, as the worker
        would send them (status and JSON body)."""
        from ts.context import RequestProcessor

        self.context.request_processor = [RequestProcessor({"body": {"content-type": ctype}})
                                          for _, ctype in requests]
        rows = [{"body": bytearray(body)} for body, _ in requests]
        answers = self.handler.handle(rows, self.context)
        if not isinstance(answers, list) or len(answers) != len(requests):
            raise AssertionError(f"handle() returned {type(answers).__name__} of "
                                 f"{len(answers) if isinstance(answers, list) else '?'} answers "
                                 f"for {len(requests)} requests")
        return [Answer(self.status(i), json.loads(a)) for i, a in enumerate(answers)]

    def status(self, idx: int) -> int:
        code, _ = self.context.get_response_status(idx)
        return code or 200
