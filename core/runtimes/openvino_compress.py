"""OpenVINO candidates of one ONNX model: FP32 and bf16 IR, NNCF INT8 (plain, with
NNCF's accuracy control, and with our own sensitivity fallback), NNCF weight compression.

Each function returns a `Candidate`: the IR's files (a `PreparedModel` the OpenVINO
adapter opens) and what was done (`details`). Nothing here measures latency or decides
which candidate wins; the task metric is injected (`Validate`: a function of a runner
and validation samples), so the decision rules are tested with controlled values and
the tuner applies its own judging on held-out rows.

Calibration data is an iterable of feed dicts (one model run each, e.g. one batch).
Validation samples are `(feeds, target)` pairs whose target is whatever the injected
metric needs (labels, the original's outputs); NNCF hands them back to the metric as
given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from core.errors import RuntimeUnavailable, RuntimeUnsupportedModel, StepFailed, short_reason
from core.runtimes.base import Feeds, PreparedModel, Runner
from core.runtimes.openvino_runtime import (
    OpenVinoRunner,
    _openvino,
    _reason,
    compile_config,
    save_ir,
)
from core.runtimes.settings import RunSettings

log = logging.getLogger(__name__)

Sample = tuple[Feeds, Any]
# The task metric of a model (higher is better), computed by running `runner` on samples.
Validate = Callable[[Runner, Sequence[Sample]], float]
# Makes the INT8 IR that keeps the named ops in float (the fallback's quantizer).
QuantizeFn = Callable[[Sequence[str]], PreparedModel]
# Op names of the quantized model, most sensitive first (the fallback's ranking).
RankFn = Callable[[PreparedModel, PreparedModel], list[str]]
DropType = Literal["absolute", "relative"]

# OpenVINO op types whose inputs NNCF quantizes and an ignored scope can keep in float.
QUANTIZABLE_OV_OPS = frozenset(
    {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}
)
_TINY = 1e-20
_VALIDATION_SETTINGS = RunSettings(threads=1, runtime_defaults=False)


@dataclass(frozen=True)
class Candidate:
    name: str
    prepared: PreparedModel
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> tuple[Path, ...]:
        return self.prepared.files


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise RuntimeUnavailable("NNCF is not installed here (pip install nncf)") from exc
    return nncf


def convert(onnx_path: Path) -> Any:
    """`ov.convert_model` on the ONNX file; RuntimeUnsupportedModel with OpenVINO's reason."""
    ov = _openvino()
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise RuntimeUnsupportedModel(
            f"OpenVINO cannot convert {onnx_path.name}: {_reason(exc)}"
        ) from exc


# --- float IR ------------------------------------------------------------------------------


def fp32_ir(onnx_path: Path, out_dir: Path) -> Candidate:
    """The model as OpenVINO IR, weights and compute in FP32."""
    prepared = save_ir(convert(onnx_path), out_dir, details={"converted": True, "precision": "f32"})
    return Candidate("openvino-fp32", prepared, {"precision": "f32", "weights": "fp32"})


def bf16_ir(onnx_path: Path, out_dir: Path) -> Candidate:
    """FP32 weights, bf16 compute (the CPU plugin's default where the CPU has bf16):
    a candidate like any other, judged by its measured metric. RuntimeUnavailable on a
    CPU without bf16."""
    ov = _openvino()
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        raise RuntimeUnavailable(f"this CPU has no bf16 support ({capabilities})")
    prepared = save_ir(
        convert(onnx_path),
        out_dir,
        details={"converted": True, "precision": "bf16"},
        open_config={"INFERENCE_PRECISION_HINT": "bf16"},
    )
    return Candidate("openvino-bf16", prepared, {"precision": "bf16", "weights": "fp32"})


# --- NNCF INT8 ----------------------------------------------------------------------------


def _calibration_dataset(calibration: Iterable[Feeds]) -> Any:
    items = [dict(feeds) for feeds in calibration]
    if not items:
        raise StepFailed("NNCF needs calibration data: no calibration batches were given")
    return _nncf().Dataset(items)


def nncf_int8(
    onnx_path: Path,
    calibration: Iterable[Feeds],
    out_dir: Path,
    *,
    ignored: Sequence[str] = (),
    subset_size: int = 300,
    model_type: Literal["transformer"] | None = None,
) -> Candidate:
    """`nncf.quantize` with its defaults (what a user runs by hand), optionally keeping
    the `ignored` ops (OpenVINO op names) in float."""
    nncf = _nncf()
    model = convert(onnx_path)
    kwargs: dict[str, Any] = {"subset_size": subset_size}
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored), validate=False)
    if model_type == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    try:
        quantized = nncf.quantize(model, _calibration_dataset(calibration), **kwargs)
    except StepFailed:
        raise
    except Exception as exc:
        raise RuntimeUnsupportedModel(f"nncf.quantize failed: {short_reason(exc)}") from exc
    details = {
        "method": "nncf.quantize",
        "subset_size": subset_size,
        "ignored": list(ignored),
        "model_type": model_type,
        "quantized_ops": count_quantized_ops(quantized),
    }
    return Candidate(
        "nncf-int8" if not ignored else "nncf-int8-ignored-scope",
        save_ir(quantized, out_dir, details=details, open_config={}),
        details,
    )


