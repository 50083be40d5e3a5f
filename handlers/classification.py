"""Encoding classifier outputs: labels and top-k probabilities, shared by the classifiers."""

from __future__ import annotations

from pathlib import Path

import numpy
import torch

LABELS_FILE = "labels.txt"


def load_labels(model_dir: Path, num_classes: int | None = None) -> list[str]:
    """Class names, one per line in labels.txt; class indices as names when there is no file."""
    path = model_dir / LABELS_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").splitlines()
    if num_classes is None:
        raise FileNotFoundError(f"{path} is missing and the number of classes is unknown")
    return [str(i) for i in range(num_classes)]


def top_k(logits: torch.Tensor, labels: list[str], k: int) -> list[dict]:
    """One row of logits -> the k most probable classes, most probable first."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [{"index": int(i), "label": labels[int(i)], "probability": round(float(p), 6)}
            for p, i in zip(values, indices)]


PREDICTION_SCHEMA = {
    "type": "object", "required": ["index", "label", "probability"],
    "properties": {"index": {"type": "integer", "minimum": 0}, "label": {"type": "string"},
                   "probability": {"type": "number", "minimum": 0, "maximum": 1}}}


def predictions_schema(k: int) -> dict:
    """The k most probable classes, most probable first."""
    return {"type": "array", "items": PREDICTION_SCHEMA, "minItems": 1, "maxItems": k}


class TopKAnswer:
    """A classifier handler's answers (with `self.labels` and the `top_k` setting): each item's
    k most probable classes; a request of one item is answered `{"predictions": [...]}`."""

    def prediction(self, row: torch.Tensor) -> list[dict]:
        return top_k(row, self.labels, self.settings["top_k"])

    def prediction_schema(self) -> dict:
        return predictions_schema(self.settings["top_k"])

    def encode(self, outputs: torch.Tensor) -> dict:
        return {"predictions": self.prediction(outputs[0])}

    def answer_schema(self) -> dict:
        return {"type": "object", "required": ["predictions"],
                "properties": {"predictions": self.prediction_schema()}}

    def oip_outputs(self, outputs: torch.Tensor | None) -> list[dict]:
        """The top-k answer as three [batch, k] tensors: class indices, labels, probabilities."""
        k = self.settings["top_k"]
        fields = (("index", "INT64"), ("label", "BYTES"), ("probability", "FP32"))
        if outputs is None:
            return [{"name": name, "datatype": datatype, "shape": [-1, k]}
                    for name, datatype in fields]
        tops = self.predictions(outputs)
        shape = [len(tops), len(tops[0])]
        return [{"name": "index", "datatype": "INT64", "shape": shape,
                 "data": numpy.array([[p["index"] for p in top] for top in tops], numpy.int64)},
                {"name": "label", "datatype": "BYTES", "shape": shape,
                 "data": [p["label"].encode() for top in tops for p in top]},
                {"name": "probability", "datatype": "FP32", "shape": shape,
                 "data": numpy.array([[p["probability"] for p in top] for top in tops],
                                     numpy.float32)}]
