"""model.yaml's hooks for digits: a small CNN trained here on scikit-learn's bundled 8x8 handwritten digits.

The whole workflow in one place: tensors -> DataLoader -> autograd and an optimizer -> held-out
accuracy -> trace. The network takes raw pixel intensities (0..16, as the data set stores them) so
that clients send what they have and the scaling lives with the weights it was trained for.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SEED = 0
MAX_PIXEL = 16.0
MIN_ACCURACY = 0.95
EPOCHS = 40


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (N, 8, 8) intensities in [0, 16] -> (N, 10) logits."""
        x = (pixels / MAX_PIXEL).unsqueeze(1)
        return self.classifier(self.features(x))


def split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed train / held-out split: (x_train, y_train, x_test, y_test), x as (N, 8, 8) float."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images.astype(np.float32), digits.target, test_size=0.2, random_state=SEED,
        stratify=digits.target,
    )
    return (torch.from_numpy(x_train), torch.from_numpy(y_train).long(),
            torch.from_numpy(x_test), torch.from_numpy(y_test).long())


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    with torch.inference_mode():
        return int((model(x).argmax(1) == y).sum())


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return correct(model, x, y) / len(y)


def load_or_train(work_dir: Path) -> nn.Module:
    """The trained network; trained once per version of this file, then loaded from work_dir."""
    import hashlib

    weights = work_dir / f"digits_cnn-{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}.pt"
    if weights.exists():
        model = DigitsCNN()
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model.eval()
    model = train()
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    return model


def train() -> nn.Module:
    torch.manual_seed(SEED)
    x_train, y_train, x_test, y_test = split()
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED))
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):
        model.train()
        total = 0.0
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
        scheduler.step()
        if epoch % 5 == 0 or epoch == 1:
            model.eval()
            print(f"  epoch {epoch:2d}/{EPOCHS}  loss {total / len(x_train):.4f}  "
                  f"held-out accuracy {accuracy(model, x_test, y_test):.4f}  "
                  f"({time.perf_counter() - started:.1f}s)", flush=True)
    return model.eval()


def evaluate(exported: nn.Module) -> dict:
    _, _, x_test, y_test = split()
    right = correct(exported, x_test, y_test)
    acc = right / len(y_test)
    print(f"  held-out accuracy of the exported model: {acc:.4f} ({right}/{len(y_test)} digits)")
    if acc < MIN_ACCURACY:
        raise ValueError(f"held-out accuracy {acc:.4f} is below {MIN_ACCURACY}")
    return {"held_out_accuracy": acc, "held_out_correct": right, "held_out_size": len(y_test)}


def parity_inputs() -> list[tuple[torch.Tensor, ...]]:
    _, _, x_test, _ = split()
    return [(x_test[i:i + 64],) for i in range(0, len(x_test), 64)]


def example_inputs(batch: int) -> tuple[torch.Tensor]:
    return (torch.rand(batch, 8, 8, generator=torch.Generator().manual_seed(batch)) * MAX_PIXEL,)
