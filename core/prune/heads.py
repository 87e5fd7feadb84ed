"""Attention-head pruning as ONNX graph surgery, run before the torch bridge.

onnx2torch rebuilds attention from MatMul/Reshape/Softmax ops, so torch-pruning never
sees heads; here they are removed from the ONNX graph itself.

A block is found from its Softmax: the MatMul of queries by keys before it, the MatMul
by values after it. Queries, keys and values are followed back through layout ops
(Reshape, Transpose, Unsqueeze, Squeeze, Gather, Mul/Div by a scalar) to their
projections (MatMul by a constant [in, out] weight plus a bias, or Gemm); the attention
output is followed forward to the output projection. One packed projection (the
[d, 3d] in_proj of nn.MultiheadAttention) and separate q/k/v projections both fit.

Which axis of each tensor on those paths holds the head index is tracked from the
concrete shapes of one ONNX Runtime run: that is what makes a Reshape between
(L, N, 3, E), (L, N*H, dh), (N, H, L, dh) and (L*N, E) rewritable whatever the exporter
wrote. Removing heads slices the projections' output features and the output
projection's input features, and scales the head-carrying dim of each Reshape target:
a constant is rewritten, a dim computed at run time from an unpruned tensor (the
residual width, the batch size times a constant H) is scaled by its constant factor or
by an inserted Mul/Div, and a dim read from a tensor that already lost heads is left as
it is. The head dim, the 1/sqrt(dh) scale and the residual width do not change.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from core.errors import UnsupportedModel, short_reason
from core.formats import drop_dead_nodes, drop_unused_initializers

ImportanceName = Literal["l1", "l2", "taylor"]

# Ops that move or rescale a tensor without mixing heads (scalar Mul/Div: the 1/sqrt(dh)).
_LAYOUT_OPS = frozenset(
    {"Transpose", "Reshape", "Unsqueeze", "Squeeze", "Gather", "Mul", "Div", "Cast", "Identity"}
)
# Ops between the scores MatMul and the Softmax (scale, additive mask) and after it.
_SCORE_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Cast", "Where"})
_PASS_OPS = frozenset({"Cast", "Identity", "Dropout"})
# Elementwise ops of shape arithmetic: a value follows heads when an operand does.
_ARITHMETIC_OPS = frozenset(
    {"Mul", "Div", "Add", "Sub", "Mod", "Max", "Min", "Neg", "Floor", "Ceil", "Sqrt", "Abs"}
)
_MAX_CHAIN = 16


class _NotAttention(Exception):
    """A Softmax that is not (a supported form of) multi-head attention; says why."""


@dataclass(frozen=True)
class HeadAxis:
    """Where the head index sits in a tensor: along `axis`, in steps of `inner`
    (index = outer * heads * inner + head * inner + rest)."""

    axis: int
    inner: int


@dataclass(frozen=True, eq=False)
class Projection:
    """A Linear layer as exported: MatMul by a constant weight (+ Add of a bias) or Gemm."""

    node: onnx.NodeProto  # the MatMul or Gemm
    weight_input: int  # index of the weight among node's inputs
    bias_node: onnx.NodeProto | None  # the node holding the bias (the Add, or the Gemm)
    bias_input: int
    output: str  # the projection's result, bias included
    out_axis: int  # the weight's axis of output features


@dataclass(eq=False)
class AttentionBlock:
    """One multi-head attention block and where its heads live."""

    name: str
    heads: int
    head_dim: int
    # q/k/v projections, each with how many of q, k, v it packs (1, or 3 for in_proj)
    projections: list[tuple[Projection, int]]
    output: Projection
    # Reshapes whose target holds the head index, with that target axis
    reshapes: list[tuple[onnx.NodeProto, int]]
    head_axes: dict[str, HeadAxis]


@dataclass(frozen=True)
class HeadRecord:
    """What head pruning did to one block (for the step's report)."""

    block: str
    heads_before: int
    heads_after: int
    head_dim: int
    removed_heads: list[int]
    importance: list[float]  # per head, in head order

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class HeadPruning:
    model: onnx.ModelProto
    blocks: list[HeadRecord]
    importance: Literal["l1", "l2"]  # the criterion actually used
    notes: list[str] = field(default_factory=list)


def prune_heads(
    model: onnx.ModelProto,
    head_sparsity: float,
    importance: ImportanceName,
    feeds: Mapping[str, np.ndarray],
) -> HeadPruning:
    """Remove `round(head_sparsity * H)` of the least important heads of every attention
    block (at least one head kept), as a new model; `feeds` (one small batch, keyed by
    input name) give the concrete shapes the surgery reads, and validate the result.

    A head's importance is the L1/L2 norm of its slice of the q/k/v projections' weights
    and biases and of the output projection's weight. Taylor importance needs gradients
    the ONNX graph does not have: it falls back to L2 (said in `notes`). Raises
    UnsupportedModel (code "no_attention_blocks") when no block is recognised, code
    "head_pruning_failed" when the pruned model does not check or run.
    """
    used: Literal["l1", "l2"] = "l1" if importance == "l1" else "l2"
    notes = []
    if importance == "taylor":
        notes.append("attention heads ranked by l2 norm: taylor importance needs gradients")
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    graph = _Graph(pruned, feeds)
    blocks = _blocks(graph)
    surgery = _Surgery(graph)
    records = []
    for block in blocks:
        scores = _head_importance(graph, block, used)
        count = min(round(head_sparsity * block.heads), block.heads - 1)
        removed = sorted(int(h) for h in np.argsort(scores, kind="stable")[:count])
        if removed:
            surgery.remove_heads(block, [h for h in range(block.heads) if h not in removed])
        records.append(
            HeadRecord(
                block=block.name,
                heads_before=block.heads,
                heads_after=block.heads - len(removed),
                head_dim=block.head_dim,
                removed_heads=removed,
                importance=[float(s) for s in scores],
            )
        )
    if any(record.removed_heads for record in records):
        surgery.finish()
        _validate(pruned, model, feeds)
    return HeadPruning(model=pruned, blocks=records, importance=used, notes=notes)


def find_attention_blocks(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]
) -> list[AttentionBlock]:
    """Every multi-head attention block of `model`, in graph order; UnsupportedModel
    (code "no_attention_blocks") naming why each Softmax did not fit when none does."""
    return _blocks(_Graph(model, feeds))


