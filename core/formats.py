"""Load and validate ONNX models; describe them; upgrade their opset when a step needs it.

Uploads are untrusted data: a model is parsed as a protobuf and nothing else (no pickle,
no code), external data paths are never followed, and a model is accepted only when the
ONNX checker passes and ONNX Runtime's CPU provider can load it, since every metric the
engine reports comes from running it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import version_converter
from pydantic import BaseModel

from core.errors import InvalidModel, UnsupportedModel, short_reason

# Initializer element types counted as parameters. int64 is left out on purpose: exports
# store shapes, axes and indices as int64 initializers, and those are not weights. The
# narrow integer types are kept because quantized weights (and int32 biases) live there.
_PARAMETER_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT4,
        onnx.TensorProto.UINT4,
    }
)

_DEFAULT_DOMAINS = ("", "ai.onnx")


class TensorInfo(BaseModel):
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"; "sequence"/"map"/... for non-tensors
    # str: a symbolic dim name, None: unknown. The whole shape is None when even the rank
    # is unknown (a model may leave an input's shape out entirely).
    shape: list[int | str | None] | None


class ModelInfo(BaseModel):
    format: Literal["onnx"] = "onnx"
    opset: int
    ir_version: int
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    parameters: int
    size_bytes: int
    node_count: int  # nodes in the main graph and every subgraph (If/Loop/Scan bodies)
    op_types: dict[str, int]


def inspect_model(path: Path) -> ModelInfo:
    """Validate an uploaded ONNX file and describe it.

    Raises InvalidModel with a specific message when the file is not an ONNX model, is
    truncated or corrupt, fails the ONNX checker, references external data, has no graph
    inputs or outputs, or cannot be loaded by ONNX Runtime on the CPU.
    """
    raw = _read_bytes(path)
    model = _parse(raw)
    _refuse_external_data(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise InvalidModel(f"the ONNX checker rejected the model: {short_reason(exc)}") from exc
    except Exception as exc:  # the checker raises plain errors for some malformed protos
        raise InvalidModel(
            f"the ONNX checker could not read the model: {short_reason(exc)}"
        ) from exc

    inputs = graph_inputs(model)
    outputs = [_tensor_info(v) for v in model.graph.output]
    if not inputs:
        raise InvalidModel("the model has no graph inputs: there is nothing to feed it")
    if not outputs:
        raise InvalidModel("the model has no graph outputs: there is nothing to measure")
    for tensor in inputs:
        if tensor.shape is None and tensor.dtype in ("sequence", "map", "optional"):
            raise InvalidModel(
                f"input {tensor.name!r} is a {tensor.dtype}, not a tensor; "
                "only tensor inputs can be fed from .npz data"
            )

    # The checker accepts graphs ONNX Runtime cannot run (unknown ops, opsets newer than
    # the runtime, and garbage that a truncated file can parse into): load it to be sure.
    try:
        ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidModel(
            f"ONNX Runtime {ort.__version__} cannot load the model on the CPU: {short_reason(exc)}"
        ) from exc

    op_types = Counter(node.op_type for node in iter_nodes(model.graph))
    return ModelInfo(
        opset=model_opset(model),
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=inputs,
        outputs=outputs,
        parameters=count_parameters(model),
        size_bytes=len(raw),
        node_count=sum(op_types.values()),
        op_types=dict(sorted(op_types.items())),
    )


def load_model(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file without following external data references."""
    return _parse(_read_bytes(path))


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Write a model as one self-contained file (no external data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def model_opset(model: onnx.ModelProto) -> int:
    """The opset of the default ONNX domain (0 when the model does not import it)."""
    return max(
        (entry.version for entry in model.opset_import if entry.domain in _DEFAULT_DOMAINS),
        default=0,
    )


def ensure_opset(model: onnx.ModelProto, min_opset: int) -> tuple[onnx.ModelProto, int | None]:
    """Return the model at `min_opset` or newer, and the opset it was upgraded from.

    The second item is None when no upgrade was needed. Raises UnsupportedModel
    (code "opset_upgrade_failed") when onnx.version_converter cannot convert the graph.
    """
    current = model_opset(model)
    if current >= min_opset:
        return model, None
    try:
        upgraded = version_converter.convert_version(model, min_opset)
        onnx.checker.check_model(upgraded)
    except Exception as exc:
        raise UnsupportedModel(
            f"could not upgrade the model from opset {current} to {min_opset} "
            f"(onnx.version_converter): {short_reason(exc)}",
            code="opset_upgrade_failed",
        ) from exc
    return upgraded, current


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder the graph's nodes so each runs after the nodes producing its inputs.

    Some converters append nodes at the end (onnxruntime's float16 converter adds its
    input casts last); ONNX Runtime tolerates that, but the ONNX checker, and so every
    other tool, does not. Names a subgraph reads from the outer scope count as inputs.
    Raises UnsupportedModel when the graph has a cycle or an input nothing produces.
    """
    available = {""} | {v.name for v in graph.input} | {i.name for i in graph.initializer}
    pending = [(node, _node_reads(node)) for node in graph.node]
    produced_by_nodes = {name for node in graph.node for name in node.output}
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [
            (node, reads)
            for node, reads in pending
            if all(name in available or name not in produced_by_nodes for name in reads)
        ]
        if not ready:
            stuck = ", ".join(repr(node.name or node.op_type) for node, _ in pending[:3])
            raise UnsupportedModel(f"the graph has a cycle or dangling inputs at {stuck}")
        ready_ids = {id(node) for node, _ in ready}
        pending = [(node, reads) for node, reads in pending if id(node) not in ready_ids]
        for node, _ in ready:
            ordered.append(node)
            available.update(node.output)
    del graph.node[:]
    graph.node.extend(ordered)


def _node_reads(node: onnx.NodeProto) -> set[str]:
    reads = set(node.input)
    for subgraph in _subgraphs(node):
        for inner in iter_nodes(subgraph):
            reads.update(inner.input)
    return reads


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """The inputs a caller must feed: graph inputs that are not initializers.

    Before IR version 4, initializers were also listed as graph inputs (as overridable
    defaults); those are not data inputs.
    """
    initializer_names = {init.name for init in model.graph.initializer}
    return [_tensor_info(v) for v in model.graph.input if v.name not in initializer_names]


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of weight-like initializers, including those inside subgraphs."""
    return sum(
        int(np.prod(init.dims, dtype=np.int64))
        for init in _iter_initializers(model.graph)
        if init.data_type in _PARAMETER_TYPES
    )


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a graph, descending into subgraph attributes (If/Loop/Scan)."""
    for node in graph.node:
        yield node
        for subgraph in _subgraphs(node):
            yield from iter_nodes(subgraph)


def _iter_initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for subgraph in _subgraphs(node):
            yield from _iter_initializers(subgraph)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor-valued attributes (Constant nodes), subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
        for subgraph in _subgraphs(node):
            yield from _iter_tensors(subgraph)


def _refuse_external_data(model: onnx.ModelProto) -> None:
    for tensor in _iter_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise InvalidModel(
                f"the model stores tensor {tensor.name!r} as external data; "
                "external data is not supported in uploads yet: save the model as one file "
                "(onnx.save_model(model, path, save_as_external_data=False))",
                code="external_data_unsupported",
            )


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidModel(f"cannot read the model file: {exc.strerror}") from exc
    if not raw:
        raise InvalidModel("the model file is empty")
    return raw


def _parse(raw: bytes) -> onnx.ModelProto:
    sniffed = _sniff_foreign_format(raw)
    if sniffed is not None:
        raise InvalidModel(f"not an ONNX model: the file looks like {sniffed}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidModel(
            f"not an ONNX model, or a truncated one: the protobuf does not parse ({exc})"
        ) from exc
    # Protobuf parsing is permissive: random or cut-off bytes can decode into a message
    # with unknown fields only. A real model has a graph and an opset import.
    if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
        raise InvalidModel(
            "not an ONNX model, or a truncated one: no graph, IR version or opset found"
        )
    return model


def _sniff_foreign_format(raw: bytes) -> str | None:
    """Name formats people upload by mistake, so the message says what to do instead."""
    if raw[:1] == b"\x80" and raw[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (e.g. torch.save); export the model to ONNX instead"
    if raw[:4] == b"PK\x03\x04":
        return "a zip archive (e.g. a PyTorch .pt checkpoint); export the model to ONNX instead"
    if raw[:6] == b"\x93NUMPY":
        return "a NumPy .npy array, not a model"
    if raw[:8] == b"\x89HDF\r\n\x1a\n":
        return "an HDF5 file (e.g. a Keras .h5 model); export the model to ONNX instead"
    return None


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    kind = value.type.WhichOneof("value")
    if kind not in ("tensor_type", "sparse_tensor_type"):
        names = {"sequence_type": "sequence", "map_type": "map", "optional_type": "optional"}
        return TensorInfo(name=value.name, dtype=names.get(str(kind), "unknown"), shape=None)
    tensor_type = value.type.tensor_type if kind == "tensor_type" else value.type.sparse_tensor_type
    return TensorInfo(
        name=value.name,
        dtype=_dtype_name(tensor_type.elem_type),
        shape=_shape(tensor_type) if tensor_type.HasField("shape") else None,
    )


def _shape(
    tensor_type: onnx.TypeProto.Tensor | onnx.TypeProto.SparseTensor,
) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def _dtype_name(elem_type: int) -> str:
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type).name)
    except Exception:  # undefined or exotic element types (e.g. float8 without ml_dtypes)
        return onnx.TensorProto.DataType.Name(elem_type).lower()
