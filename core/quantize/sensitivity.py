"""Which quantized nodes hurt accuracy most: per-node error against the FP32 model.

Both models run on a few calibration batches with the tensors around each quantized node
exposed as extra graph outputs. A node's score is the error it *adds*: the relative L2
error of its output against the FP32 model's, minus the worst relative L2 error of the
float inputs it received. Ranking by the added error rather than the accumulated one
blames the node that broke the signal, not every node downstream of it.

Matching works on names, so it holds for both ways the quantizer rewrites a node:
static QDQ keeps the node (and its name) and feeds it DequantizeLinear outputs; dynamic
quantization replaces it by integer ops (`<name>_quant`) that write the same output
tensor. Where QDQ fuses an activation into the node (Conv + Relu), the node's output is
matched through the activation. Nodes whose tensors cannot be matched are left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from core.context import MeasureSettings
from core.data import Feeds
from core.formats import ensure_opset, load_model, save_model
from core.measure import providers_for, session_options
from core.quantize.common import (
    PER_CHANNEL_MIN_OPSET,
    QDQ_MIN_OPSET,
    QUANTIZED_OPS,
    pre_process,
)
from core.spec import StaticQuantize

# Ops whose weights (or activation inputs) the INT8 quantizers rewrite, and that
# `nodes_to_exclude` can keep in float32. Data-movement ops (Reshape, MaxPool...) only
# carry Q/DQ pairs along; excluding them changes little.
SENSITIVE_OP_TYPES = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "Attention", "Gather"}
)
# Activations QDQ fuses into the producing node's quantized output.
_FUSED_ACTIVATIONS = frozenset({"Relu", "Clip"})
# Ops that replace a float node in dynamic or QOperator graphs.
_INTEGER_OPS = (QUANTIZED_OPS - {"QuantizeLinear", "DequantizeLinear"}) | {"MatMulNBits"}
_TINY = 1e-20

CancelCheck = Callable[[], None]


@dataclass(frozen=True)
class NodeSensitivity:
    """How much error one quantized node adds; higher `score` means more sensitive."""

    node: str
    op_type: str
    score: float  # output_error - input_error, floored at 0
    output_error: float  # relative L2 of the node's output vs FP32
    input_error: float  # worst relative L2 among the float inputs it received
    cosine_distance: float  # 1 - cosine similarity of the output vs FP32
    # the node's place among the float32 graph's quantized nodes (None: unknown); the
    # fallback forms blocks of neighbours by it
    position: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "score": self.score,
            "output_error": self.output_error,
            "input_error": self.input_error,
            "cosine_distance": self.cosine_distance,
            "position": self.position,
        }


@dataclass(frozen=True)
class _Probe:
    node: str
    op_type: str
    output: tuple[str, str]  # (name in the FP32 model, name in the quantized model)
    inputs: tuple[tuple[str, str], ...]


def quantizer_input(model_path: Path, config: object, folder: Path) -> Path:
    """The float32 graph a quantization mode works on, whose node names
    `nodes_to_exclude` (and so the ranking) must use.

    The static mode upgrades the opset for QDQ and runs quant_pre_process, which renames
    what it fuses (MatMul + Add becomes a Gemm named ".../MatMulAddFusion"); the same
    preparation here gives the same names. The dynamic mode keeps the user's names (it
    leaves an excluded Gemm un-rewritten), so its input is the model itself.
    """
    if not isinstance(config, StaticQuantize):
        return model_path
    min_opset = PER_CHANNEL_MIN_OPSET if config.per_channel else QDQ_MIN_OPSET
    model, _ = ensure_opset(load_model(model_path), min_opset)
    source = save_model(model, folder / "source.onnx")
    prepared, _ = pre_process(source, folder / "prepared.onnx")
    return prepared


def quantized_nodes(reference: onnx.ModelProto, quantized: onnx.ModelProto) -> list[str]:
    """Names of the reference model's nodes (of SENSITIVE_OP_TYPES) that the quantized
    model quantizes, in graph order.

    A node counts as quantized when the quantized model no longer has it (integer ops
    replaced it), or still has it but reads a weight through DequantizeLinear instead of
    the float initializer, or (weightless, e.g. attention's MatMul) reads only
    dequantized inputs. A node kept in float32 by `nodes_to_exclude` reads its float
    weight and so does not count, even when its activation input is still dequantized.
    """
    return [node.name for node in _quantized_node_protos(reference, quantized)]


def rank_quantized_nodes(
    reference_path: Path,
    quantized_path: Path,
    batches: Iterable[Feeds],
    *,
    settings: MeasureSettings | None = None,
    device: str = "cpu",
    check_cancelled: CancelCheck | None = None,
) -> list[NodeSensitivity]:
    """Quantized nodes ranked by the error each adds, most sensitive first.

    `reference_path` is the float32 model the quantizer was given (node names must be
    the ones `nodes_to_exclude` refers to); `batches` are model feeds (a few calibration
    batches suffice). Runs the graphs without optimizations so every tensor is the one
    the graph names; the QDQ arithmetic is then simulated in float, which matches the
    INT8 kernels up to rounding.
    """
    reference = load_model(reference_path)
    quantized = load_model(quantized_path)
    probes = _probes(reference, quantized)
    if not probes:
        return []
    pairs = sorted({pair for probe in probes for pair in (probe.output, *probe.inputs)})
    reference_session = _exposing_session(reference, [r for r, _ in pairs], settings, device)
    quantized_session = _exposing_session(quantized, [q for _, q in pairs], settings, device)
    errors = {pair: _ErrorAccumulator() for pair in pairs}
    for batch in batches:
        if check_cancelled is not None:
            check_cancelled()
        ref_values = _run(reference_session, batch)
        q_values = _run(quantized_session, batch)
        for pair, accumulator in errors.items():
            accumulator.add(ref_values.get(pair[0]), q_values.get(pair[1]))

    ranked = []
    for position, probe in enumerate(probes):
        output = errors[probe.output]
        if not output.valid:
            continue
        input_error = max(
            (errors[pair].relative_l2 for pair in probe.inputs if errors[pair].valid),
            default=0.0,
        )
        ranked.append(
            NodeSensitivity(
                node=probe.node,
                op_type=probe.op_type,
                score=max(output.relative_l2 - input_error, 0.0),
                output_error=output.relative_l2,
                input_error=input_error,
                cosine_distance=output.cosine_distance,
                position=position,
            )
        )
    ranked.sort(key=lambda item: (-item.score, -item.output_error, item.node))
    return ranked


class _ErrorAccumulator:
    """Streams ||q - f||^2, ||f||^2, ||q||^2 and <f, q> over batches for one tensor."""

    def __init__(self) -> None:
        self.squared_error = 0.0
        self.squared_reference = 0.0
        self.squared_quantized = 0.0
        self.dot = 0.0
        self.valid = True
        self.batches = 0

    def add(self, reference: np.ndarray | None, quantized: np.ndarray | None) -> None:
        if (
            reference is None
            or quantized is None
            or reference.shape != quantized.shape
            or reference.dtype.kind != "f"
            or quantized.dtype.kind != "f"
        ):
            self.valid = False
            return
        f = reference.astype(np.float64).ravel()
        q = quantized.astype(np.float64).ravel()
        if not (np.all(np.isfinite(f)) and np.all(np.isfinite(q))):
            self.valid = False
            return
        self.squared_error += float(np.sum(np.square(q - f)))
        self.squared_reference += float(np.sum(np.square(f)))
        self.squared_quantized += float(np.sum(np.square(q)))
        self.dot += float(np.dot(f, q))
        self.batches += 1

    @property
    def relative_l2(self) -> float:
        return math.sqrt(self.squared_error / max(self.squared_reference, _TINY))

    @property
    def cosine_distance(self) -> float:
        norms = math.sqrt(self.squared_reference * self.squared_quantized)
        if norms < _TINY:
            return 0.0 if self.squared_error < _TINY else 1.0
        return 1.0 - self.dot / norms


def _quantized_node_protos(
    reference: onnx.ModelProto, quantized: onnx.ModelProto
) -> list[onnx.NodeProto]:
    weights = {init.name for init in reference.graph.initializer}
    q_nodes = {node.name: node for node in quantized.graph.node if node.name}
    dequantized = {
        output
        for node in quantized.graph.node
        if node.op_type == "DequantizeLinear"
        for output in node.output
    }
    result = []
    for node in reference.graph.node:
        if node.op_type not in SENSITIVE_OP_TYPES or not node.name:
            continue
        q_node = q_nodes.get(node.name)
        if q_node is None:
            if _was_replaced(node, quantized):
                result.append(node)
            continue
        weight_slots = [i for i, name in enumerate(node.input) if name in weights]
        if weight_slots:
            # a bias may stay float (or become int32); the weight is the one that matters
            slot = weight_slots[0]
            if slot < len(q_node.input) and q_node.input[slot] != node.input[slot]:
                result.append(node)
        elif node.input and all(name in dequantized for name in q_node.input if name):
            result.append(node)
    return result


def _was_replaced(node: onnx.NodeProto, quantized: onnx.ModelProto) -> bool:
    # Dynamic quantization names its integer ops after the node (`<name>_quant`) and
    # writes the node's output tensor; a node that simply vanished (fused away by
    # pre-processing) is not "quantized".
    prefix = f"{node.name}_"
    return any(
        q.name.startswith(prefix) and q.op_type in _INTEGER_OPS for q in quantized.graph.node
    )


def _probes(reference: onnx.ModelProto, quantized: onnx.ModelProto) -> list[_Probe]:
    q_tensors = _tensor_names(quantized)
    dequantized = _dequantized_names(quantized)
    weights = {init.name for init in reference.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in reference.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def pair(name: str) -> tuple[str, str]:
        # what consumers see in the quantized graph: the value after its Q/DQ pair
        return name, dequantized.get(name, name)

    probes = []
    for node in _quantized_node_protos(reference, quantized):
        output = _match_output(node.output[0], consumers, q_tensors)
        if output is None:
            continue
        inputs = tuple(
            pair(name) for name in node.input if name and name not in weights and name in q_tensors
        )
        probes.append(_Probe(node.name, node.op_type, pair(output), inputs))
    return probes


def _dequantized_names(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor -> the DequantizeLinear output of its QuantizeLinear, where it has one.

    Where QDQ fuses an activation, the producing node's own output tensor holds the value
    before the activation (the Q/DQ pair clamps it): only the dequantized value is
    comparable with the FP32 graph's.
    """
    quantize_input = {
        node.output[0]: node.input[0]
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input and node.output
    }
    names: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in quantize_input:
            names.setdefault(quantize_input[node.input[0]], node.output[0])
    return names


def _match_output(
    name: str, consumers: dict[str, list[onnx.NodeProto]], q_tensors: set[str]
) -> str | None:
    """The node's output in the FP32 graph, following activations QDQ fuses into it."""
    current = name
    for _ in range(4):
        if current in q_tensors:
            return current
        following = consumers.get(current, [])
        if len(following) != 1 or following[0].op_type not in _FUSED_ACTIVATIONS:
            return None
        current = following[0].output[0]
    return None


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    names = {value.name for value in model.graph.input}
    names.update(output for node in model.graph.node for output in node.output)
    return names


def _exposing_session(
    model: onnx.ModelProto,
    names: list[str],
    settings: MeasureSettings | None,
    device: str,
) -> ort.InferenceSession:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {output.name for output in exposed.graph.output}
    graph_inputs = {value.name for value in exposed.graph.input}
    for name in dict.fromkeys(names):
        if name not in present and name not in graph_inputs:
            # a name-only value info: ONNX Runtime infers the type
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    options = session_options(settings or MeasureSettings())
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        exposed.SerializeToString(), options, providers=providers_for(device)
    )


def _run(session: ort.InferenceSession, batch: Feeds) -> dict[str, np.ndarray]:
    wanted = {arg.name for arg in session.get_inputs()}
    feeds = {name: value for name, value in batch.items() if name in wanted}
    names = [output.name for output in session.get_outputs()]
    values = {
        name: np.asarray(value)
        for name, value in zip(names, session.run(names, feeds), strict=True)
    }
    values.update(feeds)  # graph inputs are tensors too (their error is zero)
    return values