def nncf_int8_accuracy_control(
    onnx_path: Path,
    calibration: Iterable[Feeds],
    samples: Sequence[Sample],
    validate: Validate,
    out_dir: Path,
    *,
    max_drop: float,
    drop_type: DropType = "absolute",
    subset_size: int = 300,
    max_num_iterations: int | None = None,
) -> Candidate:
    """`nncf.quantize_with_accuracy_control`: NNCF quantizes, then returns quantized ops
    to float, most sensitive first, until `validate` drops by at most `max_drop`.

    NNCF may stop without meeting the drop (its iteration limit): `details["met"]` says
    whether the returned model's measured drop is within `max_drop`.
    """
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    if not samples:
        raise StepFailed("accuracy control needs validation samples")
    model = convert(onnx_path)

    def validation_fn(compiled: Any, data: Iterable[Any]) -> float:
        return float(validate(OpenVinoRunner(compiled), list(data)))

    restorer = AdvancedAccuracyRestorerParameters()
    if max_num_iterations is not None:
        restorer.max_num_iterations = max_num_iterations
    try:
        quantized = nncf.quantize_with_accuracy_control(
            model,
            _calibration_dataset(calibration),
            nncf.Dataset(list(samples)),
            validation_fn,
            max_drop=max_drop,
            drop_type=(
                nncf.DropType.ABSOLUTE if drop_type == "absolute" else nncf.DropType.RELATIVE
            ),
            subset_size=subset_size,
            advanced_accuracy_restorer_parameters=restorer,
        )
    except StepFailed:
        raise
    except Exception as exc:
        raise RuntimeUnsupportedModel(
            f"nncf.quantize_with_accuracy_control failed: {short_reason(exc)}"
        ) from exc
    prepared = save_ir(quantized, out_dir, details={}, open_config={})
    fp32 = save_ir(model, out_dir / "reference", details={})
    reference = validate(_open(fp32), samples)
    metric = validate(_open(prepared), samples)
    drop = metric_drop(reference, metric, drop_type)
    details = {
        "method": "nncf.quantize_with_accuracy_control",
        "max_drop": max_drop,
        "drop_type": drop_type,
        "reference_metric": reference,
        "metric": metric,
        "metric_drop": drop,
        "met": drop <= max_drop,
        "quantized_ops": count_quantized_ops(quantized),
    }
    return Candidate("nncf-int8-accuracy-control", prepared, details)


# --- our own fallback: ignored scope grown by sensitivity ----------------------------------


def quantize_with_fallback(
    samples: Sequence[Sample],
    validate: Validate,
    *,
    quantize: QuantizeFn,
    rank: RankFn,
    reference: PreparedModel,
    max_drop: float,
    drop_type: DropType = "absolute",
    reference_metric: float | None = None,
    max_ignored: int | None = None,
    open_runner: Callable[[PreparedModel], Runner] | None = None,
) -> Candidate:
    """INT8 that keeps the most sensitive ops in float until the metric limit holds.

    Quantizes everything first; if `validate` drops by more than `max_drop` against the
    FP32 `reference`, ranks the quantized ops (`rank`) and keeps the first k in float for
    k = 1, 2, 4, ... (each a new `quantize(names)`), then bisects between the last k
    that failed and the first that held, so the model keeps as many INT8 ops as the
    limit allows. `details["met"]` is False when even `max_ignored` (default: all ranked
    ops) did not hold; the candidate is then the try with the smallest drop. Every try
    is a row of `details["tries"]`.
    """
    opener = open_runner or _open
    base_metric = (
        validate(opener(reference), samples) if reference_metric is None else reference_metric
    )
    tries: list[dict[str, Any]] = []
    results: dict[int, tuple[PreparedModel, float]] = {}

    def attempt(names: Sequence[str]) -> bool:
        prepared = quantize(names)
        metric = validate(opener(prepared), samples)
        drop = metric_drop(base_metric, metric, drop_type)
        results[len(names)] = (prepared, drop)
        tries.append({"ignored": len(names), "metric": metric, "metric_drop": drop})
        return drop <= max_drop

    ranking: list[str] = []
    chosen: int | None = 0 if attempt([]) else None
    if chosen is None:
        ranking = rank(reference, results[0][0])
        limit = len(ranking) if max_ignored is None else min(max_ignored, len(ranking))
        failed, k = 0, 1
        while k <= limit and chosen is None:
            if attempt(ranking[:k]):
                chosen = k
            else:
                failed = k
                k = limit if k < limit and k * 2 > limit else k * 2
                if failed == limit:
                    break
        if chosen is not None:
            low, high = failed, chosen  # low fails, high holds
            while high - low > 1:
                middle = (low + high) // 2
                if attempt(ranking[:middle]):
                    high = middle
                else:
                    low = middle
            chosen = high
    met = chosen is not None
    if chosen is None:
        chosen = min(results, key=lambda count: (results[count][1], count))
    prepared, drop = results[chosen]
    details = {
        "method": "nncf.quantize + ignored scope by sensitivity",
        "max_drop": max_drop,
        "drop_type": drop_type,
        "reference_metric": base_metric,
        "metric_drop": drop,
        "met": met,
        "ignored": ranking[:chosen],
        "ranked_ops": len(ranking),
        "tries": tries,
    }
    return Candidate("nncf-int8-fallback", prepared, details)


