"""The four verdict cases of issue 13, run through the real CLI against a real service.

Starts the service on the embedded default (as `make demo` does), builds a small
depthwise-separable CNN and the digits CNN on the user's side, then runs, with `squeeze`:

1. `squeeze quantize small_cnn.onnx --eval eval.npz --max-drop 1%` (auto, batch 1);
2. a search with no `max_metric_drop` and a budget far too small to learn anything;
3. static INT8 of the small CNN with `--batch-size 64` (judged at batch 1 and 64);
4. prune -> quantize, whose report states the step's held-out check and the verdict's.

Each command's output and exit code are printed as they are: this is a transcript, not a
test (timings are this machine's). `python scripts/verdict_tour.py [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.demo import free_port, service  # noqa: E402
from service.examples import digits_arrays, export_onnx, save_npz, train_digits_cnn  # noqa: E402


class SmallDepthwiseCnn(nn.Module):
    """A few depthwise-separable blocks on 8x8 digits: the kind INT8 does not speed up at
    batch 1 on a CPU (field notes)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
        for _ in range(3):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, groups=width),
                nn.ReLU(),
                nn.Conv2d(width, width, 1),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 30) -> nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for start in range(0, len(x), 64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(
                model(inputs[start : start + 64]), labels[start : start + 64]
            )
            loss.backward()
            optimizer.step()
    return model.eval()


def squeeze(env: dict[str, str], *args: str) -> int:
    print(f"\n$ squeeze {' '.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "squeeze.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    print(done.stdout.rstrip())
    print(f"(exit code {done.returncode})", flush=True)
    return done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, help="keep the files here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="squeeze-tour-"))
    work.mkdir(parents=True, exist_ok=True)

    x_train, y_train = digits_arrays("train")
    x_test, y_test = digits_arrays("test")
    small = train(SmallDepthwiseCnn(), x_train, y_train)
    export_onnx(small, x_test[:1], work / "small_cnn.onnx")
    export_onnx(train_digits_cnn(), x_test[:1], work / "digits_cnn.onnx")
    save_npz(work / "eval.npz", x_test, y_test)
    save_npz(work / "train.npz", x_train, y_train)
    (work / "search.yaml").write_text(
        "steps:\n  - method: search\n    max_trials: 1\n    epochs: 1\n"
        "    learning_rate: 0.00001\n    time_budget_s: 120\n"
    )
    (work / "prune_quantize.yaml").write_text(
        "steps:\n  - method: prune\n    kind: structured\n    sparsity: 0.5\n"
        "    fine_tune: {epochs: 2}\n  - method: quantize\n    mode: dynamic\n"
        "targets: {max_metric_drop: 0.01}\n"
    )

    data_dir = work / "data"
    with service(data_dir, free_port(), work) as url:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SQUEEZE_URL": url,
            "SQUEEZE_API_KEY": (data_dir / "admin-api-key").read_text().strip(),
        }
        os.chdir(work)
        print("1. quantize auto on a small depthwise CNN, served at batch 1")
        squeeze(env, "quantize", "small_cnn.onnx", "--eval", "eval.npz", "--max-drop", "1%")
        print("\n2. a search with no max_metric_drop and a budget too small to learn")
        squeeze(env, "submit", "search.yaml", "--model", "digits_cnn.onnx", "--eval",
                "eval.npz", "--train", "train.npz")  # fmt: skip
        print("\n3. static INT8 of the small CNN with --batch-size 64 (judged at 1 and 64)")
        squeeze(env, "quantize", "small_cnn.onnx", "--mode", "static", "--eval", "eval.npz",
                "--calib", "train.npz", "--batch-size", "64", "--max-drop", "1%")  # fmt: skip
        print("\n4. prune -> quantize: one held-out check, the step's and the job's")
        squeeze(env, "submit", "prune_quantize.yaml", "--model", "digits_cnn.onnx", "--eval",
                "eval.npz", "--train", "train.npz")  # fmt: skip
        print("\n   and --max-drop 1, refused before anything is uploaded:")
        squeeze(env, "quantize", "small_cnn.onnx", "--eval", "eval.npz", "--max-drop", "1")
    print(f"\nfiles in {work}")


if __name__ == "__main__":
    main()
