"""Image in (JPEG, PNG, ... as the raw body or a multipart field), top-k classes out.

KServe v1: each instance is `{"b64": "<the image file, base64>"}`."""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from handlers.base import (ModelFile, ModelHandler, Payload, RequestError, Scaffold, bad_request,
                           decode_base64, unprocessable)
from handlers.classification import TopKAnswer, load_labels

FORMATS = "JPEG, PNG, GIF, BMP, TIFF, WebP"
DECODER_BLOCK = 4096
SOI, SOS, EOI = 0xD8, 0xDA, 0xD9
STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7: no length follows


def jpeg_scans(data: bytes, stop_after: int) -> int:
    """The scans of a JPEG (its SOS markers), counted up to `stop_after` + 1, walking the segments
    without decoding anything. A progressive JPEG is decoded once per scan, and a scan costs a
    pass over the whole image while its bytes can be two dozen: 14,600 scans of 2 MP in 447 KB
    decode for 9.9 s. Encoders write 10 (libjpeg, color), Photoshop 3 to 5; the count
    stops at the first thing that is not a segment (Pillow judges the rest)."""
    if data[:2] != b"\xff\xd8":
        return 0
    scans, pos, size = 0, 2, len(data)
    while pos + 4 <= size and scans <= stop_after:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker
            pos += 1
            continue
        if marker == EOI:
            break
        if marker in STANDALONE_MARKERS or marker == SOI:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker != SOS:
            continue
        scans += 1
        while True:  # the entropy-coded data: up to a 0xFF that is not stuffing or a restart
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= size:
                return scans
            following = data[pos + 1]
            if following == 0 or 0xD0 <= following <= 0xD7:
                pos += 2
                continue
            break
    return scans


