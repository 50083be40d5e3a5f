"""Real sentences of varied length: parity inputs for the build, payloads for load tests.
Kept free of torch so that the load generator can import them."""

import json
import random

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage.",
    "The stock market fell sharply on Monday.",
    "Investors sold shares as prices dropped.",
    "A cat sleeps in the sun.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, "
    "a process that takes place in the chloroplasts of plant cells.",
    "Hi",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden "
    "barn at the edge of the field, wondering whether the rain will come before the harvest is "
    "in, and whether the price of grain will hold through the winter months ahead.",
]

MORE_SENTENCES = [
    "The train was late again this morning.",
    "Interest rates rose for the third time this year, and analysts expect more increases.",
    "She planted tomatoes, basil and peppers in the small garden behind the house.",
    "Quantum computers use qubits, which can represent zero and one at the same time.",
    "The museum reopened after a two-year renovation that restored its original ceiling.",
    "Please remember to bring your passport and a printed copy of the booking.",
    "Heavy rain is expected across the north of the country over the weekend.",
    "The recipe calls for two cups of flour, one egg, and a pinch of salt.",
    "Engineers traced the outage to a misconfigured load balancer in one region.",
    "Cats sleep for up to sixteen hours a day.",
    "A guitarist tunes his instrument before the concert begins.",
    "Bond yields climbed after the central bank's announcement.",
]


def requests() -> list[bytes]:
    """Load-test bodies: 1 to 4 texts, each 1 to 6 sentences long: varied lengths and padding."""
    pool = SENTENCES + MORE_SENTENCES
    rng = random.Random(0)
    bodies = []
    for _ in range(200):
        texts = [" ".join(rng.sample(pool, rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
        bodies.append(json.dumps({"texts": texts}).encode())
    return bodies