def nncf_int8_with_fallback(
    onnx_path: Path,
    calibration: Iterable[Feeds],
    samples: Sequence[Sample],
    validate: Validate,
    out_dir: Path,
    *,
    max_drop: float,
    drop_type: DropType = "absolute",
    subset_size: int = 300,
    max_ignored: int | None = None,
    rank_samples: int = 4,
    reference_metric: float | None = None,
) -> Candidate:
    """`quantize_with_fallback` with NNCF as the quantizer and `rank_by_added_error` (on
    the first `rank_samples` calibration batches) as the ranking; drops are measured from
    `reference_metric` (default: the FP32 IR's own metric)."""
    batches = [dict(feeds) for feeds in calibration]
    reference = fp32_ir(onnx_path, out_dir / "fp32").prepared
    counter = iter(range(1_000_000))

    def quantize(names: Sequence[str]) -> PreparedModel:
        folder = out_dir / f"try-{next(counter)}"
        return nncf_int8(
            onnx_path, batches, folder, ignored=names, subset_size=subset_size
        ).prepared

    def rank(fp32: PreparedModel, quantized: PreparedModel) -> list[str]:
        return [name for name, _ in rank_by_added_error(fp32, quantized, batches[:rank_samples])]

    return quantize_with_fallback(
        samples,
        validate,
        quantize=quantize,
        rank=rank,
        reference=reference,
        max_drop=max_drop,
        drop_type=drop_type,
        max_ignored=max_ignored,
        reference_metric=reference_metric,
    )


def rank_by_added_error(
    fp32: PreparedModel, quantized: PreparedModel, batches: Sequence[Feeds]
) -> list[tuple[str, float]]:
    """Quantized ops (Convolution, MatMul ...) by the error they add, worst first.

    Both IRs run with each quantized op's output and its data input's producer exposed;
    an op's score is the relative L2 error of its output against FP32 minus that of the
    float input it received, so the op that broke the signal is blamed, not every op
    downstream of it. Ops are matched by OpenVINO op name (NNCF keeps them).
    """
    ov = _openvino()
    core = ov.Core()
    float_model = core.read_model(str(fp32.entry))
    int8_model = core.read_model(str(quantized.entry))
    float_ops = {op.get_friendly_name(): op for op in float_model.get_ops()}
    probes: list[tuple[str, str | None]] = []
    for op in int8_model.get_ops():
        if op.get_type_name() not in QUANTIZABLE_OV_OPS or not _is_quantized(op):
            continue
        name = op.get_friendly_name()
        if name not in float_ops:
            continue
        producer = _float_producer(op)
        probes.append((name, producer if producer in float_ops else None))
    if not probes:
        return []
    wanted = sorted({name for name, _ in probes} | {p for _, p in probes if p is not None})
    outputs = {}
    for label, model, ops in (
        ("float", float_model, float_ops),
        ("int8", int8_model, {op.get_friendly_name(): op for op in int8_model.get_ops()}),
    ):
        model.add_outputs([ops[name].output(0) for name in wanted])
        compiled = core.compile_model(model, "CPU", compile_config(fp32, _VALIDATION_SETTINGS))
        ports = {
            name: compiled.outputs[len(compiled.outputs) - len(wanted) + i]
            for i, name in enumerate(wanted)
        }
        request = compiled.create_infer_request()
        collected: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        for batch in batches:
            result = request.infer(dict(batch), share_outputs=False)
            for name in wanted:
                collected[name].append(np.asarray(result[ports[name]], dtype=np.float64))
        outputs[label] = collected

    def error(name: str) -> float:
        total = 0.0
        for got, want in zip(outputs["int8"][name], outputs["float"][name], strict=True):
            total += float(np.linalg.norm(got - want) / (np.linalg.norm(want) + _TINY))
        return total / max(len(batches), 1)

    scores = [
        (name, error(name) - (error(producer) if producer is not None else 0.0))
        for name, producer in probes
    ]
    return sorted(scores, key=lambda item: (-item[1], item[0]))


