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

from core.data import FeedLayout, feed_layout, model_feeds, take_rows
from core.errors import EngineError, StepFailed, UnsupportedModel, short_reason
from core.formats import (
    SINGLE_FILE_LIMIT_BYTES,
    TensorInfo,
    drop_dead_nodes,
    drop_unused_initializers,
    iter_nodes,
    load_model,
    model_files,
    model_opset,
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


def require_onnx_domain_ops(model: onnx.ModelProto, mode: str) -> None:
    """Raise UnsupportedModel (code "nothing_to_quantize") for a model without a single
    op of the ONNX domain, e.g. skl2onnx's LinearRegressor (ai.onnx.ml) alone: ONNX
    Runtime's INT8 quantizers rewrite ONNX ops only, and without the ONNX domain among
    its opsets they stop at "Failed to find proper ai.onnx domain"."""
    domains = Counter(node.domain or "ai.onnx" for node in iter_nodes(model.graph))
    if domains.get("ai.onnx"):
        return
    ops = sorted({f"{node.domain}.{node.op_type}" for node in iter_nodes(model.graph)})
    raise UnsupportedModel(
        f"{mode} quantization has nothing to quantize: every op of the model is outside "
        f"the ONNX domain ({', '.join(ops) or 'no ops'}), and ONNX Runtime's INT8 "
        "quantizer rewrites ONNX ops (MatMul, Gemm, Conv...) only; export the model with "
        "ONNX ops (e.g. skl2onnx converts an MLP to MatMul), or use the fp16 mode",
        code="nothing_to_quantize",
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
        batch_size = eval_batch_size(session_inputs(session), data.task)
        batch = data.model_batch(take_rows(data.eval_feeds(rows=batch_size), batch_size))
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
        # per-sample arrays with samples on axis 0 (views where no cast or axis move is
        # needed), and how a batch of them becomes the model's feed
        self._feeds = model_feeds(arrays, inputs, task)
        self._layout = feed_layout(arrays, inputs, task)
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
            yield self._layout.to_model(
                {name: np.ascontiguousarray(array[rows]) for name, array in self._feeds.items()}
            )


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
        drop_unused_initializers(graph)
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


def gemm_biases_as_vectors(model: onnx.ModelProto) -> int:
    """Store the main graph's Gemm biases of shape (1, N) as (N,), in place; return how
    many. Gemm broadcasts either the same way.

    skl2onnx writes MLP intercepts as (1, N) rows, and quant_pre_process fuses its
    MatMul + Add into Gemm with that bias. onnxruntime 1.32's QDQ quantizer, adjusting
    per-channel weight scales for the int32 bias, indexes the bias per channel and fails
    on a row ("The truth value of an array with more than one element is ambiguous").
    Only biases that Gemms alone read are reshaped.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, set[str]] = {}
    for node in iter_nodes(graph):
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    graph_io = {value.name for value in (*graph.input, *graph.output)}
    reshaped = 0
    for node in graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.domain not in ("", "ai.onnx"):
            continue
        bias = initializers.get(node.input[2])
        if (
            bias is None
            or len(bias.dims) != 2
            or bias.dims[0] != 1
            or readers.get(bias.name) != {"Gemm"}
            or bias.name in graph_io
        ):
            continue
        values = numpy_helper.to_array(bias).reshape(-1)
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
        reshaped += 1
    return reshaped


# QLinearConv's inputs: the weight zero point may be one value for every channel.
_QLINEARCONV_W_ZERO_POINT = 5


def float_biases_for_float_nodes(model: onnx.ModelProto) -> int:
    """Give the convolutions (and Gemms) kept in float32 their float bias back; return
    how many were rewired.

    ONNX Runtime's QDQ quantizer (1.32) quantizes the bias of a Conv it was told not to
    quantize (nodes_to_quantize / nodes_to_exclude): the float Conv then reads its bias
    through a DequantizeLinear, which is no constant, and ONNX Runtime's NCHWc
    transformer leaves such a Conv on the plain kernel. Measured on the depthwise CNN of
    bench/latency_aware.py at batch 32: a float depthwise conv took 14.6 ms this way,
    0.27 ms with its bias a float initializer.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in iter_nodes(graph):
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    rewired = 0
    for node in list(graph.node):
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 3:
            continue
        weight = initializers.get(node.input[1])
        dq = producers.get(node.input[2])
        if weight is None or weight.data_type != onnx.TensorProto.FLOAT or dq is None:
            continue
        if dq.op_type != "DequantizeLinear" or not all(n in initializers for n in dq.input):
            continue
        values = numpy_helper.to_array(initializers[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float64)
        zero = (
            numpy_helper.to_array(initializers[dq.input[2]]).astype(np.float64)
            if len(dq.input) > 2 and dq.input[2]
            else 0.0
        )
        bias = numpy_helper.from_array(
            ((values - zero) * scale).astype(np.float32), f"{node.input[2]}_float"
        )
        graph.initializer.append(bias)
        readers[node.input[2]] -= 1
        if readers[node.input[2]] == 0:
            graph.node.remove(dq)
        node.input[2] = bias.name
        rewired += 1
    if rewired:
        used = {name for node in iter_nodes(graph) for name in node.input}
        kept = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return rewired


def compact_zero_points(model: onnx.ModelProto) -> int:
    """Drop the all-zero zero points ONNX Runtime's static quantizer writes per channel
    where one value, or none, says the same; return how many tensors were shrunk.

    QDQ: a bias's DequantizeLinear gets an int32 zero point per channel, always 0, and
    the input is optional (0 by default). QOperator: symmetric per-channel weights get
    an int8 zero point per channel, all 0, where QLinearConv accepts a scalar. On a
    depthwise-separable CNN of 73k weights, 1,162 channels cost 4.6 KB (QDQ) and 1.2 KB
    (QOperator) this way. Only zero points that nothing else reads are touched; ONNX
    Runtime's QDQ fusions and its symmetric convolution kernels take either form.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in iter_nodes(graph):
        for slot, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, slot))

    def zero_tensor(name: str) -> onnx.TensorProto | None:
        tensor = initializers.get(name)
        if tensor is None or len(readers.get(name, [])) != 1:
            return None
        return tensor if not numpy_helper.to_array(tensor).any() else None

    compacted = 0
    for node in graph.node:
        if node.domain not in ("", "ai.onnx", "com.microsoft"):
            continue
        if node.op_type == "DequantizeLinear" and len(node.input) == 3:
            value = initializers.get(node.input[0])
            int32 = value is not None and value.data_type == onnx.TensorProto.INT32
            if int32 and zero_tensor(node.input[2]) is not None:
                del node.input[2]
                compacted += 1
        elif node.op_type == "QLinearConv" and len(node.input) > _QLINEARCONV_W_ZERO_POINT:
            zero_point = zero_tensor(node.input[_QLINEARCONV_W_ZERO_POINT])
            if zero_point is not None and int(np.prod(zero_point.dims)) > 1:
                scalar = np.zeros((), numpy_helper.to_array(zero_point).dtype)
                zero_point.CopyFrom(numpy_helper.from_array(scalar, zero_point.name))
                compacted += 1
    if compacted:
        drop_unused_initializers(graph)
    return compacted


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
    retry without it, and quantize the unprocessed model if that fails too. HardSwish
    nodes its optimizer split apart are put back (`restore_hard_swish`)."""
    started = time.time()
    try:
        quant_pre_process(source, target, **_external_data_options(source, target))
        return target, "full" + _with_hard_swish_restored(target)
    except Exception as first:
        _remove_symbolic_inference_dump(started)
        try:
            quant_pre_process(
                source, target, skip_symbolic_shape=True, **_external_data_options(source, target)
            )
            note = f"without symbolic shape inference ({short_reason(first, 200)})"
            return target, note + _with_hard_swish_restored(target)
        except Exception as second:
            return source, f"skipped: pre-processing failed ({short_reason(second, 200)})"


def _with_hard_swish_restored(path: Path) -> str:
    if has_external_data(path):  # a > 2 GB model: not rewritten for a few nodes
        return ""
    model = load_model(path)
    restored = restore_hard_swish(model)
    if not restored:
        return ""
    save_model(model, path)
    return f"; {restored} HardSwish restored"


def restore_hard_swish(model: onnx.ModelProto) -> int:
    """Fuse each `Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))` back into `HardSwish(x)`
    (opset 14+), in place; returns how many.

    quant_pre_process's optimizer splits HardSwish that way. Quantized, the split form
    puts a QuantizeLinear/DequantizeLinear pair and an integer Mul after every such
    activation: a MobileNet-sized depthwise CNN ran at 0.66x FP32 with signed
    activations (2.06x with HardSwish kept, which stays FP32 between the quantized convs).
    """
    if model_opset(model) < 14:
        return 0
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in graph.output}
    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for sigmoid in graph.node:
        if sigmoid.op_type != "HardSigmoid" or sigmoid.domain not in ("", "ai.onnx"):
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in sigmoid.attribute}
        if not (
            math.isclose(attributes.get("alpha", 0.2), 1 / 6, rel_tol=1e-5)
            and math.isclose(attributes.get("beta", 0.5), 0.5, rel_tol=1e-6)
        ):
            continue
        (x,), (gate,) = sigmoid.input, sigmoid.output
        users = consumers.get(gate, [])
        if len(users) != 1 or gate in graph_outputs:
            continue
        (mul,) = users
        if mul.op_type != "Mul" or sorted(mul.input) != sorted([x, gate]):
            continue
        replaced[id(mul)] = onnx.helper.make_node(
            # pre-processing leaves nodes unnamed; names must be unique (outputs are)
            "HardSwish",
            [x],
            list(mul.output),
            name=mul.name or f"HardSwish_{mul.output[0]}",
        )
        dropped.add(id(sigmoid))
    if not replaced:
        return 0
    nodes = [replaced.get(id(node), node) for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(replaced)


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


# Integer element types of shape computations, with their numpy types.
_SHAPE_DTYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}
# Folding is checked by running both graphs on this many eval rows, one and all at once.
SHAPE_FOLD_CHECK_ROWS = 3


def fold_shape_computations(
    model: onnx.ModelProto,
    work_dir: Path,
    check_feeds: Mapping[str, np.ndarray],
    layout: FeedLayout | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The model with every shape computation whose value does not depend on the input's
    dynamic dims (the batch) replaced by a constant, and a report of what was folded.

    Exporters write shape arithmetic as graph nodes: PyTorch's nn.MultiheadAttention
    exports as about 200 Shape/Gather/Unsqueeze/Concat/Slice nodes on a 4-layer encoder,
    most of them computing head counts and widths that are the same for every batch.
    ONNX Runtime cannot fold them while the batch dim is symbolic, and at batch 1 each
    costs a kernel launch: on that encoder they took a fifth of the INT8 model's time.
    ONNX Runtime's symbolic shape inference knows their values (as expressions of the
    dynamic dims); run after its basic constant folding (before it, the exporter's Mod of
    constants stops it), the values it finds as plain integers are written as
    initializers under the same names, and the nodes only they needed are dropped. The
    user's other nodes and names are untouched.

    Never trusted blindly: both graphs run on `check_feeds` (per-sample rows, fed through
    `layout`) one row at a time and all rows at once, and any difference returns the model
    unchanged. Inference runs without
    auto_merge, so no two dims are assumed equal. Models over 2 GB are left as they are.
    """
    if model.ByteSize() >= SINGLE_FILE_LIMIT_BYTES:
        return model, {"folded": 0, "skipped": "the model is over 2 GB"}
    try:
        values = _static_shape_values(model, work_dir)
    except Exception as exc:
        return model, {"folded": 0, "skipped": f"shape inference failed ({short_reason(exc, 200)})"}
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    # whole nodes only (a Split with one output folded would define it twice), and never
    # a graph output
    outputs = {output.name for output in graph.output}
    constants = {
        name: values[name]
        for node in graph.node
        if all(o in values and o not in outputs for o in node.output if o)
        for name in node.output
        if name
    }
    if not constants:
        return model, {"folded": 0}
    graph.initializer.extend(
        numpy_helper.from_array(value, name) for name, value in constants.items()
    )
    nodes_before = len(graph.node)
    kept = [n for n in graph.node if not all(o in constants or not o for o in n.output)]
    drop_dead_nodes(graph, kept)
    drop_unused_initializers(graph)
    report = {"folded": len(constants), "nodes_removed": nodes_before - len(graph.node)}
    mismatch = _outputs_differ(model, folded, check_feeds, layout or FeedLayout())
    if mismatch:
        return model, {"folded": 0, "skipped": f"the folded graph computes otherwise: {mismatch}"}
    return folded, report


def _static_shape_values(model: onnx.ModelProto, work_dir: Path) -> dict[str, np.ndarray]:
    """Integer tensors whose values symbolic shape inference finds free of dynamic dims."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    work_dir.mkdir(parents=True, exist_ok=True)
    source = work_dir / "fold-source.onnx"
    basic = work_dir / "fold-basic.onnx"
    try:
        onnx.save_model(model, str(source))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(basic)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load_model(str(basic))
    finally:  # copies of the model: not worth their disk space afterwards
        source.unlink(missing_ok=True)
        basic.unlink(missing_ok=True)
    inference = SymbolicShapeInference(
        int_max=2**31 - 1, auto_merge=False, guess_output_rank=False, verbose=0
    )
    inference._preprocess(optimized)
    inference._infer_impl()
    values: dict[str, np.ndarray] = {}
    for name, value in inference.sympy_data_.items():
        elements = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) or getattr(v, "is_Integer", False) for v in elements):
            continue  # depends on a dynamic dim (or is not an integer)
        known = inference.known_vi_.get(name)
        dtype = _SHAPE_DTYPES.get(known.type.tensor_type.elem_type) if known else None
        if dtype is None:
            continue
        array = np.array([int(v) for v in elements], dtype=dtype)
        values[name] = array if isinstance(value, list) else array.reshape(())
    return values


def _outputs_differ(
    original: onnx.ModelProto,
    folded: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    layout: FeedLayout,
) -> str:
    """Why the two models' outputs differ on `feeds` (row by row and all at once), or ""."""
    sessions = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (original, folded)
    ]
    rows = len(next(iter(feeds.values())))
    batches = [
        (1, layout.to_model({n: a[i : i + 1] for n, a in feeds.items()})) for i in range(rows)
    ]
    batches.append((rows, layout.to_model(feeds)))
    compared = 0
    for size, batch in batches:
        try:
            expected = sessions[0].run(None, batch)
        except Exception:
            continue  # e.g. a pinned batch dim: this batch size cannot be checked
        try:
            actual = sessions[1].run(None, batch)
        except Exception as exc:
            return f"it fails at batch {size} ({short_reason(exc, 120)})"
        for before, after in zip(expected, actual, strict=True):
            if np.shape(before) != np.shape(after) or not np.allclose(
                before, after, rtol=1e-4, atol=1e-5, equal_nan=True
            ):
                return f"outputs differ at batch {size}"
        compared += 1
    return "" if compared else "no check batch ran on the original"


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
