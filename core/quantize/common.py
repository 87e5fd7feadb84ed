"""Pieces every quantization mode shares: refusing double quantization, validating the
output, calibration streaming, the Gemm->MatMul rewrite, pre-processing, error wrapping.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from core.data import take_rows
from core.errors import EngineError, StepFailed, UnsupportedModel, short_reason
from core.formats import (
    TensorInfo,
    iter_nodes,
    load_model,
)
from core.measure import eval_batch_size, providers_for, session_inputs
from core.registry import StepData
from core.spec import TaskSpec

# DequantizeLinear gained the `axis` attribute per-channel weights need in opset 13;
# below it the QDQ model is invalid ("Unrecognized attribute: axis").
PER_CHANNEL_MIN_OPSET = 13
# QuantizeLinear/DequantizeLinear exist from opset 10; the quantizer wants 11 or newer.
QDQ_MIN_OPSET = 11
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "QAttention",
        "QGemm",
    }
)
_UNSUPPORTED_HINTS = (
    "NOT_IMPLEMENTED",
    "not supported",
    "Unrecognized attribute",
    "Could not find an implementation",
    "is not implemented",
)

CancelCheck = Callable[[], None]


def refuse_requantization(model: onnx.ModelProto, mode: str) -> None:
    """Raise UnsupportedModel (code "already_quantized") for a model that a previous
    quantize step (or the user) already quantized or converted to FP16.

    The quantizers assume float32 weights and activations; on an INT8 or FP16 graph they
    fail obscurely (a KeyError on a scale name) or write graphs that do not load.
    """
    quantized = count_quantized_nodes(model)
    if quantized:
        raise UnsupportedModel(
            f"{mode} quantization needs a float32 model, but this one is already quantized "
            f"({', '.join(sorted(quantized))}); use a single quantize step",
            code="already_quantized",
        )
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        raise UnsupportedModel(
            f"{mode} quantization needs a float32 model, but this one has float16 weights; "
            "use a single quantize step on the float32 model",
            code="already_quantized",
        )


def validate_runs(path: Path, data: StepData, device: str, *, what: str) -> None:
    """Raise StepFailed unless the model passes the ONNX checker (people download and
    re-upload it), loads in ONNX Runtime and runs one eval batch with finite outputs."""
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise StepFailed(f"{what} fails the ONNX checker: {short_reason(exc)}") from exc
    try:
        session = ort.InferenceSession(str(path), providers=providers_for(device))
        batch_size = eval_batch_size(session_inputs(session))
        batch = take_rows(data.eval_feeds(rows=batch_size), batch_size)
        outputs = session.run(None, batch)
    except EngineError:
        raise
    except Exception as exc:
        raise StepFailed(f"{what} does not run in ONNX Runtime: {short_reason(exc)}") from exc
    for meta, value in zip(session.get_outputs(), outputs, strict=True):
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise StepFailed(f"{what} produced non-finite values in output {meta.name!r}")


class StreamingCalibrationReader(CalibrationDataReader):
    """Feeds calibration batches one at a time, cast per batch, never all at once.

    Calibration can exhaust memory on large models and datasets (onnxruntime issues
    #10503, #11020); yielding batches lazily keeps only one in memory.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        inputs: list[TensorInfo],
        task: TaskSpec,
        rows: np.ndarray,
        batch_size: int,
        check_cancelled: CancelCheck,
    ) -> None:
        self._arrays = arrays
        self._inputs = inputs
        self._task = task
        self._rows = rows
        self._batch_size = batch_size
        self._check_cancelled = check_cancelled
        self._batches = self._iterate()
        self.samples_served = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self._check_cancelled()  # calibration can run long; a cancel must stop it
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()
        self.samples_served = 0

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self._rows), self._batch_size):
            rows = self._rows[start : start + self._batch_size]
            if len(rows) < self._batch_size:
                # pad a short last batch: a model with a pinned batch dim rejects it
                rows = rows[np.arange(self._batch_size) % len(rows)]
            self.samples_served += min(self._batch_size, len(self._rows) - start)
            yield {
                tensor.name: np.ascontiguousarray(
                    self._arrays[self._task.inputs.get(tensor.name, tensor.name)][rows],
                    dtype=np.dtype(tensor.dtype),
                )
                for tensor in self._inputs
            }


