"""Real request bodies for each model, built once per load-generator process."""

from __future__ import annotations

import json
import random
from functools import cache

SENTENCES = [
    "The train was late again this morning.",
    "A man is playing a guitar on the street corner.",
    "Interest rates rose for the third time this year, and analysts expect more increases.",
    "She planted tomatoes, basil and peppers in the small garden behind the house.",
    "Quantum computers use qubits, which can represent zero and one at the same time.",
    "Hi!",
    "The museum reopened after a two-year renovation that restored its original ceiling.",
    "Please remember to bring your passport and a printed copy of the booking.",
    "Heavy rain is expected across the north of the country over the weekend.",
    "The recipe calls for two cups of flour, one egg, and a pinch of salt.",
    "Engineers traced the outage to a misconfigured load balancer in one region.",
    "Cats sleep for up to sixteen hours a day.",
]


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
        texts = [" ".join(rng.sample(SENTENCES, rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
        bodies.append(json.dumps({"texts": texts}).encode())
    return bodies
