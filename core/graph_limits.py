"""Static limits on what a model's graph makes a runtime compute or hold, checked at upload.

A model file of a few KB can describe tensors of any size: `ConstantOfShape([2**28])`
materialises a GiB, and ONNX Runtime folds every node whose inputs are all constant into
a new initializer while it builds a session (24 such nodes: 23 GB, before anything runs).
A `Loop` with a trip count of 2**62 keeps a CPU busy for ever, and subgraphs nested deep
make every recursive walk of the graph expensive. These checks read shapes and constants
only (ONNX shape inference with data propagation, which computes shapes, never values of
large tensors), so they are cheap whatever the graph claims.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx
from onnx import numpy_helper

from core.errors import InvalidModel

# Exporters write this trip count for "while" loops, which their condition ends.
INT64_MAX = 2**63 - 1
# Folding may rearrange or dequantize the stored weights (int8 -> float32 is 4x): four
# times the model's size on disk comes on top of `max_folded_bytes`.
FOLDED_ALLOWANCE_PER_STORED_BYTE = 4
# Main-graph initializers from this size on are hidden from shape inference (it reads the
# values of small integer tensors only: shapes, axes, repeats).
_SHAPE_DATA_MAX_BYTES = 1024
_SHAPE_TYPES = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32})


@dataclass(frozen=True)
class GraphLimits:
    # Any one tensor whose static shape is known (symbolic dims counted as 1).
    max_tensor_bytes: int = 4 * 1024**3
    # What constant folding would materialise, beyond the allowance for stored weights.
    max_folded_bytes: int = 2 * 1024**3
    # A Loop's constant trip count (INT64_MAX, the exporters' "while", is checked by its
    # condition instead: refused only when nothing can end the loop).
    max_loop_trip_count: int = 1_000_000
    # If/Loop/Scan bodies nested inside each other; the main graph is depth 0.
    max_subgraph_depth: int = 16


def check_graph_limits(model: onnx.ModelProto, stored_bytes: int, limits: GraphLimits) -> None:
    """Raise InvalidModel (codes `subgraph_too_deep`, `loop_trip_count_too_large`,
    `tensor_too_large`, `constant_folding_too_large`) when the graph exceeds a limit.
    `stored_bytes`: the model's size on disk, external data included."""
    _check_depth(model.graph, 0, limits)
    _check_loops(model.graph, {}, limits)
    inferred = _infer_shapes(model)
    sizes = dict(_static_sizes(inferred.graph))
    for name, size_bytes in sizes.items():
        if size_bytes > limits.max_tensor_bytes:
            raise InvalidModel(
                f"tensor {name!r} would take {size_bytes} bytes by its static shape, over the "
                f"limit of {limits.max_tensor_bytes} bytes per tensor (SQUEEZE_MAX_MODEL_"
                "TENSOR_BYTES): the graph materialises more than a runtime can hold",
                code="tensor_too_large",
            )
    folded_bytes = sum(sizes.get(name, 0) for name in _folded_outputs(inferred.graph, set()))
    allowed = limits.max_folded_bytes + FOLDED_ALLOWANCE_PER_STORED_BYTE * stored_bytes
    if folded_bytes > allowed:
        raise InvalidModel(
            f"constant folding would materialise {folded_bytes} bytes (nodes whose inputs are "
            f"all constant, such as ConstantOfShape, Expand, Tile or Range), over the "
            f"{allowed} bytes allowed (SQUEEZE_MAX_MODEL_FOLDED_BYTES plus "
            f"{FOLDED_ALLOWANCE_PER_STORED_BYTE}x the model's size)",
            code="constant_folding_too_large",
        )


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _check_depth(graph: onnx.GraphProto, depth: int, limits: GraphLimits) -> None:
    if depth > limits.max_subgraph_depth:
        raise InvalidModel(
            f"subgraphs (If/Loop/Scan bodies) are nested more than "
            f"{limits.max_subgraph_depth} deep (SQUEEZE_MAX_MODEL_SUBGRAPH_DEPTH)",
            code="subgraph_too_deep",
        )
    for node in graph.node:
        for subgraph in _subgraphs(node):
            _check_depth(subgraph, depth + 1, limits)


def _scalar(tensor: onnx.TensorProto) -> int | float | bool | None:
    """The value of a one-element tensor held in the file; None for anything else."""
    if list(tensor.dims) not in ([], [1]) or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    try:
        value = numpy_helper.to_array(tensor).reshape(-1)[0]
    except Exception:  # a malformed tensor: ONNX Runtime will say so when it loads it
        return None
    return value.item()  # type: ignore[no-any-return]


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The graph's initializers and Constant-node tensors, by name."""
    found = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
                    found[node.output[0]] = attribute.t
    return found


