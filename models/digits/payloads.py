"""Load-test bodies: real digits from the data set (no torch: Locust imports this)."""

from __future__ import annotations

import json


def digit_grids() -> list[bytes]:
    from sklearn.datasets import load_digits

    return [json.dumps({"pixels": image.astype(int).tolist()}).encode()
            for image in load_digits().images[:500]]
