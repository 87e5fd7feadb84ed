"""Benchmark: squeeze's auto quantization against what a user would try by hand.

For each example model (trained briefly on the digits, exported to ONNX): squeeze's
`auto` mode (a job with batch_size 32 and a 0.5-point / 0.005-cosine metric target),
onnxruntime's `quantize_dynamic` and `quantize_static` with their default settings, and,
for the transformer, squeeze's `int4` mode. Reported per model and method: file size vs
FP32, latency speed-up vs FP32 at batch 1 and 32 (every model of a row group timed
interleaved in one process, medians), accuracy change and the mean cosine similarity of
the logits to FP32's.

Run from the repository root (not part of the test suite):

    PYTHONPATH=. python bench/quantize.py [--runs 30] [--threads 1] [--scale bench|small]

`--threads` sets OMP_NUM_THREADS (before torch and onnxruntime load), torch's threads
and ONNX Runtime's intra-op threads; spinning is off (see core.measure). The markdown
table is printed and written to bench/results/quantize.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

RESULTS = Path(__file__).resolve().parent / "results" / "quantize.md"
BATCHES = (1, 32)
# the targets this benchmark reports against
TRANSFORMER_SPEEDUP_B1 = 2.0
TRANSFORMER_MIN_COSINE = 0.995
CNN_SPEEDUP_B32 = 2.0
CNN_MAX_DROP_POINTS = 0.5
INT8_MIN_SIZE_RATIO = 3.5
INT4_MIN_SIZE_RATIO = 6.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model and batch")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--auto-runs", type=int, default=10, help="runs auto times per candidate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--scale",
        choices=["bench", "small"],
        default="bench",
        help="bench: wider models, so kernels and not per-run overhead are timed; "
        "small: the examples' default sizes (microsecond runs, overhead-bound)",
    )
    parser.add_argument("--models", default="digits-cnn,dw-cnn,transformer,lstm")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/squeeze-bench-quantize"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--note", default="", help="a sentence for the results header (how busy the machine was)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # before numpy's, torch's and onnxruntime's thread pools exist
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    bench = _Bench(args)
    rows: list[Row] = []
    for name in args.models.split(","):
        started = time.perf_counter()
        rows.extend(bench.run_model(name.strip()))
        print(f"[{name}] done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    report = bench.report(rows)
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


@dataclass
class Row:
    model: str
    method: str
    config: str
    size_bytes: int
    fp32_size_bytes: int
    speedup: dict[int, float]  # batch -> FP32 median / this median
    median_ms: dict[int, float]
    speedup_p25: dict[int, float]  # batch -> the same with lower quartiles
    accuracy: float
    accuracy_change: float
    cosine: float
    notes: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        return self.fp32_size_bytes / self.size_bytes


@dataclass(frozen=True)
class ModelCase:
    name: str
    build: Callable[[], Any]  # -> torch.nn.Module
    inputs: Literal["images", "images32", "sequences"]
    task: Literal["classification", "embedding"]
    epochs: int
    lr: float
    # the job's batch size: what auto decides at (the target's batch for each model)
    job_batch: int = 32


class _Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        torch.set_num_threads(args.threads)
        self.args = args
        self.work = args.work_dir
        self.work.mkdir(parents=True, exist_ok=True)
        self.decisions: list[str] = []

    def cases(self) -> dict[str, ModelCase]:
        from service.examples import (
            DepthwiseSeparableCNN,
            DigitsCNN,
            RecurrentClassifier,
            TransformerEncoderClassifier,
        )

        big = self.args.scale == "bench"
        return {
            "digits-cnn": ModelCase("digits-cnn", DigitsCNN, "images", "classification", 8, 2e-3),
            "dw-cnn": ModelCase(
                "dw-cnn",
                # MobileNet-sized (1.08M weights, 64 -> 1024 channels); the 73k-weight
                # width 32 / 6 blocks version is bound by its depthwise convs and per-channel
                # overheads (1.11x at batch 32, 2.86x smaller: README)
                (lambda: DepthwiseSeparableCNN(width=64, blocks=8, input_size=32))
                if big
                else DepthwiseSeparableCNN,
                "images32" if big else "images",
                "classification",
                4,
                2e-3,
            ),
            "transformer": ModelCase(
                "transformer",
                (lambda: TransformerEncoderClassifier(d_model=256, heads=4, layers=4, ff=1024))
                if big
                else TransformerEncoderClassifier,
                "sequences",
                "embedding",
                4,
                5e-4,
                job_batch=1,
            ),
            "lstm": ModelCase(
                "lstm",
                (lambda: RecurrentClassifier("lstm", hidden=256)) if big else RecurrentClassifier,
                "sequences",
                "classification",
                6,
                2e-3,
            ),
        }

    def data(self, case: ModelCase) -> tuple[Any, Any, Any, Any]:
        import numpy as np
        import torch

        from service.examples import digits_arrays, digits_sequences

        if case.inputs == "sequences":
            (x_train, y_train), (x_test, y_test) = digits_sequences("train"), digits_sequences()
        else:
            (x_train, y_train), (x_test, y_test) = digits_arrays("train"), digits_arrays()
            if case.inputs == "images32":

                def resize(x: np.ndarray) -> np.ndarray:
                    up = torch.nn.functional.interpolate(
                        torch.from_numpy(x), size=32, mode="bilinear", align_corners=False
                    )
                    return np.ascontiguousarray(up.numpy())

                x_train, x_test = resize(x_train), resize(x_test)
        return x_train, y_train, x_test, y_test

    def run_model(self, name: str) -> list[Row]:
        import numpy as np

        from service.examples import export_onnx, train_classifier

        case = self.cases()[name]
        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=True)
        x_train, y_train, x_test, y_test = self.data(case)
        import torch

        # seeded per model: its initial weights must not depend on which models ran before
        torch.manual_seed(0)
        model = train_classifier(case.build(), x_train, y_train, epochs=case.epochs, lr=case.lr)
        fp32 = export_onnx(model, x_test[:1], folder / "fp32.onnx")
        calibration = np.ascontiguousarray(x_train[:256])

        candidates: dict[str, tuple[Path, str]] = {}
        failures: dict[str, str] = {}
        attempts: list[tuple[str, Callable[[], tuple[Path, str]]]] = [
            ("squeeze auto", lambda: self.squeeze_auto(case, fp32, x_test, y_test, calibration)),
            ("ort quantize_dynamic", lambda: self.ort_dynamic(fp32)),
            ("ort quantize_static", lambda: self.ort_static(fp32, calibration)),
        ]
        if case.name == "transformer":
            attempts.append(("squeeze int4", lambda: self.squeeze_int4(case, fp32, x_test)))
        for method, attempt in attempts:
            try:
                candidates[method] = attempt()
            except Exception as exc:  # a baseline that fails is a result too
                failures[method] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return self.measure(name, fp32, candidates, failures, x_test, y_test)

    # --- producing the models ---------------------------------------------------------

    def step_data(self, case: ModelCase, fp32: Path, x_test: Any, y_test: Any, calib: Any) -> Any:
        from core.formats import inspect_model
        from core.measure import measure_model_with_outputs
        from core.registry import StepData
        from core.spec import Targets, TaskSpec

        task = TaskSpec(kind=case.task)
        eval_arrays = {"input": x_test, "label": y_test}
        # a demanding user's target: half an accuracy point, or 0.995 cosine to FP32
        targets = Targets(max_metric_drop=0.005)
        original, outputs = measure_model_with_outputs(
            fp32, eval_arrays, task, case.job_batch, self.settings(self.args.auto_runs), "cpu"
        )
        return StepData(
            eval_arrays,
            {"input": calib},
            inspect_model(fp32).inputs,
            task,
            targets=targets,
            batch_size=case.job_batch,
            reference_outputs=outputs,
            original_metrics=original,
        )

    def settings(self, runs: int) -> Any:
        from core.context import MeasureSettings

        return MeasureSettings(threads=self.args.threads, warmup_runs=self.args.warmup, runs=runs)

    def squeeze_auto(
        self, case: ModelCase, fp32: Path, x_test: Any, y_test: Any, calib: Any
    ) -> tuple[Path, str]:
        from core.context import RunContext
        from core.registry import get_step
        from core.spec import AutoQuantize

        data = self.step_data(case, fp32, x_test, y_test, calib)
        ctx = RunContext(
            work_dir=self.work / case.name / "auto", measure=self.settings(self.args.auto_runs)
        )
        output = get_step("quantize")(fp32, AutoQuantize(method="quantize"), data, ctx)
        details = output.details
        table = ", ".join(
            f"{row['name']} {row['latency_ratio']:.2f}x, drop {row['metric_drop']:+.4f}"
            f"{' (chosen)' if row['chosen'] else ''}"
            for row in details["candidates"]
            if row["status"] == "measured"
        )
        held_out = details.get("held_out", {})
        rows = details.get("metric_rows", {})
        self.decisions.append(
            f"- **{case.name}**: chose `{details['chosen']}`: {details['chosen_reason']}. "
            f"Latency ratio vs FP32 at batch {details['decision_batch_size']} and metric drop "
            f"as auto measured them (on {rows.get('selection')} of the test rows): {table}"
            + (
                f". On the {held_out['rows']} held-out rows: drop {held_out['metric_drop']:+.4f}"
                if held_out.get("rows") and "metric_drop" in held_out
                else ""
            )
            + (
                f". Fallback: {details['fallback']}"
                if details.get("fallback", {}).get("ran")
                else ""
            )
        )
        return output.model_path, details["chosen"]

    def squeeze_int4(self, case: ModelCase, fp32: Path, x_test: Any) -> tuple[Path, str]:
        from core.context import RunContext
        from core.formats import inspect_model
        from core.registry import StepData, get_step
        from core.spec import Int4Quantize, TaskSpec

        data = StepData(
            {"input": x_test},
            {"input": x_test},
            inspect_model(fp32).inputs,
            TaskSpec(kind=case.task),
        )
        ctx = RunContext(work_dir=self.work / case.name / "int4")
        output = get_step("quantize")(fp32, Int4Quantize(method="quantize", mode="int4"), data, ctx)
        return output.model_path, "MatMulNBits, block 32, symmetric"

    def ort_dynamic(self, fp32: Path) -> tuple[Path, str]:
        from onnxruntime.quantization import quantize_dynamic

        output = fp32.with_name("ort-dynamic.onnx")
        quantize_dynamic(fp32, output)
        return output, "defaults (all ops incl. Conv, per-tensor)"

    def ort_static(self, fp32: Path, calibration: Any) -> tuple[Path, str]:
        from onnxruntime.quantization import CalibrationDataReader, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(
                    [{"input": calibration[i : i + 32]} for i in range(0, len(calibration), 32)]
                )

            def get_next(self) -> dict[str, Any] | None:
                return next(self.batches, None)

        output = fp32.with_name("ort-static.onnx")
        quantize_static(fp32, output, Reader())
        return output, "defaults (QDQ, S8S8, per-tensor, MinMax, 256 samples)"

    # --- measuring ----------------------------------------------------------------------

    def measure(
        self,
        name: str,
        fp32: Path,
        candidates: dict[str, tuple[Path, str]],
        failures: dict[str, str],
        x_test: Any,
        y_test: Any,
    ) -> list[Row]:
        import numpy as np

        from core.data import take_rows
        from core.measure import open_session
        from core.quantize.auto import time_interleaved

        settings = self.settings(self.args.runs)
        paths = [fp32, *(path for path, _ in candidates.values())]
        sessions = [open_session(path, settings, "cpu") for path in paths]
        outputs = [
            np.concatenate(
                [s.run(None, {"input": x_test[i : i + 64]})[0] for i in range(0, len(x_test), 64)]
            )
            for s in sessions
        ]
        medians: list[dict[int, float]] = [{} for _ in sessions]
        quartiles: list[dict[int, float]] = [{} for _ in sessions]
        for batch in BATCHES:
            feeds = take_rows({"input": x_test}, batch)
            # every model of this row group, interleaved A B C, C B A, A B C ...
            for index, times in enumerate(time_interleaved(sessions, feeds, settings)):
                medians[index][batch] = float(np.median(times))
                quartiles[index][batch] = float(np.percentile(times, 25))

        def accuracy(logits: np.ndarray) -> float:
            return float(np.mean(np.argmax(logits, axis=1) == y_test))

        def cosine(a: np.ndarray, b: np.ndarray) -> float:
            dot = np.sum(a * b, axis=1)
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            return float(np.mean(dot / np.maximum(norms, 1e-12)))

        base_accuracy = accuracy(outputs[0])
        rows = [
            Row(
                name,
                "FP32",
                "exported model",
                fp32.stat().st_size,
                fp32.stat().st_size,
                {b: 1.0 for b in BATCHES},
                medians[0],
                {b: 1.0 for b in BATCHES},
                base_accuracy,
                0.0,
                1.0,
            )
        ]
        for index, (method, (path, config)) in enumerate(candidates.items(), start=1):
            rows.append(
                Row(
                    name,
                    method,
                    config,
                    path.stat().st_size,
                    fp32.stat().st_size,
                    {b: medians[0][b] / medians[index][b] for b in BATCHES},
                    medians[index],
                    {b: quartiles[0][b] / quartiles[index][b] for b in BATCHES},
                    accuracy(outputs[index]),
                    accuracy(outputs[index]) - base_accuracy,
                    cosine(outputs[index], outputs[0]),
                )
            )
        for method, reason in failures.items():
            rows.append(
                Row(name, method, f"FAILED: {reason}", 1, 1, {}, {}, {}, float("nan"), 0.0, 0.0)
            )
        return rows

    # --- reporting ------------------------------------------------------------------------

    def report(self, rows: list[Row]) -> str:
        import onnxruntime
        import torch

        lines = [
            "# Quantization benchmark",
            "",
            f"`PYTHONPATH=. python bench/quantize.py --scale {self.args.scale} --runs "
            f"{self.args.runs} --threads {self.args.threads}` on {platform.machine()}, "
            f"{os.cpu_count()} cores, onnxruntime {onnxruntime.__version__}, torch "
            f"{torch.__version__}, {time.strftime('%Y-%m-%d')}. Medians of {self.args.runs} "
            f"interleaved runs after {self.args.warmup} warm-up runs, {self.args.threads} "
            "intra-op thread(s), spinning off." + (f" {self.args.note}" if self.args.note else ""),
            "",
            "Speed-up = FP32 time / model time, medians (lower quartiles in brackets).",
            "",
            "| model | method | config | size (x smaller) | speed-up b1 | speed-up b32 "
            "| FP32 ms b1 / b32 | accuracy (change, pts) | cosine to FP32 |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        fp32_ms = {row.model: row.median_ms for row in rows if row.method == "FP32"}
        for row in rows:
            if row.config.startswith("FAILED"):
                lines.append(f"| {row.model} | {row.method} | {row.config} | | | | | | |")
                continue
            ms = fp32_ms.get(row.model, {})
            lines.append(
                f"| {row.model} | {row.method} | {row.config} | {row.size_ratio:.2f} "
                f"| {row.speedup[1]:.2f}x ({row.speedup_p25[1]:.2f}x) "
                f"| {row.speedup[32]:.2f}x ({row.speedup_p25[32]:.2f}x) "
                f"| {ms.get(1, 0):.3f} / {ms.get(32, 0):.3f} "
                f"| {row.accuracy:.4f} ({100 * row.accuracy_change:+.2f}) | {row.cosine:.5f} |"
            )
        lines += ["", "## Targets (squeeze auto unless named)", ""]
        lines += [f"- {check}" for check in self.checks(rows)]
        lines += ["", "## What auto chose", "", *self.decisions, ""]
        return "\n".join(lines)

    def checks(self, rows: list[Row]) -> list[str]:
        def verdict(ok: bool) -> str:
            return "PASS" if ok else "FAIL"

        auto = {
            row.model: row
            for row in rows
            if row.method == "squeeze auto" and not row.config.startswith("FAILED")
        }
        checks = []
        if "transformer" in auto:
            row = auto["transformer"]
            ok = row.speedup[1] >= TRANSFORMER_SPEEDUP_B1 and row.cosine >= TRANSFORMER_MIN_COSINE
            checks.append(
                f"{verdict(ok)} transformer >= {TRANSFORMER_SPEEDUP_B1}x faster at batch 1 with "
                f">= {TRANSFORMER_MIN_COSINE} cosine: {row.speedup[1]:.2f}x, cosine "
                f"{row.cosine:.5f}"
            )
        for model in ("digits-cnn", "dw-cnn"):
            if model in auto:
                row = auto[model]
                drop = -100 * row.accuracy_change
                ok = row.speedup[32] >= CNN_SPEEDUP_B32 and drop <= CNN_MAX_DROP_POINTS
                checks.append(
                    f"{verdict(ok)} {model} >= {CNN_SPEEDUP_B32}x faster at batch 32 with <= "
                    f"{CNN_MAX_DROP_POINTS} point drop: {row.speedup[32]:.2f}x, accuracy "
                    f"{-drop:+.2f} points"
                )
        for model, row in auto.items():
            slowest = min(row.speedup.values())
            checks.append(
                f"{verdict(slowest >= 1.0)} {model}: auto not slower than FP32: speed-up "
                + ", ".join(f"b{b} {row.speedup[b]:.2f}x" for b in BATCHES)
            )
        for row in rows:
            if row.config.startswith("FAILED") or row.method == "FP32":
                continue
            if row.method == "squeeze int4" or (
                row.method == "squeeze auto" and row.config.startswith("int4")
            ):
                checks.append(
                    f"{verdict(row.size_ratio >= INT4_MIN_SIZE_RATIO)} {row.model} INT4 >= "
                    f"{INT4_MIN_SIZE_RATIO}x smaller: {row.size_ratio:.2f}x"
                )
            elif row.method == "squeeze auto" and row.config not in ("input", "fp16"):
                checks.append(
                    f"{verdict(row.size_ratio >= INT8_MIN_SIZE_RATIO)} {row.model} INT8 (auto: "
                    f"{row.config}) >= {INT8_MIN_SIZE_RATIO}x smaller: {row.size_ratio:.2f}x"
                )
        return checks


if __name__ == "__main__":
    sys.exit(main())
