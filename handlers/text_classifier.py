"""Texts in, the top-k labels of each text out: a Hugging Face sequence classifier.

Body: as the text embedder's (`{"texts": [...]}`, `{"text": "..."}` or a text/plain body).
Answer: `{"predictions": [[{"index", "label", "probability"}, ...], ...]}`, one list per text,
most probable first (KServe v1: each instance one text, each prediction its list). Labels come
from the model's config (id2label), written to labels.txt by the build.
"""

from __future__ import annotations

from pathlib import Path

import torch

from handlers.base import ModelFile
from handlers.classification import TopKAnswer, load_labels
from handlers.text_embedder import TextEmbedder


class TextClassifier(TopKAnswer, TextEmbedder):
    """Texts in, the top-k labels of each text out (Hugging Face sequence classification)."""

    settings_defaults = {**TextEmbedder.settings_defaults, "top_k": 3, "num_classes": None}

    @classmethod
    def _text_settings(cls, model: ModelFile) -> dict:
        return {**super()._text_settings(model), "top_k": min(3, model.num_outputs or 3)}

    def load_resources(self, model_dir: Path) -> None:
        super().load_resources(model_dir)
        self.labels = load_labels(model_dir, self.settings["num_classes"])

    def encode(self, outputs: torch.Tensor) -> dict:
        return {"predictions": self.predictions(outputs)}

    def predictions(self, outputs: torch.Tensor) -> list[list[dict]]:
        return [self.prediction(row) for row in outputs]

    def answer_schema(self) -> dict:
        return {"type": "object", "required": ["predictions"], "properties": {"predictions": {
            "type": "array", "items": self.prediction_schema()}}}