def _is_quantized(op: Any) -> bool:
    """An input comes through NNCF's FakeQuantize, or its weights are stored as integers
    (Constant i8/u8/i4/u4 -> Convert -> [Subtract] -> Multiply)."""
    return any(_integer_path(value.get_node(), depth=4) for value in op.input_values())


def _integer_path(node: Any, depth: int) -> bool:
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return str(node.get_element_type().get_type_name()) in _INTEGER_WEIGHT_TYPES
    if depth == 0 or kind not in ("Convert", "Subtract", "Multiply", "Reshape"):
        return False
    return any(_integer_path(value.get_node(), depth - 1) for value in node.input_values())


_INTEGER_WEIGHT_TYPES = frozenset({"i8", "u8", "i4", "u4"})


def _float_producer(op: Any) -> str | None:
    """The op that computed the data input (input 0), skipping NNCF's FakeQuantize."""
    node = op.input_value(0).get_node()
    while node.get_type_name() == "FakeQuantize":
        node = node.input_value(0).get_node()
    if node.get_type_name() in ("Parameter", "Constant"):
        return None
    return str(node.get_friendly_name())


def count_quantized_ops(model: Any) -> int:
    return sum(
        1
        for op in model.get_ops()
        if op.get_type_name() in QUANTIZABLE_OV_OPS and _is_quantized(op)
    )


# --- weight compression ----------------------------------------------------------------------


def compress_weights(
    onnx_path: Path,
    out_dir: Path,
    *,
    mode: Literal["int8", "int4"] = "int8",
    group_size: int = 128,
    ratio: float = 1.0,
) -> Candidate:
    """`nncf.compress_weights` (data-free): MatMul/embedding weights to INT8 (asymmetric,
    per channel) or INT4 (symmetric, groups of `group_size`; NNCF keeps the first and
    last layers INT8). Activations stay float: pays on MatMul-heavy models, where weight
    bytes bound the speed. An INT4 group size that does not divide a layer's input falls
    back to per-channel (`group_size=-1`), said in the details."""
    nncf = _nncf()
    model = convert(onnx_path)
    details: dict[str, Any] = {"method": "nncf.compress_weights", "mode": mode}
    try:
        if mode == "int8":
            compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        else:
            try:
                compressed = nncf.compress_weights(
                    model,
                    mode=nncf.CompressWeightsMode.INT4_SYM,
                    group_size=group_size,
                    ratio=ratio,
                )
                details.update(group_size=group_size, ratio=ratio)
            except Exception as exc:
                log.info("INT4 with group %s failed (%s); per-channel", group_size, exc)
                compressed = nncf.compress_weights(
                    convert(onnx_path),
                    mode=nncf.CompressWeightsMode.INT4_SYM,
                    group_size=-1,
                    ratio=ratio,
                )
                details.update(group_size=-1, ratio=ratio, group_fallback=short_reason(exc))
    except Exception as exc:
        raise RuntimeUnsupportedModel(f"nncf.compress_weights failed: {short_reason(exc)}") from exc
    return Candidate(f"nncf-weights-{mode}", save_ir(compressed, out_dir, details=details), details)


def matmul_weight_share(onnx_path: Path) -> float:
    """The share of the model's weight elements that feed MatMul/Gemm (vs Conv and the
    rest): above about a half, weight compression is worth a candidate."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    sizes = {init.name: math.prod(init.dims) for init in model.graph.initializer}
    total = sum(sizes.values())
    if total == 0:
        return 0.0
    matmul = sum(
        sizes.get(name, 0)
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm")
        for name in node.input
    )
    return matmul / total


# --- helpers ---------------------------------------------------------------------------------


def metric_drop(reference: float, metric: float, drop_type: DropType = "absolute") -> float:
    """How much the metric fell (negative when it rose); relative to |reference|."""
    drop = reference - metric
    if drop_type == "relative":
        return drop / max(abs(reference), _TINY)
    return drop


def _open(prepared: PreparedModel) -> Runner:
    from core.runtimes.openvino_runtime import OpenVinoRuntime

    return OpenVinoRuntime().open(prepared, _VALIDATION_SETTINGS)


def samples_from_arrays(
    feeds: Mapping[str, np.ndarray], targets: np.ndarray | None, batch_size: int
) -> list[Sample]:
    """Validation samples of `batch_size` rows each: (feeds, the rows' targets)."""
    rows = next(iter(feeds.values())).shape[0]
    return [
        (
            {name: array[start : start + batch_size] for name, array in feeds.items()},
            None if targets is None else targets[start : start + batch_size],
        )
        for start in range(0, rows, batch_size)
    ]