def _blocks(graph: _Graph) -> list[AttentionBlock]:
    blocks, reasons = [], []
    for node in list(graph.nodes):
        if node.op_type != "Softmax":
            continue
        try:
            blocks.append(_block_at(graph, node))
        except _NotAttention as exc:
            reasons.append(f"{node.name or node.output[0]}: {exc}")
    if not blocks:
        why = "; ".join(reasons[:3]) if reasons else "the graph has no Softmax"
        raise UnsupportedModel(
            f"no attention blocks found ({why}): heads can only be pruned in multi-head "
            "self-attention built from MatMul, Softmax and Reshape/Transpose ops",
            code="no_attention_blocks",
        )
    return blocks


def _head_importance(graph: _Graph, block: AttentionBlock, norm: Literal["l1", "l2"]) -> np.ndarray:
    """Per head: the norm of all its parameters (q/k/v weight slices and biases, output
    projection rows)."""
    scores = np.zeros(block.heads)
    for head in range(block.heads):
        parts = []
        for projection, chunks in block.projections:
            index = _feature_index(block, [head], chunks)
            parts.append(np.take(graph.weight(projection), index, axis=projection.out_axis))
            bias = graph.bias(projection)
            if bias is not None:
                parts.append(bias[index])
        out = block.output
        parts.append(
            np.take(graph.weight(out), _feature_index(block, [head], 1), axis=1 - out.out_axis)
        )
        flat = np.concatenate([part.ravel() for part in parts]).astype(np.float64)
        scores[head] = np.abs(flat).sum() if norm == "l1" else np.sqrt(np.square(flat).sum())
    return scores