def _check_loops(
    graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto], limits: GraphLimits
) -> None:
    constants = {**outer, **_constants(graph)}
    for node in graph.node:
        if node.op_type == "Loop":
            _check_loop(node, constants, limits)
        for subgraph in _subgraphs(node):
            _check_loops(subgraph, constants, limits)


def _check_loop(
    node: onnx.NodeProto, constants: dict[str, onnx.TensorProto], limits: GraphLimits
) -> None:
    trip_name = node.input[0] if node.input else ""
    trip_count = _scalar(constants[trip_name]) if trip_name in constants else None
    if trip_name and trip_count is None:
        return  # computed at run time: the worker's time limits apply
    if isinstance(trip_count, int) and trip_count <= limits.max_loop_trip_count:
        return
    if isinstance(trip_count, int) and trip_count != INT64_MAX:
        raise InvalidModel(
            f"Loop {node.name or node.output[0]!r} has the constant trip count {trip_count}, "
            f"over the limit of {limits.max_loop_trip_count} (SQUEEZE_MAX_MODEL_LOOP_TRIP_COUNT)",
            code="loop_trip_count_too_large",
        )
    if not _condition_can_end(node, constants):
        raise InvalidModel(
            f"Loop {node.name or node.output[0]!r} never ends: it has no trip count under "
            f"{limits.max_loop_trip_count} and its condition is constantly true",
            code="loop_trip_count_too_large",
        )


def _condition_can_end(node: onnx.NodeProto, outer: dict[str, onnx.TensorProto]) -> bool:
    """False when the loop's condition is true on entry and the body keeps it true."""
    body = next((a.g for a in node.attribute if a.name == "body"), None)
    if body is None or len(body.input) < 2 or not body.output:
        return True  # malformed: the checker or the runtime refuses it
    initial = node.input[1] if len(node.input) > 1 else ""
    if initial and not (initial in outer and _scalar(outer[initial]) is True):
        return True
    constants = {**outer, **_constants(body)}
    producers = {output: n for n in body.node for output in n.output}
    name = body.output[0].name
    for _ in range(len(body.node) + 1):  # follow Identity chains back to their source
        if name == body.input[1].name:
            return False  # the condition passes through unchanged: true for ever
        if name in constants:
            return _scalar(constants[name]) is not True
        producer = producers.get(name)
        if producer is None or producer.op_type != "Identity" or not producer.input:
            return True
        name = producer.input[0]
    return True


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on the model without the data of its large initializers (their
    dims stay: shapes are all inference needs from them), so no big copy is made."""
    hidden: list[tuple[onnx.TensorProto, bytes]] = []
    for tensor in model.graph.initializer:
        if tensor.data_type not in _SHAPE_TYPES and len(tensor.raw_data) >= _SHAPE_DATA_MAX_BYTES:
            hidden.append((tensor, tensor.raw_data))
            tensor.ClearField("raw_data")
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise InvalidModel(f"ONNX shape inference failed on the model: {exc}") from exc
    finally:
        for tensor, raw in hidden:
            tensor.raw_data = raw


def _element_bytes(elem_type: int) -> int:
    try:
        return max(1, int(onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize))
    except Exception:  # undefined or exotic types: count one byte, a lower bound
        return 1


def _static_sizes(graph: onnx.GraphProto) -> Iterator[tuple[str, int]]:
    """(name, bytes) of every tensor of the graph and its subgraphs whose type inference
    knows; symbolic or unknown dims count as 1, so each size is a lower bound."""
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            continue
        elements = 1
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                elements *= dim.dim_value
        yield value.name, elements * _element_bytes(tensor_type.elem_type)
    for node in graph.node:
        for subgraph in _subgraphs(node):
            yield from _static_sizes(subgraph)


def _folded_outputs(graph: onnx.GraphProto, outer: set[str]) -> Iterator[str]:
    """Outputs of the nodes a runtime's constant folding computes at load: every input is
    an initializer, a Constant, or itself folded (graph order is topological)."""
    constant = outer | set(_constants(graph))
    for node in graph.node:
        inputs = [name for name in node.input if name]
        foldable = node.op_type != "Constant" and not any(True for _ in _subgraphs(node))
        if foldable and inputs and all(name in constant for name in inputs):
            constant.update(node.output)
            yield from node.output
        for subgraph in _subgraphs(node):
            yield from _folded_outputs(subgraph, constant)

