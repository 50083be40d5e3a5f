"""Hypothesis strategies for hostile requests: arbitrary bytes and JSON, and structure-aware
mutations of valid images (every format the image handler reads, EXIF, ICC profiles, declared
dimensions far beyond the pixels sent) and of texts. Shared by the in-process fuzz test and the
HTTP test that replays a sample of the same inputs against a real TorchServe."""

from __future__ import annotations

import io
import json
import struct
import zlib

from hypothesis import strategies as st
from PIL import Image

JSON_TYPES = ("application/json", "text/plain", "application/octet-stream", "image/jpeg", "")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=6),
    max_leaves=60)


def raw_json(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


# -- images --------------------------------------------------------------------------------------

FORMATS = {"PNG": ("RGB", "L", "RGBA", "P", "I;16", "1"), "JPEG": ("RGB", "L", "CMYK"),
           "GIF": ("P", "L"), "BMP": ("RGB", "L", "P", "1"), "TIFF": ("RGB", "L", "CMYK", "F", "I;16"),
           "WEBP": ("RGB", "RGBA")}


@st.composite
def valid_images(draw, acceptable: bool = False) -> bytes:
    """Well-formed images of every format and mode the handler reads, with EXIF and ICC extras.
    acceptable=True: only what a model must answer 200 (an aspect ratio within 20:1, EXIF
    orientations 1-8, no ICC profile of random bytes), for the check that valid input is served."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    side = st.integers(8, 48) if acceptable else st.integers(1, 48)
    size = (draw(side), draw(side))
    image = Image.new(mode, size, color=draw(st.integers(0, 255)) if mode not in
                      ("RGB", "RGBA", "CMYK") else None)
    if mode in ("RGB", "RGBA", "CMYK"):
        image.putdata([tuple(draw(st.integers(0, 255)) for _ in mode)] * (size[0] * size[1]))
    options = {}
    if fmt in ("JPEG", "PNG", "TIFF", "WEBP") and draw(st.booleans()):
        exif = Image.Exif()
        # orientation: 1..8 are meaningful
        exif[0x0112] = draw(st.integers(1, 8) if acceptable else st.integers(0, 65535))
        for tag in draw(st.lists(st.integers(0x0100, 0xFFFF), max_size=0 if acceptable else 3)):
            exif[tag] = draw(st.integers(0, 2 ** 31 - 1) | st.text(max_size=20))
        try:
            options["exif"] = exif.tobytes()
        except Exception:  # noqa: BLE001 - Pillow refuses to write some tag/value pairs
            pass
    if fmt in ("JPEG", "PNG", "TIFF", "WEBP") and not acceptable and draw(st.booleans()):
        options["icc_profile"] = draw(st.binary(min_size=1, max_size=300))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declare_size(data: bytes, width: int, height: int) -> bytes:
    """The same bytes with the header claiming another size, checksums kept valid, so the decoder
    believes it: the request is small, what it declares is not."""
    if data.startswith(b"\x89PNG") and len(data) >= 33:
        ihdr = struct.pack(">II", width, height) + data[24:29]
        return data[:8] + png_chunk(b"IHDR", ihdr) + data[33:]
    if data.startswith(b"GIF8") and len(data) >= 10:
        return data[:6] + struct.pack("<HH", width % 65536, height % 65536) + data[10:]
    if data.startswith(b"BM") and len(data) >= 26:
        return data[:18] + struct.pack("<ii", width % 2 ** 31, height % 2 ** 31) + data[26:]
    sof = data.find(b"\xff\xc0")
    if data.startswith(b"\xff\xd8") and sof > 0 and len(data) >= sof + 9:
        return data[:sof + 5] + struct.pack(">HH", height % 65536, width % 65536) + data[sof + 9:]
    return data


@st.composite
def hostile_images(draw) -> bytes:
    data = draw(valid_images())
    how = draw(st.sampled_from(("as_is", "declared_size", "flip", "truncate", "splice", "chunk")))
    if how == "declared_size":
        big = st.sampled_from((0, 1, 65535, 100_000, 2 ** 31 - 1)) | st.integers(0, 2 ** 32 - 1)
        data = declare_size(data, draw(big), draw(big))
    elif how == "flip" and data:
        mutable = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            mutable[draw(st.integers(0, len(mutable) - 1))] = draw(st.integers(0, 255))
        data = bytes(mutable)
    elif how == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=64)) + data[at:]
    elif how == "chunk" and data.startswith(b"\x89PNG"):
        kind = draw(st.sampled_from((b"iCCP", b"eXIf", b"zTXt", b"iTXt", b"tEXt", b"PLTE",
                                     b"tRNS", b"acTL", b"fcTL", b"IDAT")))
        data = data[:33] + png_chunk(kind, draw(st.binary(max_size=200))) + data[33:]
    return data


# -- per model -----------------------------------------------------------------------------------

def texts_bodies():
    text = st.text(min_size=0, max_size=300) | st.text(
        st.characters(codec="utf-8"), max_size=50) | st.sampled_from(
        ["\ud800", "a\udfffb", "\x00", "\u202e", "word " * 400, "\n" * 100])
    texts = st.lists(text, max_size=70)
    bodies = st.one_of(
        texts.map(lambda t: {"texts": t}), text.map(lambda t: {"text": t}),
        json_values.map(lambda v: {"texts": v}), json_values.map(lambda v: {"text": v}))
    # json.dumps escapes lone surrogates as \udXXX: the server sees exactly what a client sends
    return st.tuples(bodies.map(raw_json), st.just("application/json")) | st.tuples(
        st.binary(max_size=300), st.just("text/plain"))


def pixels_bodies():
    number = st.integers() | st.floats() | st.integers(-(10 ** 60), 10 ** 60)
    grids = st.lists(st.lists(number, min_size=8, max_size=8), min_size=8, max_size=8) | \
        st.lists(st.lists(number, max_size=10), max_size=10)
    bodies = grids.map(lambda g: {"pixels": g}) | json_values.map(lambda v: {"pixels": v})
    return st.tuples(bodies.map(raw_json), st.just("application/json"))


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


COMMON = st.one_of(
    st.tuples(st.binary(max_size=2000), st.sampled_from(JSON_TYPES)),
    st.tuples(json_values.map(raw_json), st.just("application/json")),
    st.tuples(st.integers(1, 5000).map(nested), st.just("application/json")),
    st.tuples(st.integers(1, 6000).map(lambda n: b"1" * n), st.just("application/json")),
)

# Valid requests, drawn: each must be answered 200 (the hostile side may get any 4xx).
VALID = {
    "digits": st.lists(st.lists(st.floats(0, 16, allow_nan=False) | st.integers(0, 16),
                                min_size=8, max_size=8), min_size=8, max_size=8).map(
        lambda grid: (raw_json({"pixels": grid}), "application/json")),
    "efficientnet_lite0": st.tuples(valid_images(acceptable=True), st.sampled_from(
        ("image/jpeg", "image/png", "application/octet-stream"))),
    "minilm": st.lists(st.text(min_size=1, max_size=200).filter(lambda t: t.strip()),
                       min_size=1, max_size=8).map(
        lambda texts: (raw_json({"texts": texts}), "application/json")),
}

HOSTILE = {
    "digits": st.one_of(COMMON, pixels_bodies()),
    "efficientnet_lite0": st.one_of(COMMON, st.tuples(hostile_images(), st.sampled_from(
        ("image/jpeg", "image/png", "application/octet-stream")))),
    "minilm": st.one_of(COMMON, texts_bodies()),
}