def _feature_index(block: AttentionBlock, heads: Sequence[int], chunks: int) -> np.ndarray:
    """Feature indices of `heads` in a projection packing `chunks` of H * dh features."""
    dh, width = block.head_dim, block.heads * block.head_dim
    return np.array(
        [c * width + h * dh + i for c in range(chunks) for h in heads for i in range(dh)],
        dtype=np.int64,
    )


# --- the graph, with one run's concrete values ---------------------------------------------


class _Graph:
    """The model's main graph: producers, consumers, constants, and every tensor's
    value on `feeds` (one ONNX Runtime run with all node outputs fetched)."""

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> None:
        self.model = model
        self.nodes = model.graph.node
        self.producer = {out: node for node in self.nodes for out in node.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.constants = {
            init.name: numpy_helper.to_array(init) for init in model.graph.initializer
        }
        for node in self.nodes:  # TorchScript shares equal weights through Identity nodes
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "Identity" and node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]
        self.values = {**self.constants, **_all_values(model, feeds)}

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(size) for size in np.shape(self.values[name]))

    def weight(self, projection: Projection) -> np.ndarray:
        return self.constants[projection.node.input[projection.weight_input]]

    def bias(self, projection: Projection) -> np.ndarray | None:
        if projection.bias_node is None:
            return None
        return self.constants[projection.bias_node.input[projection.bias_input]]


