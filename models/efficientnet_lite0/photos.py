"""Real photographs for parity checks and tests: scikit-image's bundled samples, no download."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SAMPLES = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel",
           "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page",
           "retina", "rocket", "text")


def sample(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def encoded(name: str, fmt: str = "PNG", mirror: bool = False) -> bytes:
    """A sample photograph encoded as it would arrive over HTTP."""
    pixels = sample(name)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    image = Image.fromarray(pixels)
    if mirror:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if fmt == "JPEG":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def all_encoded() -> list[bytes]:
    """Every sample, as is and mirrored."""
    return [encoded(name, mirror=m) for m in (False, True) for name in SAMPLES]


def jpeg_bodies() -> list[bytes]:
    """Load-test bodies: every sample as a JPEG, as a client would send it."""
    return [encoded(name, "JPEG") for name in SAMPLES]
