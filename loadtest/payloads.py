"""Real request bodies for each model, built once per load-generator process."""

from __future__ import annotations

import json
import random
from functools import cache

from models.minilm.sentences import MORE_SENTENCES, SENTENCES

POOL = SENTENCES + MORE_SENTENCES


@cache
def digit_bodies() -> list[bytes]:
    from sklearn.datasets import load_digits

    return [json.dumps({"pixels": image.astype(int).tolist()}).encode()
            for image in load_digits().images[:500]]


@cache
def image_bodies() -> list[bytes]:
    from models.photos import SAMPLES, encoded

    return [encoded(name, "JPEG") for name in SAMPLES]


@cache
def text_bodies() -> list[bytes]:
    """Requests of 1 to 4 texts, each 1 to 6 sentences long: varied lengths, varied padding."""
    rng = random.Random(0)
    bodies = []
    for _ in range(200):
        texts = [" ".join(rng.sample(POOL, rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
        bodies.append(json.dumps({"texts": texts}).encode())
    return bodies


# Each model's bodies and their content type, for users and probes that send to any model.
BODIES = {"digits": (digit_bodies, "application/json"),
          "efficientnet_lite0": (image_bodies, "image/jpeg"),
          "minilm": (text_bodies, "application/json")}
