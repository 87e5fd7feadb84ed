"""Pieces every quantization mode shares: refusing double quantization, validating the
output, calibration streaming, the Gemm->MatMul rewrite, pre-processing, error wrapping,
and an honest size report.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

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
    model_files,
    model_size_bytes,
    save_model,
    sort_topologically,
    subgraphs,
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
        # QOperator-format ops of the com.microsoft domain
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QLinearSoftmax",
        "QLinearWhere",
        # weight-only block quantization (int4 mode)
        "MatMulNBits",
        "MatMulBnb4",
        "GatherBlockQuantized",
    }
)
# Full-precision element types, with their sizes, that size_report counts as weights
# left unquantized (float16 is what the fp16 mode produces, so it is not among them).
_FULL_PRECISION_BYTES: dict[int, int] = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8}
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
    #10503, #11020); yielding batches lazily keeps only one in memory. The reader also
    serves batch ranges (`len` counts batches, `set_range` picks some): quantize_static
    given `CalibStridedMinMax` feeds the calibrator one range per `collect_data` call,
    which is what keeps the histogram calibrators bounded (see `STREAMING_OPTIONS`).
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

    def __len__(self) -> int:
        """Batches in one pass over the chosen rows."""
        return math.ceil(len(self._rows) / self._batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve batches `start_index` to `end_index` (exclusive) next, then stop."""
        self._batches = self._iterate(start_index, end_index)

    def _iterate(self, first: int = 0, stop: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        last = len(self) if stop is None else min(stop, len(self))
        for batch in range(first, last):
            start = batch * self._batch_size
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


# quantize_static options that make calibration stream: the calibrator's collect_data
# runs once per batch (a "stride" of one batch). MinMax then merges per-batch ranges;
# Entropy and Percentile merge each batch into per-tensor histograms. Without it, the
# histogram calibrators hold every batch's activations of every calibrated tensor until
# the reader is exhausted (onnxruntime 1.32's HistogramCalibrater.collect_data).
STREAMING_OPTIONS: dict[str, Any] = {"CalibStridedMinMax": 1}


def gemm_to_matmul(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite Gemm nodes with constant weights as MatMul (+ Add), returning the count.

    Only the main graph's Gemms with transA=0 and an initializer B are rewritten; alpha
    and beta are folded into the constants (a non-constant C with beta != 1 is skipped).
    A Gemm named N becomes "N_MatMul" and "N_Add" (see `exclusion_names`).
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


# Where onnxruntime 1.32's SymbolicShapeInference dumps its partial result when it fails:
# the process's working directory, weights as a uuid-named external data file beside it.
_SYMBOLIC_INFERENCE_DUMP = Path("sym_shape_infer_temp.onnx")


def _external_data_options(source: Path, target: Path) -> dict[str, Any]:
    if not has_external_data(source):
        return {}
    return {
        "save_as_external_data": True,
        "all_tensors_to_one_file": True,
        "external_data_location": f"{target.name}.data",
    }


def has_external_data(path: Path) -> bool:
    """Whether the model keeps weights in external files (protobuf caps a file at 2 GB):
    the quantizers must then write their outputs with external data too."""
    return len(model_files(path)) > 1


def pre_process(source: Path, target: Path) -> tuple[Path, str]:
    """Run quant_pre_process; symbolic shape inference fails on many exported models, so
    retry without it, and quantize the unprocessed model if that fails too."""
    started = time.time()
    try:
        quant_pre_process(source, target, **_external_data_options(source, target))
        return target, "full"
    except Exception as first:
        _remove_symbolic_inference_dump(started)
        try:
            quant_pre_process(
                source, target, skip_symbolic_shape=True, **_external_data_options(source, target)
            )
            return target, f"without symbolic shape inference ({short_reason(first, 200)})"
        except Exception as second:
            return source, f"skipped: pre-processing failed ({short_reason(second, 200)})"


def _remove_symbolic_inference_dump(started: float) -> None:
    """Delete the dump a failed symbolic shape inference wrote into the working directory
    (a copy of the model: left there, every such job would leak its size in disk)."""
    dump = _SYMBOLIC_INFERENCE_DUMP
    try:
        if not dump.is_file() or dump.stat().st_mtime < started - 1:
            return  # not written by this call
        dumped = onnx.load_model(str(dump), load_external_data=False)
        for tensor in _all_tensors(dumped.graph):
            for entry in tensor.external_data:
                # only plain file names beside the dump: never follow a path elsewhere
                if entry.key == "location" and Path(entry.value).name == entry.value:
                    Path(entry.value).unlink(missing_ok=True)
        dump.unlink(missing_ok=True)
    except Exception:  # best effort: cleaning up must never fail the step
        return


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
        for subgraph in subgraphs(node):
            yield from _all_tensors(subgraph)


# From IR version 4 on, initializers need not be listed as graph inputs.
_INITIALIZERS_APART_IR = 4


def modernize_ir(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int | None]:
    """The model at an IR version its opsets allow and at least 4, with initializers no
    longer listed as graph inputs; and the IR version it had (None when unchanged).

    Before IR 4 every initializer had to be a graph input too: the quantizers add scales
    and rewritten weights as initializers only, which such a model may not hold ("input
    ... is undefined", "in initializer but not in graph input"), and an opset upgrade
    keeps the old IR. Initializers listed as inputs are weights, never data a caller feeds.
    """
    needed = max(
        _INITIALIZERS_APART_IR,
        onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True),
    )
    if model.ir_version >= needed:
        return model, None
    modern = onnx.ModelProto()
    modern.CopyFrom(model)
    modern.ir_version = needed
    initializer_names = {init.name for init in modern.graph.initializer}
    data_inputs = [value for value in modern.graph.input if value.name not in initializer_names]
    del modern.graph.input[:]
    modern.graph.input.extend(data_inputs)
    return modern, model.ir_version


def restore_topological_order(path: Path) -> bool:
    """Reorder the main graph of the model at `path` so every node follows what it reads,
    including what its If/Loop bodies read from the outer scope; rewrite the file only if
    a node moved, and say whether one did.

    onnxruntime's quantizers sort nodes by their explicit inputs only, so an If whose
    branches read a value computed in the main graph can land before that value's
    producer: ONNX Runtime still runs it, but the ONNX checker (and so every other tool)
    rejects the graph.
    """
    graph = _graph_only(path).graph
    before = [tuple(node.output) for node in graph.node]
    sort_topologically(graph)
    if [tuple(node.output) for node in graph.node] == before:
        return False
    model = load_model(path)
    sort_topologically(model.graph)
    save_model(model, path)
    return True


def exclusion_names(names: Collection[str]) -> list[str]:
    """Node names to pass as nodes_to_exclude so that a user's names keep their meaning.

    A Gemm named N is rewritten as "N_MatMul" + "N_Add", by gemm_to_matmul and by
    onnxruntime's dynamic quantizer alike; excluding N must exclude its MatMul too.
    """
    return list(dict.fromkeys([*names, *(f"{name}_MatMul" for name in names)]))


def missing_node_names(model_path: Path, names: Collection[str]) -> list[str]:
    """The names in `names` that no node of the model (subgraphs included) carries."""
    if not names:
        return []
    present = {node.name for node in iter_nodes(_graph_only(model_path).graph)}
    return [name for name in names if name not in present]


def _graph_only(path: Path) -> onnx.ModelProto:
    """The model's graph without its external data: enough to read names and shapes."""
    return onnx.load_model(str(path), load_external_data=False)


def size_report(original: Path, quantized: Path) -> dict[str, Any]:
    """Sizes on disk, their ratio, and the float weights the quantizer left in subgraphs.

    ONNX Runtime's quantizers do not descend into If/Loop/Scan bodies, and the scales and
    zero points they add cost bytes: a model whose weights sit in subgraphs can come out
    larger than it went in. `unquantized_subgraph_weights` counts, in the quantized model,
    the float32/float64 tensors (initializers and Constant values of more than one
    element) inside subgraphs that a non-quantized op reads; `size_ratio` is original /
    quantized (above 1: smaller). Sizes include external data files.
    """
    original_bytes = model_size_bytes(original)
    quantized_bytes = model_size_bytes(quantized)
    count, weight_bytes = _float_subgraph_weights(_graph_only(quantized).graph)
    report: dict[str, Any] = {
        "original_size_bytes": original_bytes,
        "quantized_size_bytes": quantized_bytes,
        "size_ratio": round(original_bytes / quantized_bytes, 4),
        "unquantized_subgraph_weights": {"count": count, "bytes": weight_bytes},
    }
    if quantized_bytes >= original_bytes:
        report["size_warning"] = (
            f"the quantized file ({quantized_bytes} bytes) is not smaller than the original "
            f"({original_bytes} bytes)"
            + (
                f": {count} float weight tensors ({weight_bytes} bytes) inside If/Loop/Scan "
                "subgraphs were left unquantized"
                if count
                else ": the added scales and zero points outweigh the savings"
            )
        )
    return report


def _float_subgraph_weights(graph: onnx.GraphProto) -> tuple[int, int]:
    count, total = 0, 0
    for node in graph.node:
        for subgraph in subgraphs(node):
            for tensor in _float_weights_read_unquantized(subgraph):
                count += 1
                total += _tensor_bytes(tensor)
            inner_count, inner_bytes = _float_subgraph_weights(subgraph)
            count, total = count + inner_count, total + inner_bytes
    return count, total


def _float_weights_read_unquantized(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """This graph's own float tensors (not its nested subgraphs') that a float op reads."""
    float_readers = {
        name
        for node in iter_nodes(graph)
        if node.op_type not in QUANTIZED_OPS
        for name in node.input
    }
    tensors: list[tuple[str, onnx.TensorProto]] = [(t.name, t) for t in graph.initializer]
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    tensors.append((node.output[0], attr.t))
    for name, tensor in tensors:
        elements = int(np.prod(tensor.dims, dtype=np.int64))
        if tensor.data_type in _FULL_PRECISION_BYTES and elements > 1 and name in float_readers:
            yield tensor


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    elements = int(np.prod(tensor.dims, dtype=np.int64))
    return elements * _FULL_PRECISION_BYTES[tensor.data_type]


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
