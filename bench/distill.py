"""Distillation benchmark: students 10x and 30x smaller than a wide teacher, distilled vs
trained on labels alone, over several seeds.

Two tasks on scikit-learn's digits: images (N, 1, 8, 8) with a wide VGG-style teacher,
and the digits as 8-step sequences (N, 8, 8) with a Transformer-encoder teacher. Each
teacher is trained once (seed 0) and exported to ONNX as a user would; then, for each
parameter ratio and seed, the `distill` step runs as a job would run it (family student
sized to the ratio, teacher soft targets from ONNX Runtime, early stopping), once with
the spec's alpha (distilled) and once with alpha 0 (the same student from the same
initial weights, trained on the labels alone). The training split is cut into training
rows and validation rows (early stopping and best epoch); accuracy is measured on the
test split, which no training decision sees, in ONNX Runtime on the exported students.
Latency: the teacher and one student per ratio (the architecture does not depend on the
seed) timed interleaved in one process at batch 1 and 32, medians.

    PYTHONPATH=. python bench/distill.py [--seeds 5] [--epochs 60] [--runs 200]

Prints a markdown table and writes bench/results/distill.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "distill.md"
BATCHES = (1, 32)
# the targets, checked on the ~10x student of the CNN task
TARGET_RETENTION = 0.99
TARGET_SPEEDUP = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ratios", default="0.1,0.033", help="student / teacher parameters")
    parser.add_argument("--tasks", default="cnn,transformer")
    parser.add_argument("--epochs", type=int, default=60, help="student epochs (at most)")
    parser.add_argument("--patience", type=int, default=15, help="early stopping patience")
    parser.add_argument("--teacher-epochs", type=int, default=40)
    parser.add_argument("--teacher-width", type=int, default=64, help="the CNN teacher's")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cnn-blocks", type=int, default=4, help="depth of the CNN students")
    parser.add_argument("--transformer-layers", type=int, default=2)
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model and batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--reuse-teacher",
        action="store_true",
        help="use the work dir's teacher.onnx from an earlier run with the same teacher flags",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/squeeze-bench-distill"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


@dataclass
class Student:
    """One student size of one task: accuracies per seed, and one exported file."""

    ratio: float
    parameters: int = 0
    architecture: str = ""
    distilled: list[float] = field(default_factory=list)
    label_only: list[float] = field(default_factory=list)
    best_epochs: list[int] = field(default_factory=list)
    path: Path | None = None
    latency_ms: dict[int, float] = field(default_factory=dict)


@dataclass
class Task:
    name: str
    teacher_path: Path
    teacher_accuracy: float
    teacher_parameters: int
    students: list[Student]
    latency_ms: dict[int, float] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # before numpy's, torch's and onnxruntime's thread pools exist
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tasks = [_run_task(name, args) for name in args.tasks.split(",")]
    report = _report(tasks, args, time.perf_counter() - started)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


def _run_task(name: str, args: argparse.Namespace) -> Task:
    import torch

    from core.formats import inspect_model
    from core.measure import count_parameters
    from service.examples import (
        TransformerEncoderClassifier,
        digits_arrays,
        digits_sequences,
        export_onnx,
    )

    work = args.work_dir / name
    arrays = digits_arrays if name == "cnn" else digits_sequences
    x_all, y_all = arrays("train")
    x_test, y_test = arrays("test")
    # validation rows carved from the training split: the test split decides nothing
    order = np.random.default_rng(0).permutation(len(x_all))
    cut = int(len(x_all) * (1 - args.validation_fraction))
    x_train, y_train = x_all[order[:cut]], y_all[order[:cut]]
    x_val, y_val = x_all[order[cut:]], y_all[order[cut:]]

    teacher_path = work / "teacher.onnx"
    if not (args.reuse_teacher and teacher_path.is_file()):
        torch.manual_seed(0)
        teacher_module: torch.nn.Module = (
            _wide_cnn(args.teacher_width)
            if name == "cnn"
            else TransformerEncoderClassifier(d_model=128, heads=4, layers=4, ff=512)
        )
        _train_teacher(teacher_module, x_train, y_train, args.teacher_epochs)
        export_onnx(teacher_module, x_test[:1], teacher_path)
    task = Task(
        name=name,
        teacher_path=teacher_path,
        teacher_accuracy=_accuracy(teacher_path, x_test, y_test),
        teacher_parameters=count_parameters(teacher_path),
        students=[Student(float(r)) for r in args.ratios.split(",")],
    )
    print(
        f"[{name}] teacher: {task.teacher_parameters:,} parameters, test accuracy "
        f"{task.teacher_accuracy:.4f}",
        file=sys.stderr,
    )
    info = inspect_model(teacher_path)
    for student in task.students:
        for seed in range(args.seeds):
            for alpha, scores in ((args.alpha, student.distilled), (0.0, student.label_only)):
                output = _distill(
                    name, teacher_path, info, student.ratio, alpha, seed, args,
                    (x_train, y_train), (x_val, y_val), work,
                )  # fmt: skip
                scores.append(_accuracy(output.model_path, x_test, y_test))
                if alpha > 0:
                    student.best_epochs.append(int(output.details["best_epoch"]))
                student.parameters = count_parameters(output.model_path)
                student.architecture = _architecture(output.details["student"]["architecture"])
                student.path = student.path or output.model_path
            print(
                f"[{name}] ratio {student.ratio}: seed {seed}: distilled "
                f"{student.distilled[-1]:.4f}, label-only {student.label_only[-1]:.4f}",
                file=sys.stderr,
            )
    _time(task, x_test, args)
    return task


def _wide_cnn(width: int) -> Any:
    """A VGG-style teacher: three stages of two 3x3 conv-BN-ReLU (width, 2x, 4x channels)
    with 2x2 max pooling between them, global average pooling, dropout, a linear head."""
    from torch import nn

    def stage(inputs: int, outputs: int) -> list[nn.Module]:
        return [
            nn.Conv2d(inputs, outputs, 3, padding=1),
            nn.BatchNorm2d(outputs),
            nn.ReLU(),
            nn.Conv2d(outputs, outputs, 3, padding=1),
            nn.BatchNorm2d(outputs),
            nn.ReLU(),
        ]

    return nn.Sequential(
        *stage(1, width),
        nn.MaxPool2d(2),
        *stage(width, 2 * width),
        nn.MaxPool2d(2),
        *stage(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(4 * width, 10),
    )


def _train_teacher(module: Any, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    """The user's side, done well: AdamW with a one-cycle learning-rate schedule (what
    makes a teacher worth distilling), seeded; leaves the module in eval mode."""
    import torch

    torch.manual_seed(0)
    order = torch.Generator().manual_seed(0)
    batches_per_epoch = -(-len(x) // 64)
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=epochs * batches_per_epoch
    )
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    module.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(inputs), generator=order)
        for start in range(0, len(inputs), 64):
            rows = permutation[start : start + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(module(inputs[rows]), targets[rows])
            loss.backward()
            optimizer.step()
            schedule.step()
    module.eval()


def _distill(
    task: str,
    teacher: Path,
    info: Any,
    ratio: float,
    alpha: float,
    seed: int,
    args: argparse.Namespace,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    work: Path,
) -> Any:
    from core.context import RunContext
    from core.registry import StepData, get_step
    from core.spec import DistillStep, TaskSpec

    family: dict[str, Any] = (
        {"family": "cnn", "blocks": args.cnn_blocks}
        if task == "cnn"
        else {"family": "transformer", "layers": args.transformer_layers}
    )
    config = DistillStep.model_validate(
        {
            "method": "distill",
            "student": {**family, "parameter_ratio": ratio},
            "temperature": args.temperature,
            "alpha": alpha,
            "epochs": args.epochs,
            "early_stopping_patience": args.patience,
            "learning_rate": args.learning_rate,
            "batch_size": args.batch_size,
            "seed": seed,
        }
    )
    data = StepData(
        eval_arrays={"input": validation[0], "label": validation[1]},
        calibration_arrays={"input": validation[0]},
        inputs=info.inputs,
        task=TaskSpec(),
        train_arrays={"input": train[0], "label": train[1]},
        original_model_path=teacher,
    )
    label = "distilled" if alpha > 0 else "label-only"
    ctx = RunContext(work_dir=work / f"ratio-{ratio}" / f"seed-{seed}-{label}", seed=seed)
    return get_step("distill")(teacher, config, data, ctx)


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from core.context import MeasureSettings
    from core.measure import open_session

    session = open_session(path, MeasureSettings(), "cpu")
    logits = np.concatenate(
        [session.run(None, {"input": x[i : i + 64]})[0] for i in range(0, len(x), 64)]
    )
    return float(np.mean(np.argmax(logits, axis=1) == y))


def _time(task: Task, x_test: np.ndarray, args: argparse.Namespace) -> None:
    """Teacher and students interleaved (A B C A B C ...) in one process, medians."""
    from core.context import MeasureSettings
    from core.data import take_rows
    from core.measure import open_session, time_sessions

    settings = MeasureSettings(threads=args.threads, warmup_runs=20, runs=args.runs)
    paths = [task.teacher_path, *(s.path for s in task.students if s.path is not None)]
    sessions = [open_session(path, settings, "cpu") for path in paths]
    for batch in BATCHES:
        feeds = take_rows({"input": x_test}, batch)
        times = time_sessions(sessions, feeds, settings)
        task.latency_ms[batch] = float(np.median(times[0]))
        for student, student_times in zip(task.students, times[1:], strict=True):
            student.latency_ms[batch] = float(np.median(student_times))


def _architecture(config: dict[str, Any]) -> str:
    if config["family"] == "cnn":
        channels = [round(config["width"] * config["growth"] ** b) for b in range(config["blocks"])]
        return f"cnn {'-'.join(map(str, channels))}"
    return (
        f"transformer {config['layers']}x(d {config['hidden']}, {config['heads']} heads, "
        f"ff {config['feed_forward']})"
    )


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def _report(tasks: list[Task], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "| task | model | parameters (x fewer) | test accuracy, distilled | "
        "test accuracy, labels only | distilled - labels only (points) | "
        "distilled / teacher | speed-up b1 | speed-up b32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    checks: list[str] = []
    for task in tasks:
        lines.append(
            f"| {task.name} | teacher | {task.teacher_parameters:,} | "
            f"{task.teacher_accuracy:.4f} | | | | 1.00x ({task.latency_ms[1]:.3f} ms) | "
            f"1.00x ({task.latency_ms[32]:.3f} ms) |"
        )
        for student in task.students:
            distilled = statistics.mean(student.distilled)
            gain = (distilled - statistics.mean(student.label_only)) * 100
            retention = distilled / task.teacher_accuracy
            speed = {b: task.latency_ms[b] / student.latency_ms[b] for b in BATCHES}
            lines.append(
                f"| {task.name} | {student.architecture} | {student.parameters:,} "
                f"({task.teacher_parameters / student.parameters:.1f}x) | "
                f"{_mean_std(student.distilled)} | {_mean_std(student.label_only)} | "
                f"{gain:+.2f} | {retention:.4f} | {speed[1]:.2f}x "
                f"({student.latency_ms[1]:.3f} ms) | {speed[32]:.2f}x "
                f"({student.latency_ms[32]:.3f} ms) |"
            )
            wins = sum(d > b for d, b in zip(student.distilled, student.label_only, strict=True))
            ties = sum(d == b for d, b in zip(student.distilled, student.label_only, strict=True))
            checks.append(
                f"- {task.name}, {student.architecture}: distillation beats labels only on "
                f"average: {'yes' if gain > 0 else 'no'} ({gain:+.2f} points; "
                f"{wins} of {len(student.distilled)} seeds better, {ties} tied); best "
                f"epochs {student.best_epochs}"
            )
            if task.name == "cnn" and student is task.students[0]:
                checks.insert(
                    0,
                    f"- cnn, ~{task.teacher_parameters / student.parameters:.0f}x student: "
                    f"keeps >= {TARGET_RETENTION:.0%} of the teacher's accuracy: "
                    f"{'yes' if retention >= TARGET_RETENTION else 'no'} ({retention:.4f}); "
                    f">= {TARGET_SPEEDUP:.0f}x faster: b1 "
                    f"{'yes' if speed[1] >= TARGET_SPEEDUP else 'no'} ({speed[1]:.2f}x), "
                    f"b32 {'yes' if speed[32] >= TARGET_SPEEDUP else 'no'} ({speed[32]:.2f}x)",
                )
    command = (
        f"PYTHONPATH=. python bench/distill.py --seeds {args.seeds} --ratios {args.ratios} "
        f"--tasks {args.tasks} --epochs {args.epochs} --patience {args.patience} "
        f"--teacher-epochs {args.teacher_epochs} --teacher-width {args.teacher_width} "
        f"--temperature {args.temperature:g} "
        f"--alpha {args.alpha:g} --learning-rate {args.learning_rate:g} "
        f"--batch-size {args.batch_size} --cnn-blocks {args.cnn_blocks} "
        f"--transformer-layers {args.transformer_layers} --runs {args.runs} "
        f"--threads {args.threads}"
    )
    return (
        "# Distillation benchmark\n\n"
        f"`{command}` ({seconds / 60:.0f} min on {os.cpu_count()} cores, shared with "
        "other work: latency ratios are from a busy machine).\n\n"
        f"Teachers: cnn = a VGG-style wide CNN (3 stages of two 3x3 conv-BN-ReLU, "
        f"{args.teacher_width}-{2 * args.teacher_width}-{4 * args.teacher_width} channels, "
        "max pooling, global average pooling) on digits images; transformer = "
        "TransformerEncoderClassifier(d_model 128, 4 heads, 4 layers, ff 512) from "
        "service/examples.py on digits as 8-step sequences; both trained "
        f"{args.teacher_epochs} epochs (AdamW, one-cycle schedule, seed 0) on "
        f"{1 - args.validation_fraction:.0%} of the training split. Students: the family "
        "sized by the step to each parameter ratio; distilled = the `distill` step with "
        f"T {args.temperature:g}, alpha {args.alpha:g}; labels only = the same step with "
        "alpha 0 (cross-entropy on the labels, the same initial weights and data order). "
        f"Up to {args.epochs} epochs, early stopping (patience {args.patience}) and best "
        f"epoch on the validation rows ({args.validation_fraction:.0%} of the training "
        f"split); accuracy on the test split (450 images) in ONNX Runtime, mean ± sample "
        f"std over {args.seeds} seeds (student initialisation and data order). Speed-up = "
        "teacher latency / student latency, medians of "
        f"{args.runs} interleaved runs, {args.threads} thread(s), spinning off.\n\n"
        + "\n".join(lines)
        + "\n\nTargets:\n\n"
        + "\n".join(checks)
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
