"""Benchmark: squeeze's goal-driven `auto` against what a user would do by hand, six models.

For each model of bench/auto_models.py (a MobileNet-sized depthwise classifier, a U-Net
segmenter, a CRNN text-line recogniser with a CTC head, the real all-MiniLM-L6-v2
sentence encoder, a stateful GRU streaming model, an MLP), in one process:

- **FP32** in ONNX Runtime: the exported model, the base of every ratio;
- **ort quantize_dynamic** / **ort quantize_static**: ONNX Runtime's quantizer with its
  default arguments (static: 256 calibration rows of the training data, batches of 32);
- **openvino default**: `ov.convert_model` on the ONNX file, opened with the CPU plugin's
  default precision (bf16 on CPUs that have it), what converting by hand gives;
- **nncf quantize**: `nncf.quantize` with its defaults on the converted model (the tool a
  CPU user would pick instead), the plugin's default precision;
- **squeeze quantize**: a job with steps [{"method": "quantize"}] (auto mode), one ONNX
  Runtime deployment target under this benchmark's session settings;
- **squeeze auto**: a job with a goal (`--goal`, default fastest) and training data, with
  deployment targets onnxruntime and openvino under the same settings: one row per target,
  each model on its own runtime.

The jobs learn on the training rows minus a cut of them, which is their eval data (they
choose on half of it and judge on the other half); the test rows this table scores on are
never seen by a job nor by a calibration. Every candidate is opened under the same
session settings (`--threads`, ONNX Runtime's thread spinning `--spinning`, OpenVINO's
LATENCY hint) and timed interleaved in this one process (core.timing.time_interleaved, in
turns of 5 runs after an untimed one when spinning is on), at batch 1 and 32; medians
(lower quartiles in brackets). Metric: the task's judged metric (core.metrics) on the
test rows, its change relative to FP32's; "ok" = within a 1% relative drop.

Then the issue's targets are checked and printed: never slower than FP32 at batch 1 or 32
(or the job saying targets_met false), >= 1.5x at batch 1 on four of the six, >= 2x on
the CNNs at batch 32, the geometric-mean speed-up at batch 1 above every hand-made
baseline's (a candidate over the metric limit, or failed, counts 1.0x: nobody ships it),
a job on a model of a million weights or more within 20 minutes.

Run from the repository root (not part of the test suite; `make bench-deps` first for the
real MiniLM):

    PYTHONPATH=. python bench/auto.py [--scale bench|small] [--runs 30] [--threads 2] \
        [--models dw-cnn,segmenter,recogniser,minilm,streaming,mlp] [--goal fastest|2x]

Trained models are cached under `--work-dir` (`--retrain` rebuilds them). A failure of one
model, baseline or job is a row with its reason, never the end of the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "auto.md"
BATCHES = (1, 32)
MAX_RELATIVE_DROP = 0.01
# the targets
SPEEDUP_B1 = 1.5
SPEEDUP_B1_MODELS = 4
CNN_SPEEDUP_B32 = 2.0
MID_SIZED_WEIGHTS = 1_000_000
JOB_LIMIT_S = 20 * 60
HAND_MADE = ("ort quantize_dynamic", "ort quantize_static", "openvino default", "nncf quantize")
CALIBRATION_ROWS = 256
STEPS = ("ort-dynamic", "ort-static", "openvino", "nncf", "quantize-job", "auto-job")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.auto_models import CASES

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--scale", choices=["bench", "small"], default="bench")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per candidate, batch")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="default: the usable CPUs")
    parser.add_argument("--spinning", choices=["on", "off"], default="on",
                        help="ONNX Runtime's thread spinning (on: its default)")  # fmt: skip
    parser.add_argument("--goal", default="fastest", help="fastest, or a speed-up such as 2x")
    parser.add_argument(
        "--auto-step", default="", help='JSON merged into the auto step: \'{"long_epochs": 0}\''
    )
    parser.add_argument("--job-runs", type=int, default=30, help="the jobs' timed runs")
    parser.add_argument("--skip", default="", help=f"comma list of {', '.join(STEPS)}")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/squeeze-bench-auto"))
    parser.add_argument("--retrain", action="store_true", help="ignore cached models")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="a sentence for the header (machine load)")
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.skip.split(","))) - set(STEPS)
    if unknown:
        parser.error(f"--skip: unknown {sorted(unknown)}; known: {', '.join(STEPS)}")
    for name in args.models.split(","):
        if name not in CASES:
            parser.error(f"--models: unknown {name!r}; known: {', '.join(CASES)}")
    return args


def goal_of(text: str) -> dict[str, Any]:
    if text == "fastest":
        return {"fastest": True}
    return {"speedup": float(text.rstrip("x"))}


def reason(exc: BaseException) -> str:
    """An exception in one table cell: OpenVINO's "Exception from src/...cpp:75:" and
    "Check '...' failed at ...:" prefixes dropped, so the sentence that says what is
    wrong is what is left."""
    import re

    text = " ".join(str(exc).split())
    text = re.sub(r"(Exception from \S+:\d+:|Check '.*?' failed at \S+:\d+:)\s*", "", text)
    return f"{type(exc).__name__}: {text.replace('|', '/')[:240]}"


# --- what is compared --------------------------------------------------------------------------


@dataclass
class Candidate:
    method: str
    runtime: str
    config: str
    group: str  # "fp32", "control", "hand", "squeeze quantize", "squeeze auto"
    prepared: Any = None  # core.runtimes.PreparedModel
    failure: str | None = None
    job_seconds: float | None = None
    # squeeze's rows: the job's own verdict of this target
    job_met: bool | None = None
    deployable: bool = False  # the job's checks other than the goal's all held
    job_speedup_b1: float | None = None  # the job's own timing against the ORT original


@dataclass
class Row:
    model: str
    method: str
    runtime: str
    config: str
    group: str
    size_ratio: float = float("nan")
    median_ms: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)
    speedup_p25: dict[int, float] = field(default_factory=dict)
    metric_name: str = ""
    metric: float = float("nan")
    relative_change: float = float("nan")
    within: bool = False
    job_seconds: float | None = None
    job_met: bool | None = None
    deployable: bool = False
    job_speedup_b1: float | None = None
    failure: str | None = None


@dataclass
class ModelInfo:
    name: str
    kind: str
    cnn: bool
    description: str = ""
    weights: int = 0
    fp32_bytes: int = 0
    train_rows: int = 0
    job_eval_rows: int = 0
    test_rows: int = 0
    train_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    failure: str | None = None


class Feeder:
    """A model's inputs from a dataset, as core.data feeds a job (sample axes moved,
    constants added), in batches or exactly n rows (repeated when fewer)."""

    def __init__(self, onnx_path: Path, task: Any, arrays: dict[str, Any]) -> None:
        from core.data import feed_layout, model_feeds
        from core.formats import inspect_model

        inputs = inspect_model(onnx_path).inputs
        self.feeds = model_feeds(arrays, inputs, task)
        self.layout = feed_layout(arrays, inputs, task)

    def batches(self, size: int, limit: int | None = None) -> Iterator[dict[str, Any]]:
        from core.data import iter_batches

        for batch in iter_batches(self.feeds, size, limit):
            yield self.layout.to_model(batch)

    def exactly(self, rows: int) -> dict[str, Any]:
        from core.data import take_rows

        return self.layout.to_model(take_rows(self.feeds, rows))


# --- the run -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from core.runtimes.settings import RunSettings, usable_cpus

        self.args = args
        self.threads = args.threads or usable_cpus()
        self.spinning = args.spinning == "on"
        self.session = RunSettings(threads=self.threads, runtime_defaults=self.spinning)
        self.skip = set(filter(None, args.skip.split(",")))
        self.work: Path = args.work_dir
        self.work.mkdir(parents=True, exist_ok=True)

    def run_model(self, name: str) -> tuple[ModelInfo, list[Row]]:
        import numpy as np

        from bench.auto_models import CASES, prepare, rows, to_job_layout
        from core.formats import count_parameters, load_model
        from core.spec import TaskSpec

        case = CASES[name]
        info = ModelInfo(name, case.kind, case.cnn)
        try:
            prepared = prepare(case, self.args.scale, self.work, retrain=self.args.retrain)
        except Exception as exc:
            traceback.print_exc()
            info.failure = f"building or training failed: {reason(exc)}"
            return info, []
        info.description, info.notes = prepared.description, list(prepared.notes)
        info.train_seconds = prepared.train_seconds
        info.weights = count_parameters(load_model(prepared.onnx_path))
        info.fp32_bytes = prepared.onnx_path.stat().st_size
        task = TaskSpec.model_validate(prepared.task)
        folder = self.work / "runs" / f"{name}-{self.args.scale}"
        folder.mkdir(parents=True, exist_ok=True)

        # the jobs' data: their eval rows cut from the training rows (seeded), never the
        # test rows; the rest trains and calibrates
        total = len(next(iter(prepared.train.values())))
        order = np.random.default_rng(0).permutation(total)
        cut = max(total // 5, 128)
        job_train, job_eval = rows(prepared.train, order[cut:]), rows(prepared.train, order[:cut])
        info.train_rows, info.job_eval_rows = total - cut, cut
        info.test_rows = len(next(iter(prepared.test.values())))
        data = folder / "data"
        data.mkdir(exist_ok=True)
        for split, arrays in (("train", job_train), ("eval", job_eval)):
            layout = to_job_layout(arrays, prepared.sample_axes)
            np.savez(data / f"{split}.npz", **layout)  # type: ignore[arg-type]
        datasets = {"train": data / "train.npz", "eval": data / "eval.npz"}

        fp32 = prepared.onnx_path
        calibration = Feeder(fp32, task, to_job_layout(job_train, prepared.sample_axes))
        test = Feeder(fp32, task, to_job_layout(prepared.test, prepared.sample_axes))
        candidates = self.hand_made(fp32, calibration, folder)
        if "quantize-job" not in self.skip:
            candidates += self.job(
                "squeeze quantize", fp32, prepared.task, datasets, folder / "quantize-job",
                info, auto=False,
            )  # fmt: skip
        if "auto-job" not in self.skip:
            candidates += self.job(
                "squeeze auto", fp32, prepared.task, datasets, folder / "auto-job", info,
                auto=True,
            )  # fmt: skip
        labels = prepared.test.get(task.labels) if task.kind != "embedding" else None
        return info, self.measure(name, fp32, task, candidates, test, labels)

    # --- the hand-made baselines -----------------------------------------------------------

    def hand_made(self, fp32: Path, calibration: Feeder, folder: Path) -> list[Candidate]:
        from core.runtimes import PreparedModel, get_runtime
        from core.runtimes import openvino_compress as oc

        ort = get_runtime("onnxruntime")
        batches = list(calibration.batches(32, CALIBRATION_ROWS))

        def ort_model(path: Path, where: str) -> Any:
            return ort.prepare(path, folder / where)

        def plugin_default(candidate: Any) -> Any:
            # the CPU plugin's own precision, as a user who converts by hand gets it
            built = candidate.prepared
            return PreparedModel(built.runtime, built.files, built.details, open_config={})

        attempts: list[tuple[str, str, str, str, Callable[[], Any]]] = [
            ("FP32", "onnxruntime", "exported model", "", lambda: ort_model(fp32, "fp32")),
            # the same model in a second session: how far timing noise alone moves a ratio
            ("FP32, second session", "onnxruntime", "noise check: the same model again", "",
             lambda: ort_model(fp32, "fp32-copy")),
            ("ort quantize_dynamic", "onnxruntime", "defaults (all ops, per-tensor)",
             "ort-dynamic", lambda: ort_model(self.ort_dynamic(fp32, folder), "ort-dynamic")),
            ("ort quantize_static", "onnxruntime",
             f"defaults (QDQ, S8S8, per-tensor, MinMax, {CALIBRATION_ROWS} rows)", "ort-static",
             lambda: ort_model(self.ort_static(fp32, batches, folder), "ort-static")),
            ("openvino default", "openvino", "convert_model, the plugin's default precision",
             "openvino", lambda: plugin_default(oc.fp32_ir(fp32, folder / "ov-default"))),
            ("nncf quantize", "openvino",
             f"nncf.quantize defaults ({CALIBRATION_ROWS} rows), the plugin's default precision",
             "nncf", lambda: plugin_default(oc.nncf_int8(fp32, batches, folder / "nncf-int8"))),
        ]  # fmt: skip
        built = []
        for method, runtime, config, step, make in attempts:
            if step in self.skip:
                continue
            group = {"FP32": "fp32", "FP32, second session": "control"}.get(method, "hand")
            candidate = Candidate(method, runtime, config, group)
            try:
                candidate.prepared = make()
            except Exception as exc:  # a baseline that fails is a result too
                candidate.failure = reason(exc)
            built.append(candidate)
        return built

    def ort_dynamic(self, fp32: Path, folder: Path) -> Path:
        from onnxruntime.quantization import quantize_dynamic

        output = folder / "ort-dynamic.onnx"
        quantize_dynamic(fp32, output)
        return output

    def ort_static(self, fp32: Path, batches: list[dict[str, Any]], folder: Path) -> Path:
        from onnxruntime.quantization import CalibrationDataReader, quantize_static

        class Reader(CalibrationDataReader):  # type: ignore[misc]
            def __init__(self) -> None:
                self.batches = iter(batches)

            def get_next(self) -> dict[str, Any] | None:
                return next(self.batches, None)

        output = folder / "ort-static.onnx"
        quantize_static(fp32, output, Reader())
        return output

    # --- squeeze's jobs ----------------------------------------------------------------------

    def job(
        self, method: str, fp32: Path, task: dict[str, Any], datasets: dict[str, Path],
        work: Path, info: ModelInfo, *, auto: bool,
        targets: tuple[str, ...] | list[str] = ("onnxruntime", "openvino"),
    ) -> list[Candidate]:  # fmt: skip
        """One job in process, as a worker runs it; one candidate per deployment target
        (the auto job names `targets`, the quantize job ONNX Runtime alone)."""
        import shutil

        from core.context import MeasureSettings, RunContext
        from core.pipeline import run
        from core.runtimes import PreparedModel
        from core.spec import JobSpec

        session = {"threads": [self.threads], "runtime_defaults": self.spinning}
        spec: dict[str, Any] = {
            "model_id": "bench",
            "eval_dataset_id": "eval",
            "task": task,
            "targets": {"max_metric_drop": MAX_RELATIVE_DROP, "metric_drop_mode": "relative"},
            "batch_sizes": list(BATCHES),
        }
        if auto:
            goal = goal_of(self.args.goal)
            spec |= {
                "train_dataset_id": "train",
                "goal": goal,
                "deployment": [{"runtime": runtime, **session} for runtime in targets],
            }
            if self.args.auto_step:
                options = json.loads(self.args.auto_step)
                spec["steps"] = [{"method": "auto", "goal": goal, **options}]
        else:
            spec |= {
                "calibration_dataset_id": "train",
                "steps": [{"method": "quantize"}],
                "deployment": [{"runtime": "onnxruntime", **session}],
            }
        shutil.rmtree(work, ignore_errors=True)
        started = time.perf_counter()
        try:
            result, final = run(
                fp32, datasets, JobSpec.model_validate(spec),
                RunContext(
                    work_dir=work,
                    measure=MeasureSettings(self.threads, self.args.warmup, self.args.job_runs),
                ),
            )  # fmt: skip
        except Exception as exc:
            traceback.print_exc()
            seconds = time.perf_counter() - started
            info.jobs.append(f"{method}: FAILED after {seconds:.0f} s: {reason(exc)}")
            failed = Candidate(method, "", "", method, failure=f"job failed: {reason(exc)}",
                               job_seconds=seconds)  # fmt: skip
            if len(spec.get("deployment", [])) < 2:
                return [failed]
            # one target's failure must not hide the recipe's other result: the same job
            # again with ONNX Runtime alone (its rows say so)
            retry = self.job(
                f"{method}, onnxruntime only", fp32, task, datasets,
                work.with_name(work.name + "-ort"), info, auto=auto, targets=["onnxruntime"],
            )  # fmt: skip
            for candidate in retry:
                candidate.group = method
            return [failed, *retry]
        seconds = time.perf_counter() - started
        (work / "result.json").write_text(result.model_dump_json(indent=1))
        info.jobs.append(f"{method}: {seconds:.0f} s. " + describe_job(result))
        step = result.steps[0].details if result.steps else {}
        built = []
        for target in result.targets:
            if target.runtime == "onnxruntime":
                files: tuple[Path, ...] = (final,)
            else:
                xml = next(name for name in target.artifacts if name.endswith(".xml"))
                files = (work / "artifacts" / xml, work / "artifacts" / xml.replace(".xml", ".bin"))
            prepared = PreparedModel(target.runtime, files, open_config=dict(target.open_config))
            chosen = step.get("chosen", "?") if target.runtime == "onnxruntime" else target.chosen
            # against the ONNX Runtime original: an ONNX Runtime target's verdict is that
            # comparison already; another runtime's is its `vs_onnxruntime`
            versus = target.verdict.speed if target.runtime == "onnxruntime" else (
                target.vs_onnxruntime
            )
            b1 = [s.ratio for s in versus if s.batch_size == 1]
            built.append(
                Candidate(
                    f"{method} ({target.name})", target.runtime,
                    f"{chosen}; job: {target.verdict.outcome}", method, prepared,
                    job_seconds=seconds, job_met=target.verdict.targets_met,
                    deployable=all(
                        check.met for check in target.verdict.checks
                        if check.target not in ("min_speedup", "max_latency_ms", "max_size_bytes")
                    ) and not any(speed.slower for speed in versus),
                    job_speedup_b1=1.0 / b1[0] if b1 and b1[0] > 0 else None,
                )
            )  # fmt: skip
        return built

    # --- measuring ---------------------------------------------------------------------------

    def measure(
        self, model: str, fp32: Path, task: Any, candidates: list[Candidate], test: Feeder,
        labels: Any,
    ) -> list[Row]:  # fmt: skip
        import numpy as np

        from core.metrics import compute, judged_metric
        from core.runtimes import get_runtime
        from core.timing import time_interleaved

        metric_name = judged_metric(task, labels is not None)
        opened: list[tuple[Candidate, Any, Any]] = []  # candidate, runner, outputs
        for candidate in candidates:
            if candidate.failure is not None:
                continue
            try:
                runner = get_runtime(candidate.runtime).open(candidate.prepared, self.session)
                wanted = task.metric_output(runner.output_names)
                index = runner.output_names.index(wanted) if wanted in runner.output_names else 0
                outputs = np.concatenate([runner.run(b)[index] for b in test.batches(64)])
                for batch in BATCHES:  # a model that cannot run a timed batch fails here
                    runner.run(test.exactly(batch))
                opened.append((candidate, runner, outputs))
            except Exception as exc:
                candidate.failure = f"could not run: {reason(exc)}"
        if not opened or opened[0][0].group != "fp32":
            return [self.failed_row(model, c, "FP32 could not run") for c in candidates]
        reference = opened[0][2]
        values = []
        for candidate, _, outputs in opened:
            try:
                values.append(compute(metric_name, task, outputs, labels, reference))
            except Exception as exc:
                candidate.failure = f"metric failed: {reason(exc)}"
                values.append(float("nan"))
        medians: list[dict[int, float]] = [{} for _ in opened]
        quartiles: list[dict[int, float]] = [{} for _ in opened]
        block = 5 if self.spinning else 1
        for batch in BATCHES:
            feeds = test.exactly(batch)
            calls = [lambda r=runner, f=feeds: r.run(f) for _, runner, _ in opened]
            times = time_interleaved(calls, self.args.warmup, self.args.runs, block)
            for index, samples in enumerate(times):
                medians[index][batch] = float(np.median(samples))
                quartiles[index][batch] = float(np.percentile(samples, 25))
        base_value, base_bytes = values[0], fp32.stat().st_size
        rows = []
        for index, (candidate, _, _) in enumerate(opened):
            if candidate.failure is not None:
                continue
            change = (values[index] - base_value) / max(abs(base_value), 1e-12)
            rows.append(
                Row(
                    model, candidate.method, candidate.runtime, candidate.config, candidate.group,
                    base_bytes / candidate.prepared.size_bytes(), medians[index],
                    {b: medians[0][b] / medians[index][b] for b in BATCHES},
                    {b: quartiles[0][b] / quartiles[index][b] for b in BATCHES},
                    metric_name, values[index], change, -change <= MAX_RELATIVE_DROP + 1e-12,
                    candidate.job_seconds, candidate.job_met, candidate.deployable,
                    candidate.job_speedup_b1,
                )
            )  # fmt: skip
        rows += [self.failed_row(model, c, c.failure) for c in candidates if c.failure]
        return rows

    @staticmethod
    def failed_row(model: str, candidate: Candidate, failure: str | None) -> Row:
        return Row(model, candidate.method, candidate.runtime, candidate.config, candidate.group,
                   job_seconds=candidate.job_seconds, failure=failure)  # fmt: skip


def describe_job(result: Any) -> str:
    """What a job chose and why, in a line or two for the results file."""
    parts = []
    for step in result.steps:
        details = step.details
        if details.get("mode") == "auto" and "budget" in details:
            measured = [c for c in details["candidates"] if c.get("status") == "measured"
                        and c.get("name") != "input"]  # fmt: skip
            best = ", ".join(
                f"{c['name']} {c['latency_ratio']:.2f}x lat, drop {c['metric_drop']:+.4f}"
                for c in sorted(measured, key=lambda c: c["latency_ratio"])[:4]
            )
            failed = [f"{c['name']} ({c.get('note', '?')[:120]})"
                      for c in details["candidates"] if c.get("status") == "failed"]  # fmt: skip
            parts.append(
                f"auto: {details['budget']['candidates']} candidates in "
                f"{details['budget']['spent_s']:.0f} s, chose {details['chosen']} "
                f"({details['chosen_reason'][:160]}); fastest measured: {best or 'none'}"
                + (f"; failed: {', '.join(failed)}" if failed else "")
                + (f"; skipped: {details['skipped_kinds']}" if details.get("skipped_kinds") else "")
                + (
                    f"; stopped: {details['budget']['stopped_by']}"
                    if details["budget"].get("stopped_by")
                    else ""
                )
            )
        elif "chosen" in details:
            why = str(details.get("chosen_reason", ""))[:160]
            parts.append(f"quantize: chose {details['chosen']} ({why})")
    for target in result.targets:
        parts.append(
            f"{target.name}: {target.chosen}, {target.verdict.outcome} "
            f"({target.verdict.outcome_reason[:160]})"
        )
    return "; ".join(parts)


# --- the targets and the report ------------------------------------------------------------------


def effective_b1(row: Row | None) -> float:
    """The speed-up a user gets at batch 1: a row over the metric limit (or failed) is not
    shipped, the original is: 1.0x."""
    if row is None or row.failure is not None or not row.within:
        return 1.0
    return row.speedup[1]


def auto_pick(rows: list[Row]) -> Row | None:
    """The target of the auto job a user would deploy, by the job's own word: among the
    targets whose every check but the goal's held and that the job did not find slower
    than the ONNX Runtime original at any batch size (an OpenVINO target: its
    `vs_onnxruntime`), the fastest by the job's own timing against that original at
    batch 1. None: no such target."""
    deployable = [r for r in rows if r.group == "squeeze auto" and r.failure is None
                  and r.deployable]  # fmt: skip
    if not deployable:
        return None
    return max(deployable, key=lambda r: r.job_speedup_b1 or 0.0)


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(max(v, 1e-9)) for v in values) / len(values)) if values else 0.0


def checks(infos: list[ModelInfo], rows: list[Row]) -> list[str]:
    from core.timing import MIN_TOLERANCE

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    models = [i.name for i in infos if i.failure is None]
    by_model = {m: [r for r in rows if r.model == m] for m in models}
    picks = {m: auto_pick(by_model[m]) for m in models}
    lines = []
    if len(models) < 6:
        lines.append(
            f"(only {len(models)} model(s) ran: the counts below are out of those, not the "
            "issue's six)"
        )
    # 1. never slower
    floor = 1.0 / (1.0 + MIN_TOLERANCE)
    for model in models:
        pick = picks[model]
        jobs = [r for r in by_model[model] if r.group == "squeeze auto"]
        if not jobs or all(r.failure for r in jobs):
            lines.append(f"FAIL {model}: no auto job result")
            continue
        if pick is None:
            lines.append(f"PASS {model}: never slower: the job met no target (targets_met false)")
            continue
        ok = all(pick.speedup[b] >= floor for b in BATCHES) and pick.within
        lines.append(
            f"{verdict(ok)} {model}: never slower than FP32 (within {MIN_TOLERANCE:.0%} timing "
            f"noise) at <= 1% drop: {pick.method} b1 {pick.speedup[1]:.2f}x, b32 "
            f"{pick.speedup[32]:.2f}x, metric {100 * pick.relative_change:+.2f}%"
        )
    # 2. >= 1.5x at batch 1 on four of six; >= 2x on the CNNs at batch 32
    fast = [m for m in models if effective_b1(picks[m]) >= SPEEDUP_B1]
    lines.append(
        f"{verdict(len(fast) >= SPEEDUP_B1_MODELS)} >= {SPEEDUP_B1}x at batch 1 (<= 1% drop) on "
        f">= {SPEEDUP_B1_MODELS} models: {len(fast)} ({', '.join(fast) or 'none'}); "
        + ", ".join(f"{m} {effective_b1(picks[m]):.2f}x" for m in models)
    )
    for info in infos:
        if info.failure is None and info.cnn:
            pick = picks[info.name]
            b32 = pick.speedup[32] if pick is not None and pick.within else 1.0
            lines.append(
                f"{verdict(b32 >= CNN_SPEEDUP_B32)} {info.name} (a CNN) >= {CNN_SPEEDUP_B32}x at "
                f"batch 32 (<= 1% drop): {b32:.2f}x"
            )
    # 3. the geometric mean at batch 1 against each hand-made baseline
    auto_mean = geomean([effective_b1(picks[m]) for m in models])
    for method in HAND_MADE:
        values = []
        for model in models:
            row = next((r for r in by_model[model] if r.method == method), None)
            values.append(effective_b1(row))
        mean = geomean(values)
        lines.append(
            f"{verdict(auto_mean > mean)} geometric-mean speed-up at batch 1: squeeze auto "
            f"{auto_mean:.2f}x > {method} {mean:.2f}x"
        )
    quantize = geomean(
        [
            effective_b1(next((r for r in by_model[m] if r.group == "squeeze quantize"), None))
            for m in models
        ]
    )
    lines.append(f"(for reference: squeeze quantize's geometric mean at batch 1: {quantize:.2f}x)")
    # 4. a job on a mid-sized model within 20 minutes
    for info in infos:
        if info.failure is None and info.weights >= MID_SIZED_WEIGHTS:
            seconds = [r.job_seconds for r in by_model[info.name]
                       if r.group == "squeeze auto" and r.job_seconds is not None]  # fmt: skip
            if seconds:
                lines.append(
                    f"{verdict(seconds[0] <= JOB_LIMIT_S)} {info.name} ({info.weights / 1e6:.1f}M "
                    f"weights): the auto job took {seconds[0]:.0f} s (limit {JOB_LIMIT_S} s)"
                )
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def versions() -> str:
    import importlib

    found = []
    for name in ("torch", "onnxruntime", "openvino", "nncf", "onnx", "transformers"):
        try:
            found.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def report(
    args: argparse.Namespace, bench: Bench, infos: list[ModelInfo], rows: list[Row],
    load: tuple[tuple[float, ...], tuple[float, ...]], wall_s: float,
) -> str:  # fmt: skip
    command = "PYTHONPATH=. python bench/auto.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Auto: squeeze's goal-driven recipe against the hand-made baselines",
        "",
        f"`{command}` on {machine()}, {versions()}, {time.strftime('%Y-%m-%d %H:%M')}; "
        f"the whole run {wall_s / 60:.1f} min. Every candidate opened with {bench.threads} "
        f"thread(s), ONNX Runtime thread spinning {args.spinning}, OpenVINO LATENCY hint; "
        f"medians of {args.runs} interleaved runs after {args.warmup} warm-up runs (lower "
        f"quartiles in brackets). Load average at the start {load[0][0]:.1f}, at the end "
        f"{load[1][0]:.1f}." + (f" {args.note}" if args.note else ""),
        "",
        "Speed-up = FP32 ONNX Runtime time / candidate time, same batch. Metric on the test "
        "rows (no job, calibration or choice saw them), change relative to FP32; 'ok' = "
        f"within {100 * MAX_RELATIVE_DROP:g}% relative. squeeze rows: job = its wall time and "
        "its own verdict (met / missed); auto's goal: "
        f"{json.dumps(goal_of(args.goal))}"
        + (f", auto step {args.auto_step}" if args.auto_step else "") + ".",
        "",
        "## Models",
        "",
        "| model | task | what | weights | FP32 MB | rows: job train / job eval / test | "
        "trained in | notes |",
        "|---|---|---|---:|---:|---|---:|---|",
    ]
    for info in infos:
        if info.failure is not None:
            lines.append(f"| {info.name} | {info.kind} | FAILED: {info.failure} | | | | | |")
            continue
        lines.append(
            f"| {info.name} | {info.kind} | {info.description} | {info.weights / 1e6:.2f}M "
            f"| {info.fp32_bytes / 1e6:.1f} | {info.train_rows} / {info.job_eval_rows} / "
            f"{info.test_rows} | {info.train_seconds:.0f} s | {'; '.join(info.notes)} |"
        )
    lines += [
        "",
        "## Results",
        "",
        "| model | method | runtime | config | size (x smaller) | speed-up b1 | speed-up b32 "
        "| FP32 ms b1 / b32 | metric (change) | ok | job |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    fp32_ms = {r.model: r.median_ms for r in rows if r.group == "fp32" and r.failure is None}
    for row in rows:
        job = ""
        if row.job_seconds is not None:
            met = {True: "met", False: "missed", None: ""}[row.job_met]
            job = f"{row.job_seconds:.0f} s {met}".strip()
        if row.failure is not None:
            lines.append(f"| {row.model} | {row.method} | {row.runtime} | FAILED: {row.failure} "
                         f"| | | | | | | {job} |")  # fmt: skip
            continue
        ms = fp32_ms.get(row.model, {})
        lines.append(
            f"| {row.model} | {row.method} | {row.runtime} | {row.config} | {row.size_ratio:.2f} "
            f"| {row.speedup[1]:.2f}x ({row.speedup_p25[1]:.2f}x) "
            f"| {row.speedup[32]:.2f}x ({row.speedup_p25[32]:.2f}x) "
            f"| {ms.get(1, 0):.3f} / {ms.get(32, 0):.2f} "
            f"| {row.metric_name} {row.metric:.4f} ({100 * row.relative_change:+.2f}%) "
            f"| {'ok' if row.within else 'no'} | {job} |"
        )
    lines += ["", "## Batch 1 as a user gets it (over the metric limit or failed: 1.00x)", ""]
    models = [i.name for i in infos if i.failure is None]
    methods = [*HAND_MADE, "squeeze quantize", "squeeze auto"]
    lines += ["| model | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    columns: dict[str, list[float]] = {m: [] for m in methods}
    for model in models:
        model_rows = [r for r in rows if r.model == model]
        cells = []
        for method in methods:
            picked: Row | None
            if method == "squeeze auto":
                picked = auto_pick(model_rows)
            else:
                picked = next((r for r in model_rows
                            if r.method == method or (r.group == method == "squeeze quantize")),
                           None)  # fmt: skip
            value = effective_b1(picked)
            columns[method].append(value)
            cells.append(f"{value:.2f}x")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines.append(
        "| geometric mean | " + " | ".join(f"{geomean(columns[m]):.2f}x" for m in methods) + " |"
    )
    lines += ["", "## Targets (squeeze auto: the target the job would have a user deploy)", ""]
    lines += [f"- {line}" for line in checks(infos, rows)]
    lines += ["", "## What the jobs did", ""]
    for info in infos:
        for job in info.jobs:
            lines.append(f"- **{info.name}**, {job}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        # before numpy's, torch's and onnxruntime's thread pools exist
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    load_start = os.getloadavg()
    bench = Bench(args)
    infos: list[ModelInfo] = []
    rows: list[Row] = []
    text = ""
    for name in args.models.split(","):
        model_started = time.perf_counter()
        try:
            info, model_rows = bench.run_model(name)
        except Exception as exc:  # one model's failure is a row, not the end of the run
            traceback.print_exc()
            from bench.auto_models import CASES

            info = ModelInfo(name, CASES[name].kind, CASES[name].cnn, failure=reason(exc))
            model_rows = []
        infos.append(info)
        rows.extend(model_rows)
        print(f"[{name}] done in {time.perf_counter() - model_started:.0f} s", file=sys.stderr)
        # the table so far, after every model: a run of hours stopped early keeps its rows
        text = report(args, bench, infos, rows, (load_start, os.getloadavg()),
                      time.perf_counter() - started)  # fmt: skip
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"written to {args.output} ({len(infos)} model(s) so far)", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
