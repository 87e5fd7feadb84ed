"""Architecture search benchmark on digits: the best model found under a latency budget
against a hand-designed baseline of similar cost, and the front each algorithm finds.

The baseline is service.examples.DigitsCNN (the CNN the demo uploads: two 3x3 convs and
two linear layers, 268k parameters), trained with the same recipe as every trial (Adam,
the same epochs, learning rate and batch size) on the whole training split, and exported
to ONNX as a user would. The search runs the `search` step as a job runs it (core's step
function with a RunContext, in process, study in memory) with the baseline as the job's
model, on the digits training split: 20% of it held out to score the trials, in the CNN
family narrowed by --space (the declared ranges reach CNNs of thousands of channels,
pointless on 8x8 images) with --max-trial-s per trial. Trial latency is measured in
ONNX Runtime at the job's batch size (32), like the limit.

1. Best under a latency budget: a constrained search (TPE, median pruning) maximising
   validation accuracy with max_latency_ms = the baseline's latency at batch 32,
   measured just before in this process, for --budget-s seconds. The chosen model and the
   baseline are then compared on the test split (which neither training nor the search
   sees) and timed interleaved in one process at batch 1 and 32 (medians of --runs).
2. Fronts: a pareto search (validation accuracy vs latency at batch 32, no pruning) per
   algorithm, --front-budget-s seconds each; the fronts are drawn on one plot and
   summarised by their hypervolume (area they dominate up to twice the baseline's
   latency and down to accuracy 0).

    PYTHONPATH=. python bench/search.py [--budget-s 300] [--front-budget-s 150]

Writes bench/results/search.md and bench/results/search-fronts.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (1, 32)
ALGORITHMS = ("random", "evolution", "tpe", "nsga2")
COLOURS = {"random": "tab:gray", "evolution": "tab:green", "tpe": "tab:blue", "nsga2": "tab:orange"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=300.0, help="the constrained search")
    parser.add_argument("--front-budget-s", type=float, default=150.0, help="per algorithm")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--constrained-algorithm", default="tpe", choices=ALGORITHMS)
    parser.add_argument("--epochs", type=int, default=10, help="per trial, and the baseline's")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64, help="training batch")
    parser.add_argument("--latency-batch", type=int, default=32, help="the job's batch size")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per model and batch")
    parser.add_argument("--trial-runs", type=int, default=30, help="timed runs per trial")
    parser.add_argument(
        "--population", type=int, default=10, help="evolution's and NSGA-II's population"
    )
    parser.add_argument(
        "--space",
        type=json.loads,
        default={"blocks": {"low": 1, "high": 3}, "width": {"low": 4, "high": 64}},
        help="narrowing of the cnn family's space (JSON)",
    )
    parser.add_argument("--max-trial-s", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/squeeze-bench-search"))
    parser.add_argument("--out", type=Path, default=RESULTS / "search.md")
    parser.add_argument("--plot", type=Path, default=RESULTS / "search-fronts.png")
    return parser.parse_args(argv)


@dataclass
class Run:
    """One search: its details, and the chosen model measured on the test split."""

    name: str
    algorithm: str
    details: dict[str, Any]
    model_path: Path
    wall_s: float
    accuracy: float = 0.0
    latency_ms: dict[int, float] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # before numpy's, torch's and onnxruntime's thread pools exist
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    baseline_path = _baseline(args, work)
    x_test, y_test = _test_split()
    baseline_accuracy = _accuracy(baseline_path, x_test, y_test)
    budget_ms = _latencies([baseline_path], x_test, args.latency_batch, args.runs, args)[0]
    print(
        f"baseline: test accuracy {baseline_accuracy:.4f}, {budget_ms:.4f} ms at batch "
        f"{args.latency_batch}: the latency budget",
        file=sys.stderr,
    )

    constrained = _search(
        "constrained",
        args.constrained_algorithm,
        {"kind": "constrained", "max_latency_ms": round(budget_ms, 6)},
        args.budget_s,
        "median",
        baseline_path,
        args,
    )
    fronts = [
        _search("front", algorithm, {"kind": "pareto", "costs": ["latency_ms"]},
                args.front_budget_s, "none", baseline_path, args)
        for algorithm in args.algorithms.split(",")
    ]  # fmt: skip

    for run in [constrained, *fronts]:
        run.accuracy = _accuracy(run.model_path, x_test, y_test)
    baseline_latency: dict[int, float] = {}
    for batch in BATCHES:  # baseline and the constrained winner, interleaved
        pair = _latencies([baseline_path, constrained.model_path], x_test, batch, args.runs, args)
        baseline_latency[batch], constrained.latency_ms[batch] = pair
    for run in fronts:
        run.latency_ms = {
            batch: _latencies([run.model_path], x_test, batch, args.runs, args)[0]
            for batch in BATCHES
        }
    _plot(fronts, budget_ms, args)
    report = _report(
        args,
        baseline_path,
        baseline_accuracy,
        baseline_latency,
        budget_ms,
        constrained,
        fronts,
        time.perf_counter() - started,
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"written to {args.out} and {args.plot}", file=sys.stderr)
    return 0


def _baseline(args: argparse.Namespace, work: Path) -> Path:
    import torch

    from service.examples import DigitsCNN, digits_arrays, export_onnx, train_classifier

    x_train, y_train = digits_arrays("train")
    torch.manual_seed(args.seed)
    model = DigitsCNN()
    train_classifier(
        model,
        x_train,
        y_train,
        epochs=args.epochs,
        lr=args.learning_rate,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    return export_onnx(model, x_train[:1], work / "baseline.onnx")


def _test_split() -> tuple[np.ndarray, np.ndarray]:
    from service.examples import digits_arrays

    return digits_arrays("test")


def _search(
    name: str,
    algorithm: str,
    objective: dict[str, Any],
    budget_s: float,
    pruner: str,
    baseline_path: Path,
    args: argparse.Namespace,
) -> Run:
    from core.context import MeasureSettings, RunContext
    from core.formats import inspect_model
    from core.registry import StepData, get_step
    from core.spec import SearchStep, TaskSpec
    from service.examples import digits_arrays

    x_train, y_train = digits_arrays("train")
    x_test, y_test = digits_arrays("test")
    config = SearchStep.model_validate(
        {
            "method": "search",
            "family": "cnn",
            "space": args.space,
            "max_trial_s": args.max_trial_s,
            "objective": objective,
            "algorithm": algorithm,
            "pruner": pruner,
            "max_trials": 2_000,  # the time budget ends the search
            # the default (max_trials / 4) would leave a time-bounded search in warm-up
            "population_size": args.population,
            "time_budget_s": budget_s,
            "epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "batch_size": args.batch_size,
            "seed": args.seed,
        }
    )
    data = StepData(
        eval_arrays={"input": x_test, "label": y_test},
        calibration_arrays={"input": x_test},
        inputs=inspect_model(baseline_path).inputs,
        task=TaskSpec(),
        train_arrays={"input": x_train, "label": y_train},
        batch_size=args.latency_batch,
        original_model_path=baseline_path,
    )
    work = args.work_dir / f"{name}-{algorithm}"
    events: list[str] = []

    def progress(fraction: float, message: str, data: dict[str, Any]) -> None:
        if "trial" in data:
            events.append(message)
            print(f"[{name} {algorithm}] {message}", file=sys.stderr)

    ctx = RunContext(
        work_dir=work,
        seed=args.seed,
        measure=MeasureSettings(threads=args.threads, warmup_runs=5, runs=args.trial_runs),
        on_progress=progress,
    )
    started = time.perf_counter()
    output = get_step("search")(baseline_path, config, data, ctx)
    (work / "details.json").write_text(json.dumps(output.details, indent=1, default=str))
    return Run(name, algorithm, output.details, output.model_path, time.perf_counter() - started)


def _accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: images})
    return float(np.mean(np.asarray(logits).argmax(axis=1) == labels))


def _latencies(
    paths: list[Path], images: np.ndarray, batch: int, runs: int, args: argparse.Namespace
) -> list[float]:
    """Median latency of each model, timed interleaved in one process."""
    from core.context import MeasureSettings
    from core.data import take_rows
    from core.measure import compare_latency

    feeds = take_rows({"input": images}, batch)
    settings = MeasureSettings(threads=args.threads, warmup_runs=20, runs=runs)
    return [t.median_ms for t in compare_latency(paths, feeds, batch, settings, "cpu")]


def _front(run: Run) -> list[dict[str, Any]]:
    trials = {t["number"]: t for t in run.details["trials"]}
    members = [trials[n] for n in run.details["front"]]
    return sorted(members, key=lambda t: t["costs"]["latency_ms"])


def _outcomes(run: Run) -> str:
    """How the trials of a run ended, from their notes."""
    trials = run.details["trials"]
    notes = [t.get("note") or "" for t in trials]
    parts = [
        f"{sum(t['state'] == 'complete' for t in trials)} trained fully",
        f"{sum(n.startswith('pruned after') for n in notes)} stopped by the pruner",
        f"{sum(n.startswith('infeasible') for n in notes)} over the limit (measured, not trained)",
    ]
    timed_out = sum(n.startswith("stopped at its time limit") for n in notes)
    if timed_out:
        parts.append(f"{timed_out} stopped at the trial time limit")
    return ", ".join(parts)


def _hypervolume(points: list[tuple[float, float]], max_latency: float) -> float:
    """The share of [0, max_latency] x [0, 1] that (latency, accuracy) points dominate:
    sweeping latency upwards, the height is the best accuracy reached so far."""
    ordered = sorted(p for p in points if p[0] <= max_latency)
    area, best = 0.0, 0.0
    for index, (latency, accuracy) in enumerate(ordered):
        best = max(best, accuracy)
        right = ordered[index + 1][0] if index + 1 < len(ordered) else max_latency
        area += best * (right - latency)
    return area / max_latency


def _plot(fronts: list[Run], budget_ms: float, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(7.5, 4.8))
    for run in fronts:
        trials = [t for t in run.details["trials"] if t["state"] == "complete"]
        colour = COLOURS.get(run.algorithm, "black")
        axis.scatter(
            [t["costs"]["latency_ms"] for t in trials],
            [t["metric"] for t in trials],
            s=8,
            c=colour,
            alpha=0.25,
        )
        members = _front(run)
        axis.step(
            [t["costs"]["latency_ms"] for t in members],
            [t["metric"] for t in members],
            where="post",
            c=colour,
            marker="o",
            ms=4,
            label=f"{run.algorithm} ({len(trials)} completed trials)",
        )
    axis.axvline(budget_ms, c="tab:red", ls="--", lw=1, label="baseline's latency")
    axis.set_xlabel(f"latency at batch {args.latency_batch} (ms, measured during the search)")
    axis.set_ylabel("validation accuracy (held-out training rows)")
    axis.set_xscale("log")
    axis.set_ylim(bottom=max(0.0, min(0.8, axis.get_ylim()[0])))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title(f"digits: front per algorithm, {args.front_budget_s:.0f} s each", fontsize=10)
    figure.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=110)
    pyplot.close(figure)


def _architecture(architecture: dict[str, Any] | None) -> str:
    if not architecture:
        return "-"
    a = architecture
    if a.get("family") == "cnn":
        kind = "depthwise" if a["depthwise"] else "conv"
        channels = [max(1, round(a["width"] * a["growth"] ** b)) for b in range(a["blocks"])]
        return (
            f"cnn {a['blocks']}x{kind} {a['kernel_size']}x{a['kernel_size']} "
            f"channels {channels}, {a['pooling']} pool, bn {a['batch_norm']}, "
            f"dropout {a['dropout']:.2f}"
        )
    return ", ".join(f"{k} {v}" for k, v in a.items())


def _report(
    args: argparse.Namespace,
    baseline_path: Path,
    baseline_accuracy: float,
    baseline_latency: dict[int, float],
    budget_ms: float,
    constrained: Run,
    fronts: list[Run],
    wall_s: float,
) -> str:
    from core.measure import count_parameters
    from core.search.cost import onnx_macs

    def line(name: str, path: Path, accuracy: float, latency: dict[int, float]) -> str:
        macs = onnx_macs(path)
        return (
            f"| {name} | {accuracy:.4f} | {latency[1]:.4f} | {latency[32]:.4f} | "
            f"{count_parameters(path):,} | {macs:,} |"
            if macs is not None
            else f"| {name} | {accuracy:.4f} | {latency[1]:.4f} | {latency[32]:.4f} | - | - |"
        )

    budget = constrained.details["budget"]
    chosen = constrained.details["chosen"]
    beats = constrained.accuracy > baseline_accuracy and all(
        constrained.latency_ms[b] < baseline_latency[b] for b in BATCHES
    )
    command = "PYTHONPATH=. python bench/search.py " + " ".join(
        [
            f"--budget-s {args.budget_s:g}",
            f"--front-budget-s {args.front_budget_s:g}",
            f"--epochs {args.epochs}",
            f"--max-trial-s {args.max_trial_s:g}",
            f"--runs {args.runs}",
            f"--threads {args.threads}",
        ]
    )
    space = json.dumps(args.space).replace('"', "")
    lines = [
        "# Architecture search benchmark",
        "",
        f"`{command}`; {os.cpu_count()} cores shared with other work while it ran (latencies "
        "of trials measured during the search are noisier than the final comparison); "
        f"total {wall_s / 60:.1f} min.",
        "",
        "Digits (8x8, 1,347 training images, 450 test images). Trials train for "
        f"{args.epochs} epochs (Adam, learning rate {args.learning_rate:g}, batch "
        f"{args.batch_size}) on 80% of the training split and are scored on the other 20%; "
        "accuracy below is on the test split, which neither the search nor the baseline's "
        "training sees. Latency: ONNX Runtime, 1 thread, medians of "
        f"{args.runs} runs, the baseline and the found model timed interleaved in one process. "
        f"Space: the CNN family with {space} (other fields as declared: growth 1..2.5, "
        "kernel 3 or 5, depthwise or not, max/avg/no pooling, BatchNorm or not, dropout "
        f"0..0.5); a trial still training after {args.max_trial_s:g} s is stopped.",
        "",
        "## Best model under a latency budget",
        "",
        f"Constrained search ({constrained.algorithm}, median pruning, {args.budget_s:g} s): "
        f"maximise validation accuracy with latency at batch {args.latency_batch} at most "
        f"{budget_ms:.4f} ms, the baseline's latency measured just before. "
        f"{budget['finished_trials']} trials finished in {budget['spent_s']:.0f} s: "
        f"{_outcomes(constrained)}; stopped by the {budget['stopped_by'].replace('_', ' ')}.",
        "",
        "| model | test accuracy | latency b1 (ms) | latency b32 (ms) | parameters | MACs |",
        "|---|---|---|---|---|---|",
        line(
            "DigitsCNN (hand-designed baseline)", baseline_path, baseline_accuracy, baseline_latency
        ),
        line(
            f"searched: trial {chosen['trial']}",
            constrained.model_path,
            constrained.accuracy,
            constrained.latency_ms,
        ),
        "",
        f"Searched architecture: {_architecture(chosen['architecture'])}.",
        "",
        (
            "**Target met**: the searched model beats the baseline on test accuracy and on "
            "latency at batch 1 and 32."
            if beats
            else "**Target not met** on this run: see the table for which of accuracy and "
            "latency the searched model does not beat."
        ),
        "",
        "## Front per algorithm",
        "",
        f"Pareto search (validation accuracy vs latency at batch {args.latency_batch}, no "
        f"pruning), {args.front_budget_s:g} s per algorithm (shorter than the constrained "
        "search's budget to keep the whole benchmark under half an hour on 2 shared cores). "
        "Hypervolume: the share of [0, 2 x baseline latency] x [0, 1] the front dominates "
        "(higher is better). Best under budget: the front's highest validation accuracy "
        "within the baseline's latency. Chosen model (the front's highest validation "
        "accuracy): test accuracy and latency measured after the search.",
        "",
        "| algorithm | trials finished (completed) | front size | hypervolume | "
        "best val. accuracy under budget | chosen: test accuracy | chosen: b1 / b32 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in fronts:
        members = _front(run)
        points = [(t["costs"]["latency_ms"], t["metric"]) for t in members]
        under = [t["metric"] for t in members if t["costs"]["latency_ms"] <= budget_ms]
        completed = sum(1 for t in run.details["trials"] if t["state"] == "complete")
        lines.append(
            f"| {run.algorithm} | {run.details['budget']['finished_trials']} ({completed}) | "
            f"{len(members)} | "
            f"{_hypervolume(points, 2 * budget_ms):.4f} | "
            f"{(f'{max(under):.4f}' if under else '-')} | {run.accuracy:.4f} | "
            f"{run.latency_ms[1]:.4f} / {run.latency_ms[32]:.4f} |"
        )
    lines += [
        "",
        f"![fronts]({args.plot.name})",
        "",
        "Notes: one seed per algorithm, so the ordering of the algorithms is not tested for "
        "significance. A trial that trains past --max-trial-s is stopped and counted as "
        "pruned (finished, not completed). The first trials of every algorithm are the same "
        "random draws (same seed; TPE's startup trials, NSGA-II's first generation and "
        "evolution's warm-up are random). Random draws the CNN family's "
        "declared ranges uniformly (log-uniformly for widths); evolution is regularized "
        f"evolution (population {args.population}, tournament a quarter of it); TPE is "
        f"multivariate with the constant liar; NSGA-II is Optuna's (generations of "
        f"{args.population}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