def _all_values(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {output.name for output in probe.graph.output}
    names = [out for node in probe.graph.node for out in node.output if out and out not in known]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        fetched = [output.name for output in session.get_outputs()]
        return dict(zip(fetched, session.run(fetched, dict(feeds)), strict=True))
    except Exception as exc:
        raise UnsupportedModel(
            f"cannot run the model to find its attention blocks: {short_reason(exc)}",
            code="no_attention_blocks",
        ) from exc


# --- finding blocks --------------------------------------------------------------------------


def _block_at(graph: _Graph, softmax: onnx.NodeProto) -> AttentionBlock:
    scores_shape = graph.shape(softmax.input[0])
    axis = _attribute(softmax, "axis", -1)
    if len(scores_shape) < 3 or axis % len(scores_shape) != len(scores_shape) - 1:
        raise _NotAttention("not a softmax over the last axis of batched scores")
    scores = _back_to_matmul(graph, softmax.input[0])
    values = _attention_by_values(graph, softmax.output[0])
    roles = {
        "queries": scores.input[0],
        "keys": scores.input[1],
        "values": values.input[1],
    }
    chains = {role: _chain_to_projection(graph, tensor) for role, tensor in roles.items()}
    head_dim = graph.shape(roles["queries"])[-1]
    if graph.shape(roles["keys"])[-2] != head_dim or graph.shape(roles["values"])[-1] != head_dim:
        raise _NotAttention("queries, keys and values have different head dims")
    projections: dict[int, tuple[Projection, int]] = {}
    for projection, _ in chains.values():
        packed = projections.get(id(projection.node), (projection, 0))
        projections[id(projection.node)] = (packed[0], packed[1] + 1)
    heads = _head_count(graph, list(projections.values()), head_dim)
    head_axes: dict[str, HeadAxis] = {}
    reshapes: dict[int, tuple[onnx.NodeProto, int]] = {}
    ends = []
    for projection, nodes in chains.values():
        ends.append(_track(graph, projection.output, nodes, head_dim, heads, head_axes, reshapes))
    if len(set(ends)) != 1 or ends[0].axis >= len(graph.shape(roles["queries"])) - 2:
        raise _NotAttention("queries, keys and values do not hold heads on one batch axis")
    for name in _between(graph, scores.output[0], values.output[0]):
        head_axes[name] = ends[0]
    output, nodes = _chain_to_output(graph, values.output[0])
    end = _track(graph, values.output[0], nodes, head_dim, heads, head_axes, reshapes)
    if end != HeadAxis(
        len(graph.shape(nodes[-1].output[0] if nodes else values.output[0])) - 1, head_dim
    ):
        raise _NotAttention(
            "the attention output does not reach the output projection as (..., H * dh)"
        )
    return AttentionBlock(
        name=_block_name(softmax),
        heads=heads,
        head_dim=head_dim,
        projections=list(projections.values()),
        output=output,
        reshapes=list(reshapes.values()),
        head_axes=head_axes,
    )


def _block_name(softmax: onnx.NodeProto) -> str:
    """The exporter's module path of the block ("/encoder/layers.0/self_attn"), else
    the Softmax's own name."""
    prefix, _, _ = softmax.name.rpartition("/")
    return prefix or softmax.name or softmax.output[0]


def _head_count(graph: _Graph, projections: list[tuple[Projection, int]], head_dim: int) -> int:
    counts = set()
    for projection, chunks in projections:
        features = graph.weight(projection).shape[projection.out_axis]
        if features % (chunks * head_dim):
            raise _NotAttention("projection width is not a multiple of the head dim")
        counts.add(features // (chunks * head_dim))
    if len(counts) != 1:
        raise _NotAttention("q/k/v projections disagree on the number of heads")
    return counts.pop()


def _back_to_matmul(graph: _Graph, tensor: str) -> onnx.NodeProto:
    """The MatMul of queries by keys behind the scores (past scaling and masks)."""
    for _ in range(_MAX_CHAIN):
        node = graph.producer.get(tensor)
        if node is None:
            break
        if node.op_type == "MatMul" and not any(graph.constant(n) is not None for n in node.input):
            return node
        if node.op_type not in _SCORE_OPS:
            break
        tensor = _main_input(graph, node)
    raise _NotAttention("no MatMul of queries by keys before the Softmax")


def _attention_by_values(graph: _Graph, probabilities: str) -> onnx.NodeProto:
    tensor = probabilities
    for _ in range(_MAX_CHAIN):
        users = graph.consumers.get(tensor, [])
        if len(users) != 1:
            break
        [node] = users
        if node.op_type == "MatMul" and node.input[0] == tensor:
            if graph.constant(node.input[1]) is None:
                return node
            break
        if node.op_type not in _PASS_OPS:
            break
        tensor = node.output[0]
    raise _NotAttention("the Softmax does not feed one MatMul by values")


def _main_input(graph: _Graph, node: onnx.NodeProto) -> str:
    """The input carrying the scores through `node`: the largest operand (not the scale
    or a broadcast mask), the dividend of a Div, a branch of Where (masked_fill)."""
    if node.op_type in ("Div", "Cast"):
        return node.input[0]
    operands = list(node.input[1:] if node.op_type == "Where" else node.input)
    return max(operands, key=lambda name: np.size(graph.values[name]))


def _layout_input(graph: _Graph, node: onnx.NodeProto) -> str | None:
    """The input a layout op moves without mixing heads, None when `node` is not one:
    Gather must pick by a constant scalar, Mul/Div must scale by a scalar."""
    if node.op_type not in _LAYOUT_OPS:
        return None
    if node.op_type == "Gather":
        index = graph.constant(node.input[1])
        return node.input[0] if index is not None and index.ndim == 0 else None
    if node.op_type in ("Mul", "Div"):
        sizes = [np.size(graph.values[name]) for name in node.input]
        if sizes[1] == 1:
            return node.input[0]
        return node.input[1] if node.op_type == "Mul" and sizes[0] == 1 else None
    return node.input[0]


def _chain_to_projection(graph: _Graph, tensor: str) -> tuple[Projection, list[onnx.NodeProto]]:
    """The projection `tensor` comes from and the layout ops in between, in graph order."""
    nodes: list[onnx.NodeProto] = []
    for _ in range(_MAX_CHAIN):
        projection = _projection_of(graph, tensor)
        if projection is not None:
            return projection, nodes
        node = graph.producer.get(tensor)
        moved = _layout_input(graph, node) if node is not None else None
        if node is None or moved is None:
            break
        nodes.insert(0, node)
        tensor = moved
    raise _NotAttention(f"cannot follow {tensor!r} back to a projection")


def _chain_to_output(graph: _Graph, tensor: str) -> tuple[Projection, list[onnx.NodeProto]]:
    """The output projection the attention output reaches and the layout ops on the way."""
    nodes: list[onnx.NodeProto] = []
    for _ in range(_MAX_CHAIN):
        users = [node for node in graph.consumers.get(tensor, []) if node.op_type != "Shape"]
        if len(users) != 1:
            break
        [node] = users
        projection = _projection_from(graph, node)
        if projection is not None and node.input[0] == tensor:
            return projection, nodes
        if _layout_input(graph, node) != tensor:
            break
        nodes.append(node)
        tensor = node.output[0]
    raise _NotAttention("the attention output does not reach an output projection")


def _projection_from(graph: _Graph, node: onnx.NodeProto) -> Projection | None:
    """The Linear layer `node` (a MatMul or Gemm) starts, its bias Add included."""
    ends = [node.output[0]]
    if node.op_type == "MatMul":
        ends = [user.output[0] for user in graph.consumers.get(node.output[0], [])] + ends
    for end in ends:
        projection = _projection_of(graph, end)
        if projection is not None and projection.node is node:
            return projection
    return None


def _projection_of(graph: _Graph, tensor: str) -> Projection | None:
    """The Linear layer whose result `tensor` is, if it is one."""
    node = graph.producer.get(tensor)
    if node is None:
        return None
    if node.op_type == "Gemm" and _attribute(node, "transA", 0) == 0:
        if _attribute(node, "alpha", 1.0) != 1.0 or _is_matrix(graph, node.input[1]) is False:
            return None
        out_axis = 0 if _attribute(node, "transB", 0) else 1
        has_bias = len(node.input) > 2 and node.input[2] != ""
        if has_bias and not _is_bias(
            graph, node.input[2], graph.constants[node.input[1]].shape[out_axis]
        ):
            return None
        if has_bias and _attribute(node, "beta", 1.0) != 1.0:
            return None
        return Projection(node, 1, node if has_bias else None, 2, tensor, out_axis)
    if node.op_type == "MatMul" and _is_matrix(graph, node.input[1]):
        return Projection(node, 1, None, 0, tensor, 1)
    if node.op_type == "Add":
        for bias_input, other in ((0, 1), (1, 0)):
            matmul = graph.producer.get(node.input[other])
            if (
                matmul is None
                or matmul.op_type != "MatMul"
                or not _is_matrix(graph, matmul.input[1])
            ):
                continue
            if _is_bias(graph, node.input[bias_input], graph.constants[matmul.input[1]].shape[1]):
                return Projection(matmul, 1, node, bias_input, tensor, 1)
    return None


def _is_matrix(graph: _Graph, name: str) -> bool:
    value = graph.constant(name)
    return value is not None and value.ndim == 2 and value.dtype.kind == "f"


def _is_bias(graph: _Graph, name: str, features: int) -> bool:
    value = graph.constant(name)
    return value is not None and value.shape == (features,)


def _between(graph: _Graph, start: str, end: str) -> Iterator[str]:
    """Tensors from the scores to the attention output (scores, softmax, probabilities)."""
    yield start
    tensor = start
    for _ in range(_MAX_CHAIN):
        users = [node for node in graph.consumers.get(tensor, []) if node.op_type != "Shape"]
        if not users or users[0].output[0] == end:
            break
        tensor = users[0].output[0]
        yield tensor
    yield end


# --- following the head axis ---------------------------------------------------------------


def _track(
    graph: _Graph,
    start: str,
    nodes: list[onnx.NodeProto],
    head_dim: int,
    heads: int,
    head_axes: dict[str, HeadAxis],
    reshapes: dict[int, tuple[onnx.NodeProto, int]],
) -> HeadAxis:
    """The head axis of each tensor from `start` (a projection's output: features last,
    head-major) through `nodes`; Reshapes that hold heads are collected."""
    current = head_axes.get(start) or HeadAxis(len(graph.shape(start)) - 1, head_dim)
    head_axes[start] = current
    for node in nodes:
        current = _through(graph, node, current, heads)
        head_axes[node.output[0]] = current
        if node.op_type == "Reshape":
            reshapes[id(node)] = (node, current.axis)
    return current


def _through(graph: _Graph, node: onnx.NodeProto, head: HeadAxis, heads: int) -> HeadAxis:
    moved = _layout_input(graph, node)
    if moved is None:
        raise _NotAttention(f"{node.op_type} mixes heads")
    before, after = graph.shape(moved), graph.shape(node.output[0])
    op = node.op_type
    if op == "Transpose":
        perm = _attribute(node, "perm", list(range(len(before)))[::-1])
        return HeadAxis(list(perm).index(head.axis), head.inner)
    if op == "Reshape":
        return _through_reshape(before, after, head, heads)
    if op in ("Unsqueeze", "Squeeze"):
        axes = _axes(graph, node, len(after) if op == "Unsqueeze" else len(before))
        if op == "Unsqueeze":
            kept = [axis for axis in range(len(after)) if axis not in axes]
            return HeadAxis(kept[head.axis], head.inner)
        if head.axis in axes:
            raise _NotAttention("the head axis is squeezed away")
        return HeadAxis(head.axis - sum(axis < head.axis for axis in axes), head.inner)
    if op == "Gather":
        axis = _attribute(node, "axis", 0) % len(before)
        if axis == head.axis:
            raise _NotAttention("a Gather picks along the head axis")
        return HeadAxis(head.axis - (axis < head.axis), head.inner)
    if len(after) != len(before):
        raise _NotAttention(f"{op} changes the rank on the head path")
    return head


def _through_reshape(
    before: tuple[int, ...], after: tuple[int, ...], head: HeadAxis, heads: int
) -> HeadAxis:
    """A row-major reshape keeps the head index's flat stride: find the axis holding it."""
    stride = head.inner * int(np.prod(before[head.axis + 1 :], dtype=np.int64))
    for axis in range(len(after)):
        below = int(np.prod(after[axis + 1 :], dtype=np.int64))
        if below <= stride < below * after[axis]:
            inner = stride // below
            if stride % below == 0 and after[axis] % (inner * heads) == 0:
                return HeadAxis(axis, inner)
            break
    raise _NotAttention(f"a Reshape {list(before)} -> {list(after)} splits the heads")


def _axes(graph: _Graph, node: onnx.NodeProto, rank: int) -> list[int]:
    if len(node.input) > 1 and node.input[1]:
        value = graph.constant(node.input[1])
        if value is None:
            value = graph.values[node.input[1]]
        return sorted(int(axis) % rank for axis in np.ravel(value))
    axes = _attribute(node, "axes", None)
    if axes is None:  # Squeeze without axes: every size-1 axis
        return [axis for axis, size in enumerate(graph.shape(node.input[0])) if size == 1]
    return sorted(int(axis) % rank for axis in axes)


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


# --- surgery ---------------------------------------------------------------------------------


class _Surgery:
    """Edits that never change a shared tensor: a rewritten constant or shape value is
    a new tensor, wired into the one input that needs it; new nodes go in before the
    node that reads them."""

    def __init__(self, graph: _Graph) -> None:
        self.graph = graph
        self.before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
        self.names = (f"heads_pruned_{index}" for index in itertools.count())

    def remove_heads(self, block: AttentionBlock, keep: list[int]) -> None:
        graph = self.graph
        for projection, chunks in block.projections:
            index = _feature_index(block, keep, chunks)
            weight = np.take(graph.weight(projection), index, axis=projection.out_axis)
            self._set_input(projection.node, projection.weight_input, weight)
            bias = graph.bias(projection)
            if bias is not None and projection.bias_node is not None:
                self._set_input(projection.bias_node, projection.bias_input, bias[index])
        out = block.output
        index = _feature_index(block, keep, 1)
        self._set_input(
            out.node, out.weight_input, np.take(graph.weight(out), index, axis=1 - out.out_axis)
        )
        for reshape, axis in block.reshapes:
            self._rescale_target(block, reshape, axis, len(keep))

    def finish(self) -> None:
        """Put new nodes in order, drop what nothing reads, forget stale shapes."""
        graph = self.graph.model.graph
        ordered: list[onnx.NodeProto] = []

        def emit(node: onnx.NodeProto) -> None:
            for earlier in self.before.pop(id(node), []):
                emit(earlier)
            ordered.append(node)

        for node in list(graph.node):
            emit(node)
        drop_dead_nodes(graph, ordered)
        drop_unused_initializers(graph)
        names = {init.name for init in graph.initializer}
        inputs = [
            value
            for value in graph.input
            if value.name in names or value.name not in self.graph.constants
        ]
        del graph.input[:]
        graph.input.extend(inputs)
        del graph.value_info[:]  # shapes on the attention paths changed

    def _rescale_target(
        self, block: AttentionBlock, reshape: onnx.NodeProto, axis: int, kept: int
    ) -> None:
        target = reshape.input[1]
        value = np.ravel(self.graph.values[target])
        for position in range(len(value)):
            follows = _follows_heads(self.graph, block, target, position)
            if position != axis and follows:
                raise UnsupportedModel(
                    f"the Reshape target {target!r} reads the head count into another dim",
                    code="head_pruning_failed",
                )
        if value[axis] <= 0 or _follows_heads(self.graph, block, target, axis):
            return  # inferred (-1), copied (0), or read from a tensor that lost heads
        self._scale(reshape, 1, axis, kept, block.heads)

    def _scale(
        self, consumer: onnx.NodeProto, index: int, position: int, kept: int, heads: int
    ) -> None:
        """Feed `consumer` a copy of its input `index` whose element `position` is scaled
        by kept/heads: a rewritten constant where the element is one, else the producer
        cloned down to where a constant factor is, else an inserted Mul and Div."""
        graph = self.graph
        name = consumer.input[index]
        value = graph.values[name]
        constant = graph.constant(name)
        if constant is not None:
            scaled = constant.copy()
            scaled.flat[position] = scaled.flat[position] * kept // heads
            self._set_input(consumer, index, scaled)
            return
        node = graph.producer.get(name)
        if node is not None and node.op_type == "Concat":
            offset = 0
            for part, part_name in enumerate(node.input):
                size = np.size(graph.values[part_name])
                if offset <= position < offset + size:
                    clone = self._clone(consumer, index, node)
                    self._scale(clone, part, position - offset, kept, heads)
                    return
                offset += size
        if node is not None and node.op_type == "Unsqueeze" and np.size(value) == 1:
            clone = self._clone(consumer, index, node)
            self._scale(clone, 0, 0, kept, heads)
            return
        if node is not None and node.op_type == "Mul" and np.size(value) == 1:
            for operand in (0, 1):
                factor = graph.constant(node.input[operand])
                if factor is not None and np.size(factor) == 1 and int(factor.flat[0]) % heads == 0:
                    clone = self._clone(consumer, index, node)
                    self._scale(clone, operand, 0, kept, heads)
                    return
        numerator, denominator = np.ones_like(value), np.ones_like(value)
        numerator.flat[position], denominator.flat[position] = kept, heads
        multiplied = self._node("Mul", [name, self._constant(numerator)])
        divided = self._node("Div", [multiplied.output[0], self._constant(denominator)])
        self.before[id(divided)].append(multiplied)
        self.before[id(consumer)].append(divided)
        consumer.input[index] = divided.output[0]

    def _clone(self, consumer: onnx.NodeProto, index: int, node: onnx.NodeProto) -> onnx.NodeProto:
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        clone.name = next(self.names)
        del clone.output[:]
        clone.output.append(clone.name)
        self.graph.values[clone.name] = self.graph.values[node.output[0]]
        self.before[id(consumer)].append(clone)
        consumer.input[index] = clone.output[0]
        return clone

    def _node(self, op: str, inputs: list[str]) -> onnx.NodeProto:
        name = next(self.names)
        return onnx.helper.make_node(op, inputs, [name], name=name)

    def _constant(self, array: np.ndarray) -> str:
        name = next(self.names)
        self.graph.model.graph.initializer.append(numpy_helper.from_array(array, name))
        self.graph.constants[name] = array
        return name

    def _set_input(self, node: onnx.NodeProto, index: int, array: np.ndarray) -> None:
        node.input[index] = self._constant(np.asarray(array, order="C"))


def _follows_heads(graph: _Graph, block: AttentionBlock, name: str, position: int) -> bool:
    """Whether element `position` of shape arithmetic `name` is computed from the size of
    a head axis: after pruning it already has the new size."""
    if graph.constant(name) is not None:
        return False
    node = graph.producer.get(name)
    if node is None:
        return False
    op = node.op_type
    if op == "Shape":
        head = block.head_axes.get(node.input[0])
        rank = len(graph.shape(node.input[0]))
        return (
            head is not None
            and (_attribute(node, "start", 0) % max(rank, 1)) + position == head.axis
        )
    if op == "Concat":
        offset = 0
        for part in node.input:
            size = int(np.size(graph.values[part]))
            if offset <= position < offset + size:
                return _follows_heads(graph, block, part, position - offset)
            offset += size
        return False
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape"):
        return _follows_heads(graph, block, node.input[0], position)
    if op == "Gather":
        picked = np.ravel(graph.values[node.input[1]])
        return _follows_heads(graph, block, node.input[0], int(picked[position]))
    if op == "Slice":
        start = int(np.ravel(graph.values[node.input[1]])[0])
        steps = graph.values[node.input[4]] if len(node.input) > 4 and node.input[4] else [1]
        size = int(np.size(graph.values[node.input[0]]))
        start = max(0, start + size if start < 0 else start)
        return _follows_heads(
            graph, block, node.input[0], start + position * int(np.ravel(steps)[0])
        )
    if op in _ARITHMETIC_OPS:
        return any(
            _follows_heads(
                graph, block, operand, 0 if np.size(graph.values[operand]) == 1 else position
            )
            for operand in node.input
        )
    raise UnsupportedModel(
        f"cannot follow the shape arithmetic of an attention Reshape through {op}",
        code="head_pruning_failed",
    )


def _validate(
    pruned: onnx.ModelProto, original: onnx.ModelProto, feeds: Mapping[str, np.ndarray]
) -> None:
    """The checker passes and ONNX Runtime runs it with the original's output shapes."""
    import onnxruntime as ort

    try:
        onnx.checker.check_model(pruned)
        outputs = ort.InferenceSession(
            pruned.SerializeToString(), providers=["CPUExecutionProvider"]
        ).run(None, dict(feeds))
        reference = ort.InferenceSession(
            original.SerializeToString(), providers=["CPUExecutionProvider"]
        ).run(None, dict(feeds))
    except Exception as exc:
        raise UnsupportedModel(
            f"the head-pruned model does not run: {short_reason(exc)}", code="head_pruning_failed"
        ) from exc
    shapes = [np.shape(output) for output in outputs]
    expected = [np.shape(output) for output in reference]
    if shapes != expected:
        raise UnsupportedModel(
            f"the head-pruned model's outputs have shapes {shapes}, not {expected}",
            code="head_pruning_failed",
        )
