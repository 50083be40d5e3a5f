"""Sentences in, L2-normalised sentence embeddings out.

Body: `{"texts": ["...", ...]}`, `{"text": "..."}`, or a text/plain body holding one sentence.
Answer: `{"embeddings": [[...], ...], "dimensions": D}`, one row per sentence, in order.
KServe v1: each instance is one text; each prediction its embedding.
The exported model does the mean pooling over the attention mask and the normalisation, so
padding a sentence to a longer bucket does not change its embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy
import torch

from handlers.base import (JSON, ModelFile, ModelHandler, Payload, Scaffold, bad_request,
                           unprocessable)

TOKENIZER_FILE = "tokenizer.json"
# A new folder's example requests (`serving new`), one sentence each.
EXAMPLE_TEXTS = ["The service answered every request within its latency objective.",
                 "A quick brown fox jumps over the lazy dog.",
                 "This film was a delight from start to finish.",
                 "The delivery arrived late and the box was damaged.",
                 "Interest rates rose for the third time this year.",
                 "Please reset my password; I cannot log in.",
                 "The museum reopened after a two-year renovation.",
                 "Heavy rain is expected across the north over the weekend."]


class TextEmbedder(ModelHandler):
    """Texts in, one L2-normalised embedding per text out, in order."""

    request_content_types = (JSON, "text/plain")
    settings_defaults = {"max_tokens": 256, "sequence_buckets": [16, 32, 64, 128, 256],
                         "pad_token_id": 0, "max_tokens_per_request": 2048}

    @classmethod
    def worst_requests(cls, settings: dict) -> dict[str, tuple[bytes, str]]:
        tokens, longest = settings["max_tokens_per_request"], settings["max_tokens"]
        texts = {"longest texts (token limit)": ["word " * longest] * (tokens // longest),
                 "most texts (item limit)": ["a short sentence of words"] *
                 settings["max_items_per_request"],
                 "longest characters": ["x" * settings["max_text_chars"]]}
        return {name: (json.dumps({"texts": t}).encode(), JSON) for name, t in texts.items()}

    @classmethod
    def scaffold(cls, model: ModelFile, count: int) -> Scaffold:
        return Scaffold(cls._text_settings(model), [
            (".json", json.dumps({"texts": [EXAMPLE_TEXTS[i % len(EXAMPLE_TEXTS)]]}).encode())
            for i in range(count)], [])

    @classmethod
    def _text_settings(cls, model: ModelFile) -> dict:
        if not model.text:
            raise ValueError("serves a Hugging Face directory (config.json, weights, "
                             "tokenizer.json), not a tensor program")
        return dict(model.text)

    def load_resources(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=int(self.settings["max_tokens"]))
        self.buckets = sorted(int(b) for b in self.settings["sequence_buckets"])

    def _texts(self, payload: Payload) -> list[str]:
        body = None if payload.content_type.startswith("text/") else payload.json()
        if body is None:  # text/plain: the whole body is one text, checked as the others are
            texts = [payload.text()]
        elif isinstance(body, dict) and "texts" in body:
            texts = body["texts"]
        elif isinstance(body, dict) and "text" in body:
            texts = [body["text"]]
        elif isinstance(body, str):
            texts = [body]
        else:
            raise unprocessable("missing_field", 'send {"texts": ["...", ...]} or {"text": "..."}')
        if not isinstance(texts, list):
            raise unprocessable("wrong_type", '"texts" must be a list of strings')
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise unprocessable("wrong_type", f"texts[{i}] is {type(text).__name__}, not a string")
            if not text.strip():
                raise unprocessable("empty_text", f"texts[{i}] is empty")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate, e.g. "\ud800" in JSON
                raise bad_request("not_utf8", f"texts[{i}] is not valid Unicode") from None
        return texts

    def decode(self, payload: Payload) -> list[list[int]]:
        texts = self._texts(payload)
        self.enforce_limit("max_items_per_request", len(texts), "the number of texts")
        for text in texts:
            self.enforce_limit("max_text_chars", len(text), "a text's length in characters")
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]
        # The model's work is the padded tokens: bounded per request, so a full batch of the
        # worst requests still finishes well inside responseTimeout (`make worst-case`).
        self.enforce_limit("max_tokens_per_request", sum(self._padded_length(len(i)) for i in ids),
                           "the number of tokens (each text padded to its length bucket)")
        return ids

    def _padded_length(self, tokens: int) -> int:
        return next((b for b in self.buckets if b >= tokens), tokens)

    def run_order(self, items: list[list[int]]) -> list[int]:
        """Shortest first: each chunk is padded only to its own longest text."""
        return sorted(range(len(items)), key=lambda i: len(items[i]))

    def collate(self, items: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = self._padded_length(max(len(ids) for ids in items))
        input_ids = torch.full((len(items), length), int(self.settings["pad_token_id"]))
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, ids in enumerate(items):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention_mask[row, :len(ids)] = 1
        return input_ids, attention_mask

    def decode_instances(self, instances: list) -> list[list[int]]:
        """Every instance a text, read as one request's texts: the token limit covers them all."""
        return self.decode(Payload({"texts": instances}, JSON))

    def encode(self, outputs: torch.Tensor) -> dict:
        return {"embeddings": self.predictions(outputs), "dimensions": outputs.shape[-1]}

    def predictions(self, outputs: torch.Tensor) -> list:
        # Normalised again in fp32: a bf16 model's own normalisation leaves norms 1 +- 0.003.
        outputs = torch.nn.functional.normalize(outputs.float(), p=2.0, dim=-1)
        # Rounded in numpy, not per float in Python: 2.5x faster for a batch of 8 (encoding was 13%
        # of a MiniLM worker's time at saturation), the same values to the 6th decimal.
        return numpy.round(outputs.double().numpy(), 6).tolist()

    def prediction(self, row: torch.Tensor) -> list[float]:
        return self.predictions(row[None])[0]

    def native_instances(self, payload: Payload) -> list:
        return self._texts(payload)

    def oip_inputs(self) -> list[dict]:
        return [{"name": "text", "datatype": "BYTES", "shape": [-1, 1],
                 "parameters": {"content_type": "str"}}]

    def oip_outputs(self, outputs: torch.Tensor | None) -> list[dict]:
        if outputs is None:
            return [{"name": "embedding", "datatype": "FP32",
                     "shape": [-1, *(self.output_row_shape or [-1])]}]
        rows = numpy.array(self.predictions(outputs), numpy.float32)
        return [{"name": "embedding", "datatype": "FP32", "shape": list(rows.shape), "data": rows}]

    def instance_schema(self) -> dict:
        return self.request_schema()["text/plain"]

    def prediction_schema(self) -> dict:
        return {"type": "array", "items": {"type": "number"}}

    def warmup_items(self) -> list[list[int]]:
        """One item per sequence bucket, each exactly that many tokens long."""
        ids = self.tokenizer.encode("the " * self.buckets[-1]).ids  # [CLS] the the ... [SEP]
        return [ids[:length - 1] + ids[-1:] for length in self.buckets]

    def request_schema(self) -> dict:
        text = {"type": "string", "minLength": 1, "maxLength": self.settings["max_text_chars"],
                "pattern": "\\S"}
        return {JSON: {"oneOf": [
                    {"type": "object", "required": ["texts"], "properties": {"texts": {
                        "type": "array", "items": text, "minItems": 1,
                        "maxItems": self.settings["max_items_per_request"]}}},
                    {"type": "object", "required": ["text"], "properties": {"text": text}}]},
                "text/plain": text}

    def answer_schema(self) -> dict:
        return {"type": "object", "required": ["embeddings", "dimensions"], "properties": {
            "embeddings": {"type": "array", "items": self.prediction_schema()},
            "dimensions": {"type": "integer"}}}
