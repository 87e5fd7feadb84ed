"""User-side example models: what a squeeze user does before uploading.

A small CNN trained on scikit-learn's bundled digits (8x8 images, nothing downloaded),
exported to ONNX. Used by the demo, the tests and the benchmarks; runs on the user's side,
so it may import torch and scikit-learn freely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn


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
    torch.manual_seed(seed)
    x_train, y_train = digits_arrays("train", seed=seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    inputs, targets = torch.from_numpy(x_train), torch.from_numpy(y_train)
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


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        predictions = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predictions == labels).mean())


def export_onnx(
    module: nn.Module,
    example: torch.Tensor | np.ndarray,
    path: Path,
    opset: int = 17,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    dynamic_batch: bool = True,
) -> Path:
    """Export with the TorchScript exporter: one input and output, batch axis dynamic."""
    tensor = torch.from_numpy(example) if isinstance(example, np.ndarray) else example
    dynamic_axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (tensor,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )
    return path


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    arrays = {"input": images} if labels is None else {"input": images, "label": labels}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path
