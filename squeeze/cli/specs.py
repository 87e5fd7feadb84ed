"""Job specs for the CLI: from a YAML/JSON file, or from the flags of the common cases."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import yaml

from squeeze.client.errors import SqueezeError

# flag -> spec field naming a dataset
DATASET_FLAGS = {
    "eval": "eval_dataset_id",
    "calib": "calibration_dataset_id",
    "train": "train_dataset_id",
}


class SpecError(ValueError):
    """A spec file or flag the CLI cannot use (exit code 2)."""


def load_spec(path: Path) -> dict[str, Any]:
    """A job spec from a YAML or JSON file (JSON is YAML)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"cannot read {path}: {error.strerror}") from error
    try:
        spec = yaml.safe_load(text) if path.suffix.lower() != ".json" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise SpecError(f"{path} is not valid YAML/JSON: {error}") from error
    if not isinstance(spec, dict):
        raise SpecError(f"{path} must hold a mapping (a job spec), not {type(spec).__name__}")
    return spec


def parse_drop(text: str) -> float:
    """`1%` -> 0.01 (one accuracy point), `0.01` -> 0.01; `1` (100 points, any result) is
    refused as the typo for one point it always is."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number or percentage: {text!r}; one accuracy point is 1% or 0.01"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a metric drop cannot be negative: {text!r}")
    if value >= 1:
        raise argparse.ArgumentTypeError(
            f"{text} would allow a drop of {value * 100:g} points, i.e. any result; write one "
            "point as 1% or 0.01 (to accept any drop, leave --max-drop out and pass "
            "--no-metric-guard)"
        )
    return value


def parse_goal(text: str) -> dict[str, Any]:
    """`2x` (twice as fast), `fastest`, `5ms` (a latency), `5MB` (a size)."""
    lowered = text.strip().lower()
    if lowered == "fastest":
        return {"fastest": True}
    if lowered.endswith("x"):
        try:
            speedup = float(lowered[:-1])
        except ValueError:
            speedup = 0.0
        if speedup <= 1:
            raise argparse.ArgumentTypeError(
                f"a speed-up goal is a factor above 1, like 2x: {text!r}"
            )
        return {"speedup": speedup}
    if lowered.endswith("ms"):
        try:
            return {"max_latency_ms": float(lowered[:-2])}
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a latency: {text!r}") from None
    try:
        return {"max_size_bytes": parse_size(text)}
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"a goal is a speed-up (2x), fastest, a latency (5ms) or a size (5MB): {text!r}"
        ) from None


RUNTIMES = ("onnxruntime", "openvino")


def parse_target(text: str) -> dict[str, str]:
    """`openvino` -> {"runtime": "openvino"}; `onnxruntime:cuda` with its device."""
    runtime, _, device = text.partition(":")
    if runtime not in RUNTIMES:
        raise argparse.ArgumentTypeError(
            f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)} (e.g. openvino, "
            "onnxruntime:cuda)"
        )
    if device and device not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unknown device {device!r}: cpu or cuda")
    return {"runtime": runtime, **({"device": device} if device else {})}


def parse_batch_sizes(text: str) -> list[int]:
    """`1,32` -> [1, 32]: the batch sizes the model is served at."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"batch sizes as a comma-separated list of whole numbers, e.g. 1,32: {text!r}"
        ) from None
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be 1 or more: {text!r}")
    return list(dict.fromkeys(sizes))


def parse_image_size(text: str) -> tuple[int, int]:
    """`224` -> (224, 224); `32x64` -> height 32, width 64."""
    height, _, width = text.lower().partition("x")
    try:
        size = (int(height), int(width or height))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"an image size is 224 or HEIGHTxWIDTH like 32x64: {text!r}"
        ) from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"an image size above 0: {text!r}")
    return size


def parse_floats(text: str) -> list[float]:
    """`0.485,0.456,0.406` -> three numbers (one per channel), `0.5` -> one for all."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"numbers separated by commas, e.g. 0.485,0.456,0.406: {text!r}"
        ) from None


def parse_size(text: str) -> int:
    """`5MB`, `800KB`, `1.5GB` (powers of 1000) or a number of bytes."""
    units = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    lowered = text.strip().lower()
    for unit, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if lowered.endswith(unit):
            number, scale = lowered[: -len(unit)], factor
            break
    else:
        number, scale = lowered.removesuffix("b"), 1
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"a size above 0: {text!r}")
    return size


def targets_from(args: argparse.Namespace) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    if args.max_drop is not None:
        targets["max_metric_drop"] = args.max_drop
        if args.relative_drop:
            targets["metric_drop_mode"] = "relative"
    if args.max_latency_ms is not None:
        targets["max_latency_ms"] = args.max_latency_ms
    if args.max_size is not None:
        targets["max_size_bytes"] = args.max_size
    if args.allow_slower:
        targets["allow_slower"] = True
    if args.no_metric_guard:
        if args.max_drop is not None:
            raise SpecError("--no-metric-guard and --max-drop contradict each other: pick one")
        targets["metric_guard"] = False
    return targets


def common_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Task, targets, device, batch size and seed from the flags (only those given)."""
    spec: dict[str, Any] = {}
    task: dict[str, Any] = {}
    if args.task is not None:
        task["kind"] = args.task
    if args.labels is not None:
        task["labels"] = args.labels
    if args.metric is not None:
        task["metric"] = args.metric
    if task:
        spec["task"] = task
    targets = targets_from(args)
    if targets:
        spec["targets"] = targets
    for name in ("device", "batch_size", "batch_sizes", "seed"):
        value = getattr(args, name)
        if value is not None:
            spec[name] = value
    if args.target:
        spec["deployment"] = list(args.target)
    return spec


