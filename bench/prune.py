"""Pruning benchmark: structured (channels) and unstructured (weights) on small models.

Trains three example models on scikit-learn's digits (the digits CNN, a ResNet-style CNN
with BatchNorm and residual Adds, an MLP), exports each to ONNX and runs the `prune` step
as a job would: structured at several ratios and unstructured at several sparsities, each
with a short fine-tune. Reports accuracy change, ONNX Runtime latency (all variants of a
model timed interleaved in one process, fixed threads, spinning off, medians), parameters
and MACs. Prints a markdown table and writes bench/results/prune.md.

    PYTHONPATH=. python bench/prune.py [--runs 50] [--threads 1] [--epochs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tune epochs")
    parser.add_argument("--train-epochs", type=int, default=15, help="the originals' training")
    parser.add_argument("--ratios", default="0.25,0.5,0.75")
    parser.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--models", default="digits-cnn,residual-cnn,mlp")
    parser.add_argument(
        "--head-ratios",
        default="0.25,0.5",
        help="attention heads removed per block (transformer model only)",
    )
    parser.add_argument("--importance", choices=["l1", "l2", "taylor"], default="l1")
    parser.add_argument("--scope", choices=["local", "global"], default="local")
    parser.add_argument(
        "--recover",
        choices=["fine-tune", "distill"],
        default="fine-tune",
        help="after structured pruning: fine-tune only, or also distill from the original "
        "(prune -> distill with the pruned model as the student)",
    )
    parser.add_argument("--distill-epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/prune.md"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/squeeze-bench-prune"))
    return parser.parse_args(argv)


@dataclass
class Row:
    model: str
    variant: str
    path: Path
    accuracy: float = 0.0
    parameters: int = 0
    nonzero: int = 0
    macs: int | None = None
    latency_ms: dict[int, float] | None = None
    zip_bytes: int = 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # threads fixed before torch / onnxruntime load
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from pydantic import TypeAdapter
    from torch import nn

    from core.context import MeasureSettings, RunContext
    from core.formats import inspect_model
    from core.measure import open_session, time_sessions
    from core.prune.report import onnx_parameters, zip_size_bytes
    from core.registry import StepData, get_step
    from core.spec import PRUNE_STEP_ADAPTER, DistillStep, TaskSpec

    DISTILL_ADAPTER = TypeAdapter(DistillStep)
    from service.examples import (
        DigitsCNN,
        ResidualCNN,
        TransformerEncoderClassifier,
        digits_arrays,
        digits_sequences,
        export_onnx,
        train_classifier,
    )

    torch.set_num_threads(args.threads)
    images = digits_arrays("train"), digits_arrays("test")
    sequences = digits_sequences("train"), digits_sequences("test")
    settings = MeasureSettings(threads=args.threads, warmup_runs=5, runs=args.runs)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    builders: dict[str, Callable[[], nn.Module]] = {
        "digits-cnn": lambda: DigitsCNN(),
        "residual-cnn": lambda: ResidualCNN(width=32, stages=2, blocks_per_stage=2),
        "mlp": lambda: nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        ),
        # digits as 8-step sequences; channel pruning does not apply, heads do
        "transformer": lambda: TransformerEncoderClassifier(d_model=128, heads=8, layers=4, ff=256),
    }
    configs: list[tuple[str, dict[str, Any]]] = [
        (
            f"structured {r:.0%}",
            {
                "kind": "structured",
                "sparsity": float(r),
                "importance": args.importance,
                "scope": args.scope,
            },
        )
        for r in (float(v) for v in args.ratios.split(","))
    ] + [
        (f"unstructured {s:.0%}", {"kind": "unstructured", "sparsity": float(s)})
        for s in (float(v) for v in args.sparsities.split(","))
    ]
    head_configs: list[tuple[str, dict[str, Any]]] = [
        (f"heads {r:.0%}", {"kind": "structured", "sparsity": 0.0, "head_sparsity": float(r)})
        for r in (float(v) for v in args.head_ratios.split(","))
    ]
    unstructured = [(label, cfg) for label, cfg in configs if cfg["kind"] == "unstructured"]
    builders = {name: builders[name] for name in args.models.split(",")}
    rows: list[Row] = []
    started = time.perf_counter()
    for name, build in builders.items():
        work = args.work_dir / name
        (x_train, y_train), (x_test, y_test) = sequences if name == "transformer" else images
        model_configs = head_configs + unstructured if name == "transformer" else configs
        # seeded per model: its initial weights must not depend on which models ran before
        torch.manual_seed(0)
        model = train_classifier(build(), x_train, y_train, epochs=args.train_epochs)
        original = export_onnx(model, x_test[:1], work / "original.onnx")
        info = inspect_model(original)
        data = StepData(
            eval_arrays={"input": x_test, "label": y_test},
            calibration_arrays={"input": x_test},
            inputs=info.inputs,
            task=TaskSpec(),
            train_arrays={"input": x_train, "label": y_train},
        )
        model_rows = [Row(name, "original", original, macs=_macs(original))]
        for label, fields in model_configs:
            config = PRUNE_STEP_ADAPTER.validate_python(
                {"method": "prune", "fine_tune": {"epochs": args.epochs}, **fields}
            )
            ctx = RunContext(work_dir=work / label.replace(" ", "-").replace("%", ""))
            output = get_step("prune")(original, config, data, ctx)
            if args.recover == "distill" and fields["kind"] == "structured":
                distill = DISTILL_ADAPTER.validate_python(
                    {
                        "method": "distill",
                        "student": {"source": "step_input"},
                        "epochs": args.distill_epochs,
                        "early_stopping_patience": None,
                    }
                )
                # The best epoch is chosen on held-out training rows, not on the test
                # split the table reports.
                held_out = len(x_train) // 7
                distill_data = dataclasses.replace(
                    data,
                    eval_arrays={"input": x_train[:held_out], "label": y_train[:held_out]},
                    train_arrays={"input": x_train[held_out:], "label": y_train[held_out:]},
                    original_model_path=original,
                )
                output = get_step("distill")(
                    output.model_path,
                    distill,
                    distill_data,
                    RunContext(work_dir=ctx.work_dir / "distill"),
                )
                label = f"{label} + distill"
            model_rows.append(Row(name, label, output.model_path, macs=_macs(output.model_path)))
        for row in model_rows:
            session = open_session(row.path, settings, "cpu")
            (logits,) = session.run(None, {"input": x_test})
            row.accuracy = float(np.mean(np.argmax(logits, axis=1) == y_test))
            counts = onnx_parameters(row.path)
            row.parameters, row.nonzero = counts["total"], counts["nonzero"]
            row.zip_bytes = zip_size_bytes(row.path)
        sessions = [open_session(row.path, settings, "cpu") for row in model_rows]
        for row in model_rows:
            row.latency_ms = {}
        for batch in batch_sizes:
            feeds = {"input": np.ascontiguousarray(x_test[:batch])}
            for row, times in zip(
                model_rows, time_sessions(sessions, feeds, settings), strict=True
            ):
                assert row.latency_ms is not None
                row.latency_ms[batch] = float(np.median(times))
        rows += model_rows
        print(f"{name}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    table = _table(rows, batch_sizes)
    text = (
        "# Pruning benchmark\n\n"
        f"`PYTHONPATH=. python bench/prune.py --runs {args.runs} --threads {args.threads} "
        f"--train-epochs {args.train_epochs} --epochs {args.epochs} --ratios {args.ratios} "
        f"--sparsities {args.sparsities} "
        f"--models {args.models} --head-ratios {args.head_ratios} "
        f"--importance {args.importance} --scope {args.scope} "
        f"--recover {args.recover} --distill-epochs {args.distill_epochs}`; "
        f"{os.cpu_count()} cores; latency medians of ONNX Runtime "
        "runs timed interleaved per model; accuracy on the digits test split (450 images); "
        "parameters: float initializer elements of the exported file (nonzero in brackets); "
        "MACs: Conv/Gemm/MatMul multiply-accumulates per image from the ONNX graph; zip: "
        "the file deflate-compressed (what unstructured sparsity saves).\n\n"
        f"{table}\n\n"
        "Targets: structured >= 2.5x faster at <= 0.5 point drop on the CNNs; 90% "
        "unstructured within 1 point (no speed expected: ONNX Runtime runs it dense).\n"
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


def _table(rows: list[Row], batch_sizes: list[int]) -> str:
    header = (
        "| model | variant | accuracy | change (points) | "
        + " | ".join(f"speed-up b{b} (ms)" for b in batch_sizes)
        + " | parameters | MACs | zip KiB (x smaller) |"
    )
    lines = [header, "|" + "---|" * (7 + len(batch_sizes))]
    base: Row | None = None
    for row in rows:
        if row.variant == "original":
            base = row
        assert base is not None and row.latency_ms is not None and base.latency_ms is not None
        speed = " | ".join(
            f"{base.latency_ms[b] / row.latency_ms[b]:.2f}x ({row.latency_ms[b]:.3f})"
            for b in batch_sizes
        )
        change = (row.accuracy - base.accuracy) * 100
        params = f"{row.parameters:,}" + (
            f" ({row.nonzero:,})" if row.nonzero != row.parameters else ""
        )
        macs = f"{row.macs:,}" if row.macs is not None else "?"
        lines.append(
            f"| {row.model} | {row.variant} | {row.accuracy:.4f} | {change:+.2f} | {speed} "
            f"| {params} | {macs} | {row.zip_bytes / 1024:.0f} "
            f"({base.zip_bytes / row.zip_bytes:.2f}x) |"
        )
    return "\n".join(lines)


def _macs(path: Path) -> int | None:
    """Multiply-accumulates of Conv, Gemm and MatMul per image, from ONNX shape inference
    (batch 1): each output element costs (input channels / groups) x kernel size MACs."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(path)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]
    }
    weights = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        if not out or 0 in out:  # a shape only known at run time (attention): not counted
            return None
        weight = weights.get(node.input[1])
        if weight is None:
            return None
        per_output = int(np.prod(weight[1:])) if node.op_type == "Conv" else weight[0]
        if node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            per_output = weight[1] if trans_b else weight[0]
        total += int(np.prod(out)) * int(per_output)
    return total


if __name__ == "__main__":
    sys.exit(main())