def open_rgb(data: bytes, max_pixels: int | None = None, target: int | None = None,
             max_aspect_ratio: float | None = None, max_scans: int | None = None) -> Image.Image:
    """Decodes an image, refusing decompression bombs, extreme shapes and JPEGs of too many scans
    before their pixels are decoded. Pillow is a parser of untrusted bytes: whatever it raises on them (OSError,
    SyntaxError, ValueError, but also IndexError, KeyError, struct.error from broken metadata)
    is a corrupt image, answered 400."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise bad_request("not_an_image", "the body is not an image format this server reads "
                          f"({FORMATS})") from None
    except Image.DecompressionBombError as e:
        raise RequestError(413, "too_large", str(e)) from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise bad_request("corrupt_image", f"the image header could not be read: {e}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise bad_request("corrupt_image", f"the image is {width}x{height} pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise RequestError(413, "too_large", f"the image has {width}x{height} = "
                           f"{width * height:,} pixels; the limit is {max_pixels:,}")
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * min(width, height):
        raise unprocessable("wrong_shape", f"the image is {width}x{height}: its aspect ratio is "
                            f"over the limit of {max_aspect_ratio:g}:1")
    if max_scans is not None and image.format == "JPEG" and jpeg_scans(data, max_scans) > max_scans:
        raise unprocessable("too_many_scans", f"the JPEG has more than {max_scans} scans (each "
                            "one is a pass over the whole image); re-encode it")
    try:
        if target:
            image.draft("RGB", (target, target))  # JPEG: decode at a reduced scale when enough
        # Pillow hands its decoder this much input per call, from a Python loop: where a
        # request's deadline can stop it (handlers/deadline.py). 64 KB by default, which a JPEG
        # of tiny scans turned into seconds in one call.
        image.decodermaxblock = DECODER_BLOCK
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise bad_request("corrupt_image", f"the image could not be decoded: "
                          f"{type(e).__name__}: {str(e)[:200]}") from None


def to_tensor(image: Image.Image, resize_size: int, crop_size: int) -> torch.Tensor:
    """Shorter side to `resize_size`, centre crop `crop_size`: (3, crop, crop) float in 0..255.

    The crop is resampled straight from its box in the source image, so the work is that of a
    crop_size x crop_size output whatever the image's size or shape (resizing the whole image
    first made a 1 x 50,000 image a 256 x 12,800,000 one). Normalisation belongs to the exported
    model, which knows the statistics it was trained on."""
    width, height = image.size
    side = min(width, height) * min(1.0, crop_size / resize_size)  # the crop, in source pixels
    left, top = (width - side) / 2, (height - side) / 2
    image = image.resize((crop_size, crop_size), Image.BILINEAR,
                         box=(left, top, left + side, top + side))
    return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)


def synthetic_images(size: int, count: int) -> list[tuple[str, bytes]]:
    """`count` JPEGs at least `size` pixels high, each a square on a plain colour: example
    requests for a new folder, whose real images the user adds (seeded: the same each time)."""
    rng = random.Random(0)
    images = []
    for i in range(count):
        colour = tuple(rng.randrange(256) for _ in range(3))
        image = Image.new("RGB", (size + 16 * i, size), colour)
        image.paste(tuple(255 - c for c in colour), (size // 4, size // 4, size // 2, size // 2))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        images.append((".jpg", buffer.getvalue()))
    return images


# -- the costliest admitted images (make worst-case) ----------------------------------------------

def side_of(pixels: int) -> int:
    return int(pixels ** 0.5)


def png_noise(pixels: int, mode: str = "L") -> bytes:
    """Noise compresses worst: the most pixels per byte limit."""
    rng = np.random.default_rng(0)
    side = side_of(pixels)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), mode).save(
        buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def flat_image(pixels: int, image_format: str) -> bytes:
    side = side_of(pixels)
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 200)).save(
        buffer, image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def jpeg_many_scans(pixels: int, scans: int) -> bytes:
    """A progressive JPEG of `pixels` whose last scan (a refinement pass over the whole image, in
    a few dozen bytes) is repeated until it has `scans` scans: decoders warn of the repeat and
    decode every one, so the cost grows with the scans while the bytes hardly do."""
    side = side_of(pixels)
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (side // 8 + 1, side // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(blocks.repeat(8, 0).repeat(8, 1)[:side, :side])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, progressive=True)
    data = buffer.getvalue()
    last = data.rfind(b"\xff\xda")
    have = data.count(b"\xff\xda")
    return data[:-2] + data[last:-2] * max(0, scans - have) + b"\xff\xd9"


class ImageClassifier(TopKAnswer, ModelHandler):
    """An image in (JPEG, PNG, GIF, BMP, TIFF, WebP; the raw body or a multipart field), the top-k
    classes out. The shorter side is resized to resize_size and the centre crop_size square is
    taken; `mean`/`std` (per channel, on 0..1 values) normalise it, or the model does."""

    settings_defaults = {"resize_size": 256, "crop_size": 224, "top_k": 5,
                         "max_aspect_ratio": 20, "max_jpeg_scans": 32, "mean": None, "std": None}
    request_content_types = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp",
                             "image/tiff")

    @classmethod
    def worst_requests(cls, settings: dict) -> dict[str, tuple[bytes, str]]:
        pixels = settings["max_image_pixels"]
        return {"PNG at the pixel limit": (flat_image(pixels, "PNG"), "image/png"),
                "JPEG at the pixel limit": (flat_image(pixels, "JPEG"), "image/jpeg"),
                "progressive JPEG at the limits": (
                    jpeg_many_scans(pixels, settings["max_jpeg_scans"]), "image/jpeg"),
                "noise PNG at the byte limit": (
                    png_noise(min(pixels, settings["max_request_bytes"] - 100_000)), "image/png")}

    @classmethod
    def scaffold(cls, model: ModelFile, count: int) -> Scaffold:
        the_input = model.one_input_classifier()
        channels, height, width = (the_input["shape"][1:] + [0, 0, 0])[:3]
        if len(the_input["shape"]) != 4 or channels != 3 or height != width:
            raise ValueError(f"needs a (batch, 3, N, N) input; this model's is "
                             f"{the_input['shape']}")
        settings = {"resize_size": width * 8 // 7, "crop_size": width,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                    "top_k": min(5, model.num_outputs)}
        return Scaffold(settings, synthetic_images(settings["resize_size"], count), [
            "the normalisation (ImageNet mean/std written; change `mean`/`std` in "
            "model-config.yaml) and the labels (class indices; add labels.txt and list it in "
            "extra_files)", "real images: examples/ holds synthetic ones"])

    def load_resources(self, model_dir: Path) -> None:
        self.labels = load_labels(model_dir)

    def decode(self, payload: Payload) -> list[torch.Tensor]:
        image = open_rgb(payload.bytes(), self.settings["max_image_pixels"],
                         self.settings["resize_size"], self.settings["max_aspect_ratio"],
                         self.settings["max_jpeg_scans"])
        tensor = to_tensor(image, self.settings["resize_size"], self.settings["crop_size"])
        if self.settings["mean"] is not None:
            mean = torch.tensor(self.settings["mean"], dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(self.settings["std"] or [1.0, 1.0, 1.0]).view(3, 1, 1)
            tensor = (tensor / 255.0 - mean) / std
        return [tensor]

    def instance_payload(self, instance) -> Payload:
        """v1: `{"b64": ...}`; the Open Inference Protocol: a BYTES element, the file itself."""
        if isinstance(instance, bytes):
            return Payload(instance, "image/*")
        return Payload(decode_base64(instance, "the instance"), "image/*")

    def native_instances(self, payload: Payload) -> list:
        return [{"b64": base64.b64encode(payload.bytes()).decode()}]

    def oip_inputs(self) -> list[dict]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]

    def instance_schema(self) -> dict:
        return {"type": "object", "required": ["b64"], "additionalProperties": False,
                "properties": {"b64": {"type": "string", "contentEncoding": "base64"}}}

    def warmup_items(self) -> list[torch.Tensor]:
        size = self.settings["crop_size"]
        return [torch.full((3, size, size), 127.0)]

    def request_schema(self) -> dict:
        return {ctype: {"type": "string", "format": "binary"} for ctype in self.request_content_types}
