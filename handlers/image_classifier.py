"""Image in (JPEG, PNG, ... as the raw body or a multipart field), top-k classes out."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from handlers.base import ModelHandler, Payload, RequestError, bad_request
from handlers.classification import load_labels, top_k


def open_rgb(data: bytes, max_pixels: int | None = None, target: int | None = None) -> Image.Image:
    """Decodes an image, refusing decompression bombs before their pixels are decoded."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise bad_request("not_an_image", "the body is not an image format this server reads "
                          "(JPEG, PNG, GIF, BMP, TIFF, WebP)") from None
    except Image.DecompressionBombError as e:
        raise RequestError(413, "too_large", str(e)) from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise RequestError(413, "too_large", f"the image has {width}x{height} = "
                           f"{width * height:,} pixels; the limit is {max_pixels:,}")
    if target:
        image.draft("RGB", (target, target))  # JPEG: decode at a reduced scale when it is enough
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise bad_request("corrupt_image", f"the image could not be decoded: {e}") from None
    return ImageOps.exif_transpose(image).convert("RGB")


def to_tensor(image: Image.Image, resize_size: int, crop_size: int) -> torch.Tensor:
    """Shorter side to `resize_size`, centre crop `crop_size`: (3, crop, crop) float in 0..255.
    Normalisation belongs to the exported model, which knows the statistics it was trained on."""
    width, height = image.size
    scale = resize_size / min(width, height)
    image = image.resize((max(crop_size, round(width * scale)), max(crop_size, round(height * scale))),
                         Image.BILINEAR)
    width, height = image.size
    left, top = (width - crop_size) // 2, (height - crop_size) // 2
    image = image.crop((left, top, left + crop_size, top + crop_size))
    return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)


class ImageClassifier(ModelHandler):
    settings_defaults = {"resize_size": 256, "crop_size": 224, "top_k": 5}

    def load_resources(self, model_dir: Path) -> None:
        self.labels = load_labels(model_dir)

    def decode(self, payload: Payload) -> list[torch.Tensor]:
        image = open_rgb(payload.bytes(), self.settings["max_image_pixels"],
                         self.settings["resize_size"])
        return [to_tensor(image, self.settings["resize_size"], self.settings["crop_size"])]

    def encode(self, outputs: torch.Tensor) -> dict:
        return {"predictions": top_k(outputs[0], self.labels, self.settings["top_k"])}

    def warmup_items(self) -> list[torch.Tensor]:
        size = self.settings["crop_size"]
        return [torch.full((3, size, size), 127.0)]
