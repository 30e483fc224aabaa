"""Classifiers for 32x32 images. Each exposes ``features(x)`` (penultimate
activations) and ``fc`` (the last layer), so fine-tuning can train only ``fc``."""
from __future__ import annotations

import torch
from torch import nn

from failmap.io import save_torch

ARCHS = ("small_cnn", "resnet18")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Conv blocks at 32, 32, 16, 16 and 8 pixels (w, w, 2w, 2w, 4w channels),
    global average pool, linear head. Two blocks at full resolution matter:
    pooling after the first one cost ~20 points of test accuracy on the world."""

    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(3, w), _block(w, w), nn.MaxPool2d(2),
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class CifarResNet18(nn.Module):
    """torchvision ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool)."""

    def __init__(self, n_classes: int):
        super().__init__()
        import torchvision  # here, not at module level: importing it costs seconds in every stage

        net = torchvision.models.resnet18(weights=None, num_classes=n_classes)
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.fc = net.fc
        net.fc = nn.Identity()
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_classifier(arch: str, n_classes: int, width: int = 32, seed: int | None = None) -> nn.Module:
    """A freshly initialised classifier; with ``seed``, the initial weights
    depend on it alone (not on whatever drew from torch's global generator before)."""
    if seed is not None:
        torch.manual_seed(seed)
    if arch == "small_cnn":
        return SmallCNN(n_classes, width)
    if arch == "resnet18":
        return CifarResNet18(n_classes)
    raise ValueError(f"baseline.arch: unknown architecture '{arch}'; allowed: {list(ARCHS)}")


def save_classifier(model: nn.Module, path, *, arch: str, n_classes: int, width: int, classes: list[str]) -> None:
    save_torch(dict(arch=arch, n_classes=n_classes, width=width, classes=classes, state_dict=model.state_dict()),
               path)


def load_classifier(path, device: str = "cpu") -> tuple[nn.Module, dict]:
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model = build_classifier(ckpt["arch"], ckpt["n_classes"], ckpt["width"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt
