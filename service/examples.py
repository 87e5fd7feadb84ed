"""User-side example models: what a squeeze user does before uploading.

A small CNN trained on scikit-learn's bundled digits (8x8 images, nothing downloaded),
exported to ONNX, and a zoo of common architectures on the same data (MobileNet-style,
ResNet-style, a Transformer encoder, LSTM/GRU) whose constructor arguments scale them up
for benchmarks. Used by the demo, the tests and the benchmarks; runs on the user's side,
so it may import torch and scikit-learn freely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from squeeze.client.torch_export import export_onnx  # noqa: F401  (re-exported for the demo, tests and benchmarks)


def digits_arrays(
    split: Literal["train", "test"] = "test", *, seed: int = 0, test_fraction: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (N, 1, 8, 8) scaled to 0..1, labels as int64 (N,)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)


class DigitsCNN(nn.Module):
    """conv 1->16->32 (3x3, same padding), then 2048->128->10: about 268k parameters,
    mostly in the first Linear, so INT8 weights make the file clearly (~4x) smaller."""

    def __init__(self, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 64, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train_digits_cnn(seed: int = 0, epochs: int = 8, batch_size: int = 64) -> DigitsCNN:
    """A DigitsCNN trained with Adam (~0.1-0.3 s an epoch on 2 cores), in eval mode."""
    torch.manual_seed(seed)  # the initial weights
    x_train, y_train = digits_arrays("train", seed=seed)
    model = DigitsCNN()
    train_classifier(model, x_train, y_train, epochs=epochs, seed=seed, batch_size=batch_size)
    return model


def digits_sequences(
    split: Literal["train", "test"] = "test", *, seed: int = 0, test_fraction: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Digits as sequences for the sequence models: float32 (N, 8, 8) = 8 rows (time
    steps) of 8 pixels (features), scaled to 0..1, and int64 labels (N,)."""
    images, labels = digits_arrays(split, seed=seed, test_fraction=test_fraction)
    return np.ascontiguousarray(images[:, 0]), labels


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    batch_size: int = 64,
) -> nn.Module:
    """Train any of the example classifiers with Adam and cross-entropy; returns it in
    eval mode. Seeded: the same arguments give the same weights."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[index]), targets[index])
            loss.backward()
            optimizer.step()
    return model.eval()


def _activation(name: Literal["relu6", "hardswish"]) -> nn.Module:
    return nn.ReLU6() if name == "relu6" else nn.Hardswish()


class DepthwiseSeparableCNN(nn.Module):
    """MobileNet-style on digits (N, 1, 8, 8): a conv stem, then `blocks` depthwise 3x3 +
    pointwise 1x1 blocks with BatchNorm; the first half use ReLU6, the rest HardSwish (as
    in MobileNetV3). Every other block, from the second on, doubles the channels and,
    while the map is larger than 2x2, halves its side with a stride of 2.

    Scale up for benchmarks with `width` (stem channels), `blocks` and `input_size` (the
    side the strides are planned for; global pooling accepts any input size), e.g. on
    random (N, 1, 64, 64) inputs for timing.
    """

    def __init__(
        self,
        width: int = 16,
        blocks: int = 4,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 8,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU6(),
        ]
        channels, size = width, input_size
        for index in range(blocks):
            grow = index % 2 == 1
            stride = 2 if grow and size > 2 else 1
            out_channels = channels * 2 if grow else channels
            act: Literal["relu6", "hardswish"] = "relu6" if index < blocks // 2 else "hardswish"
            layers += [
                nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                nn.BatchNorm2d(channels),
                _activation(act),
                nn.Conv2d(channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                _activation(act),
            ]
            channels, size = out_channels, (size + stride - 1) // stride
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (a strided 1x1 conv when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResidualCNN(nn.Module):
    """ResNet-style on digits (N, 1, 8, 8): a conv stem, then `stages` stages of
    `blocks_per_stage` residual blocks (BatchNorm, residual Add); each stage after the
    first doubles the channels and halves the map. Scale up with `width`, `stages` and
    `blocks_per_stage`."""

    def __init__(
        self,
        width: int = 16,
        stages: int = 2,
        blocks_per_stage: int = 1,
        num_classes: int = 10,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        channels = width
        for stage in range(stages):
            out_channels = width * 2**stage
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TransformerEncoderClassifier(nn.Module):
    """A Transformer encoder on digits as sequences (N, 8 rows, 8 features): each row is
    projected to `d_model`, a learned position embedding added, then `layers` layers of
    real multi-head self-attention (`heads`) and a `ff`-wide feed-forward block
    (nn.TransformerEncoder), mean-pooled over the sequence into a linear head."""

    def __init__(
        self,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 2,
        ff: int = 64,
        num_classes: int = 10,
        features: int = 8,
        max_len: int = 8,
    ) -> None:
        super().__init__()
        self.project = nn.Linear(features, d_model)
        self.position = nn.Parameter(torch.zeros(1, max_len, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=ff, dropout=0.0, batch_first=True
        )
        # nested tensors are a training-time fast path that ONNX export does not know
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.project(x) + self.position[:, : x.shape[1]]
        return self.head(self.norm(self.encoder(hidden).mean(dim=1)))


class RecurrentClassifier(nn.Module):
    """An LSTM or GRU (`kind`) over digits as sequences (N, 8 rows, 8 features); the last
    step's hidden state feeds a linear head. Scale up with `hidden` and `layers`."""

    def __init__(
        self,
        kind: Literal["lstm", "gru"] = "lstm",
        hidden: int = 64,
        layers: int = 1,
        num_classes: int = 10,
        features: int = 8,
    ) -> None:
        super().__init__()
        recurrent = nn.LSTM if kind == "lstm" else nn.GRU
        self.recurrent = recurrent(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.recurrent(x)
        return self.head(outputs[:, -1])


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        predictions = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predictions == labels).mean())


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    arrays = {"input": images} if labels is None else {"input": images, "label": labels}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path