def quantize_step(args: argparse.Namespace) -> dict[str, Any]:
    step: dict[str, Any] = {"method": "quantize", "mode": args.mode}
    if args.epochs is not None:
        if args.mode != "qat":
            raise SpecError("--epochs applies to --mode qat only")
        step["epochs"] = args.epochs
    return step


def prune_step(args: argparse.Namespace) -> dict[str, Any]:
    step: dict[str, Any] = {"method": "prune", "kind": args.kind}
    if args.kind == "n_m":
        if args.sparsity is not None:
            raise SpecError("--sparsity does not apply to --kind n_m (2:4)")
    elif args.sparsity is not None:
        step["sparsity"] = args.sparsity
    if args.epochs is not None:
        step["fine_tune"] = {"epochs": args.epochs}
    return step


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `base`, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# spec field (as the service's errors name it) -> the flag that sets it
COMMON_FLAG_FIELDS = {
    "eval_dataset_id": ("eval", "--eval"),
    "calibration_dataset_id": ("calib", "--calib"),
    "train_dataset_id": ("train", "--train"),
    "task.kind": ("task", "--task"),
    "task.labels": ("labels", "--labels"),
    "task.metric": ("metric", "--metric"),
    "targets.max_metric_drop": ("max_drop", "--max-drop"),
    "targets.metric_drop_mode": ("relative_drop", "--relative-drop"),
    "targets.max_latency_ms": ("max_latency_ms", "--max-latency-ms"),
    "targets.max_size_bytes": ("max_size", "--max-size"),
    "targets.metric_guard": ("no_metric_guard", "--no-metric-guard"),
    "targets.allow_slower": ("allow_slower", "--allow-slower"),
    "device": ("device", "--device"),
    "batch_size": ("batch_size", "--batch-size"),
    "batch_sizes": ("batch_sizes", "--batch-sizes"),
    "seed": ("seed", "--seed"),
    "deployment": ("target", "--target"),
    "webhook_url": ("webhook_url", "--webhook-url"),
}
# the fields of the one step quantize, prune and compress write
STEP_FLAG_FIELDS = {
    "model_id": "MODEL",
    "steps[0].mode": "--mode",
    "steps[0].kind": "--kind",
    "steps[0].sparsity": "--sparsity",
    "steps[0].epochs": "--epochs",
    "steps[0].fine_tune.epochs": "--epochs",
    "fine_tune.epochs": "--epochs",
    "steps[0].goal": "--goal",
    "goal": "--goal",
    "steps[0].time_budget_s": "--time-budget",
}


def flag_fields(
    args: argparse.Namespace, from_spec: dict[str, Any] | None = None
) -> dict[str, str]:
    """Spec path -> flag for the fields the flags wrote: every field of a spec built
    from flags alone; with a spec file, only those of the flags given."""
    given = {
        path: flag
        for path, (name, flag) in COMMON_FLAG_FIELDS.items()
        if from_spec is None or getattr(args, name, None) not in (None, False, [])
    }
    if from_spec is None:
        given.update(STEP_FLAG_FIELDS)
    elif getattr(args, "model", None) is not None:
        given["model_id"] = "--model"
    return given


def in_flag_words(
    error: SqueezeError, flags: dict[str, str], files: dict[str, str] | None = None
) -> SqueezeError:
    """The service's refusal of a submission with the spec fields the CLI wrote for flags
    named by those flags (`targets.max_metric_drop` -> `--max-drop`), and the ids of the
    files it uploaded shown with the file's name (`files`: id -> name)."""
    if not 400 <= error.status < 500 or error.code == "unauthenticated":
        return error
    names = files or {}

    def words(text: str) -> str:
        text = _flag_words(text, flags)
        for item_id, name in names.items():
            text = text.replace(f"'{item_id}'", f"{name} ({item_id})")
        return text

    problem = dict(error.problem)
    if isinstance(problem.get("errors"), list):
        problem["errors"] = [
            {**item, "msg": words(str(item.get("msg", "")))}
            if isinstance(item, dict)
            else item
            for item in problem["errors"]
        ]
    return SqueezeError(
        error.status,
        error.code,
        words(str(error.detail)),
        problem=problem,
        retry_after_s=error.retry_after_s,
    )


def _flag_words(detail: str, flags: dict[str, str]) -> str:
    if "steps[0].fine_tune.epochs" in flags or "fine_tune.epochs" in flags:
        detail = detail.replace("fine_tune.epochs = 0", "--epochs 0")
    if "steps[0].mode" in flags:  # one step, written by the command: no index to show
        detail = re.sub(r"(^|; )`?steps\[0\]`?: ", r"\1", detail)
    for path in sorted(flags, key=len, reverse=True):
        flag = flags[path]
        detail = re.sub(rf"(?<![\w.\[]){re.escape(path)}(?![\w\[])", flag, detail)
    return detail