def gemm_to_matmul(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite Gemm nodes with constant weights as MatMul (+ Add), returning the count.

    Only the main graph's Gemms with transA=0 and an initializer B are rewritten; alpha
    and beta are folded into the constants (a non-constant C with beta != 1 is skipped).
    """
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    initializers = {init.name: init for init in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for index, node in enumerate(graph.node):
        replacement = _gemm_replacement(node, index, initializers, graph)
        if replacement is None:
            new_nodes.append(node)
        else:
            new_nodes.extend(replacement)
            count += 1
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
        _drop_unused_initializers(graph)
    return rewritten, count


def _gemm_replacement(
    node: onnx.NodeProto,
    index: int,
    initializers: dict[str, onnx.TensorProto],
    graph: onnx.GraphProto,
) -> list[onnx.NodeProto] | None:
    if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if attrs.get("transA", 0) or len(node.input) < 2 or node.input[1] not in initializers:
        return None
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias_name is not None and beta != 1.0 and bias_name not in initializers:
        return None

    name = node.name or f"gemm_{index}"
    weight = numpy_helper.to_array(initializers[node.input[1]])
    if attrs.get("transB", 0):
        weight = weight.T
    weight_name = f"{name}_matmul_weight"
    graph.initializer.append(
        numpy_helper.from_array(
            np.ascontiguousarray(weight * np.asarray(alpha, weight.dtype)), weight_name
        )
    )
    if bias_name is None:
        return [
            onnx.helper.make_node(
                "MatMul", [node.input[0], weight_name], [node.output[0]], name=f"{name}_MatMul"
            )
        ]
    if beta != 1.0:
        bias = numpy_helper.to_array(initializers[bias_name])
        scaled_name = f"{name}_add_bias"
        graph.initializer.append(
            numpy_helper.from_array(bias * np.asarray(beta, bias.dtype), scaled_name)
        )
        bias_name = scaled_name
    product = f"{name}_matmul_out"
    return [
        onnx.helper.make_node(
            "MatMul", [node.input[0], weight_name], [product], name=f"{name}_MatMul"
        ),
        onnx.helper.make_node("Add", [product, bias_name], [node.output[0]], name=f"{name}_Add"),
    ]


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in iter_nodes(graph) for name in node.input}
    used.update(output.name for output in graph.output)
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def pre_process(source: Path, target: Path) -> tuple[Path, str]:
    """Run quant_pre_process; symbolic shape inference fails on many exported models, so
    retry without it, and quantize the unprocessed model if that fails too."""
    try:
        quant_pre_process(source, target)
        return target, "full"
    except Exception as first:
        try:
            quant_pre_process(source, target, skip_symbolic_shape=True)
            return target, f"without symbolic shape inference ({short_reason(first, 200)})"
        except Exception as second:
            return source, f"skipped: pre-processing failed ({short_reason(second, 200)})"


def count_quantized_nodes(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(n.op_type for n in iter_nodes(model.graph) if n.op_type in QUANTIZED_OPS)
    return dict(sorted(counts.items()))


def wrap_failure(exc: Exception, mode: str, model_path: Path) -> EngineError:
    reason = short_reason(exc)
    blamed = _blame_nodes(str(exc), model_path)
    where = f" at {blamed}" if blamed else ""
    if any(hint.lower() in str(exc).lower() for hint in _UNSUPPORTED_HINTS):
        return UnsupportedModel(f"{mode} quantization does not support this model{where}: {reason}")
    return StepFailed(f"{mode} quantization failed{where}: {reason}")


def _blame_nodes(message: str, model_path: Path) -> str:
    """Name the nodes (and their ops) that an error message mentions, if any."""
    try:
        nodes = list(iter_nodes(load_model(model_path).graph))
    except EngineError:
        return ""
    named = [
        f"node {n.name!r} ({n.op_type})"
        for n in nodes
        # whole names only: a short name like "mul" must not match inside "MatMul"
        if n.name and re.search(rf"(?<![\w./]){re.escape(n.name)}(?![\w./])", message)
    ]
    return ", ".join(named[:3])
