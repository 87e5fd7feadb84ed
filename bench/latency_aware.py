"""Benchmark: latency-aware INT8 against full static INT8 and FP32 on a depthwise CNN.

The model is service.examples' DepthwiseSeparableCNN (MobileNet-like: a conv stem, then
depthwise 3x3 + pointwise 1x1 blocks; `--width 64 --blocks 8 --side 32` is the
MobileNet-sized one of bench/quantize.py), with its untrained weights: latency is the
point here, and the outputs' top-1 agreement with FP32 is reported as a sanity check.
Both INT8 models come from squeeze's own static mode (per-channel QDQ, calibrated on
the same rows); the latency-aware one is made per thread count, since which kernels
win depends on it. At each thread count the three models are timed interleaved in one
process by core.timing's rule (spinning off, medians) at batch 1 and 32.

Run from the repository root (not part of the test suite):

    PYTHONPATH=. python bench/latency_aware.py [--runs 30] [--threads 1,2]

The markdown table is printed and written to bench/results/latency-aware.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "latency-aware.md"
BATCHES = (1, 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/squeeze-bench-latency-aware"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="how busy the machine was")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Path:
    import torch

    from service.examples import DepthwiseSeparableCNN, export_onnx

    torch.manual_seed(0)
    model = DepthwiseSeparableCNN(width=args.width, blocks=args.blocks, input_size=args.side)
    example = np.random.default_rng(0).normal(size=(1, 1, args.side, args.side))
    return export_onnx(model.eval(), example.astype(np.float32), args.work_dir / "fp32.onnx")


def quantize(
    fp32: Path, data: Any, threads: int, latency_aware: bool, folder: Path
) -> tuple[Path, dict[str, Any]]:
    from core.context import MeasureSettings, RunContext
    from core.quantize.int8 import quantize_static_mode
    from core.spec import StaticQuantize

    config = StaticQuantize(
        method="quantize", mode="static", calibration_samples=64, latency_aware=latency_aware
    )
    ctx = RunContext(work_dir=folder, measure=MeasureSettings(threads=threads))
    folder.mkdir(parents=True, exist_ok=True)
    details = quantize_static_mode(fp32, folder / "model.onnx", config, data, ctx)
    return folder / "model.onnx", details


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    from core.context import MeasureSettings
    from core.formats import inspect_model
    from core.measure import open_session, time_sessions
    from core.registry import StepData
    from core.spec import TaskSpec

    fp32 = build(args)
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(128, 1, args.side, args.side)).astype(np.float32)
    arrays = {"input": rows, "label": np.zeros(len(rows), dtype=np.int64)}
    data = StepData(
        eval_arrays=arrays,
        calibration_arrays=arrays,
        inputs=inspect_model(fp32).inputs,
        task=TaskSpec(kind="classification"),
        batch_size=32,
        batch_sizes=BATCHES,
    )
    full, _ = quantize(fp32, data, 1, False, args.work_dir / "full")
    lines: list[str] = []
    tables: list[str] = []
    for threads in [int(t) for t in args.threads.split(",")]:
        started = time.time()
        aware, details = quantize(fp32, data, threads, True, args.work_dir / f"aware-t{threads}")
        plan = details["latency_aware"]
        seconds = time.time() - started
        settings = MeasureSettings(threads=threads, warmup_runs=args.warmup, runs=args.runs)
        models = {"FP32": fp32, "static INT8 (full)": full, "latency-aware INT8": aware}
        sessions = {name: open_session(path, settings, "cpu") for name, path in models.items()}
        reference = sessions["FP32"].run(None, {"input": rows})[0].argmax(1)
        for batch in BATCHES:
            feeds = {"input": rows[:batch]}
            times = time_sessions(list(sessions.values()), feeds, settings)
            medians = [statistics.median(t) for t in times]
            for (name, session), median in zip(sessions.items(), medians, strict=True):
                agree = float((session.run(None, {"input": rows})[0].argmax(1) == reference).mean())
                lines.append(
                    f"| {threads} | {batch} | {name} | {median:.3f} | {medians[0] / median:.2f}x "
                    f"| {agree:.3f} |"
                )
        tables.append(
            f"\n### Selection at {threads} thread(s) ({seconds:.1f} s to quantize, profile and "
            f"re-quantize; {plan['quantized_units']} of {plan['units']} units quantized)\n\n"
            f"Modelled from the profiles (us, batch 1 / 32): FP32 {plan['modelled_us']['fp32']}, "
            f"all INT8 {plan['modelled_us']['all_int8']}, chosen {plan['modelled_us']['chosen']}; "
            f"unattributed kernel time (layout transposes, reorders): {plan['unattributed_us']}\n\n"
            "| node | op | fp32 us (b1 / b32) | int8 us (b1 / b32) | decision | why |\n"
            "|---|---|---|---|---|---|\n"
            + "\n".join(
                f"| {r['node']} | {r['op_type']} | {r['fp32_us']['1']} / {r['fp32_us']['32']} "
                f"| {r['int8_us']['1']} / {r['int8_us']['32']} | {r['decision']} | {r['why']} |"
                for r in plan["table"]
            )
        )
    report = (
        "# Latency-aware INT8 on a depthwise-separable CNN\n\n"
        f"DepthwiseSeparableCNN(width={args.width}, blocks={args.blocks}, "
        f"input {args.side}x{args.side}), untrained weights, ONNX Runtime "
        f"{__import__('onnxruntime').__version__}, {platform.processor() or platform.machine()}; "
        f"{args.runs} interleaved runs per model and batch (core.timing), medians, spinning "
        f"off. {args.note}\n\n"
        "Command: `PYTHONPATH=. python bench/latency_aware.py "
        f"--runs {args.runs} --threads {args.threads} --width {args.width} --blocks "
        f"{args.blocks} --side {args.side}`\n\n"
        "| threads | batch | model | median ms | speed-up vs FP32 | top-1 agreement |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n" + "\n".join(tables) + "\n"
    )
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
