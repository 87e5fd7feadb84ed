"""Load and validate ONNX models; describe them; upgrade their opset when a step needs it.

Uploads are untrusted data: a model is parsed as a protobuf and nothing else (no pickle,
no code), and a model is accepted only when the ONNX checker passes and ONNX Runtime's CPU
provider can load it, since every metric the engine reports comes from running it.

External data (weights kept in files beside the .onnx, as models over 2 GB must) is
followed only inside the model file's own directory: every reference must be a relative
path without "..", to a regular file (no symbolic link on the way), with its byte range
inside that file. So a model file must sit in a directory of its own (core.archive
extracts an uploaded archive into a fresh one; a plain upload is inspected with
`allow_external_data=False`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import external_data_helper, version_converter
from pydantic import BaseModel

from core.errors import InvalidModel, UnsupportedModel, short_reason
from core.graph_limits import GraphLimits, check_graph_limits

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

# One protobuf message, so one .onnx file, holds less than 2 GiB; a bigger model keeps its
# weights in external data files.
SINGLE_FILE_LIMIT_BYTES = onnx.checker.MAXIMUM_PROTOBUF
# Tensors smaller than this stay inside the .onnx when a model is saved with external data.
EXTERNAL_DATA_MIN_TENSOR_BYTES = 1024
# Characters refused in external data locations and archive member names. A backslash is a
# separator on Windows only, so it makes a path mean two things; "*" and "?" appear in no
# exporter's file names, and ONNX Runtime reserves the location "*/_ORT_MEM_ADDR_/*" for
# data at a memory address, not in a file.
_UNSAFE_PATH_CHARS = frozenset("\\*?")
MAX_PATH_CHARS = 1024
_MAX_NAME_BYTES = 255

# Bytes per element of the types a tensor can keep externally; 4-bit types pack two per byte.
_ELEMENT_BYTES: dict[int, int] = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT16: 2,
    onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.UINT32: 4,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.BOOL: 1,
    onnx.TensorProto.COMPLEX64: 8,
    onnx.TensorProto.COMPLEX128: 16,
    onnx.TensorProto.FLOAT8E4M3FN: 1,
    onnx.TensorProto.FLOAT8E4M3FNUZ: 1,
    onnx.TensorProto.FLOAT8E5M2: 1,
    onnx.TensorProto.FLOAT8E5M2FNUZ: 1,
}
_PACKED_4BIT_TYPES: frozenset[int] = frozenset(
    {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1}
)


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
    # Weights kept in files beside the .onnx (uploaded in an archive); size_bytes counts
    # the .onnx file and these files together.
    external_data: bool = False
    external_data_files: list[str] = []  # relative to the .onnx file's directory, sorted
    external_data_bytes: int = 0


@dataclass(frozen=True)
class ExternalDataRef:
    """Where one tensor keeps its data outside the .onnx file, as the model declares it."""

    tensor_name: str
    location: str  # as written in the model; not yet checked
    offset: int
    length: int | None  # None: to the end of the file
    nbytes: int | None  # what the tensor's type and shape need; None when not computable


@dataclass(frozen=True)
class ExternalDataFiles:
    """The files a model's external data lives in, checked to be inside its directory."""

    files: list[str]  # relative POSIX paths, sorted
    total_bytes: int


def inspect_model(
    path: Path, *, allow_external_data: bool = True, graph_limits: GraphLimits | None = None
) -> ModelInfo:
    """Validate an ONNX file and describe it.

    External data is read only from files inside the model file's directory (see the
    module docstring) and only to check it: parameters are counted from tensor shapes, so
    gigabytes of weights are not loaded here. With `allow_external_data=False` (a plain
    .onnx upload, whose directory is not the user's) a model referencing external data is
    refused with code "external_data_unsupported" before any reference is followed.

    Raises InvalidModel with a specific message when the file is not an ONNX model, is
    truncated or corrupt, fails the ONNX checker, has external data that is refused,
    missing, outside its directory or out of range, has no graph inputs or outputs, or
    cannot be loaded by ONNX Runtime on the CPU.
    """
    raw = _read_bytes(path)
    model = _parse(raw)
    refs = external_data_refs(model)
    if refs and not allow_external_data:
        raise InvalidModel(
            f"the model stores tensor {refs[0].tensor_name!r} as external data, and external "
            "data is not supported in a single .onnx upload: upload one .zip or .tar.gz "
            "archive holding the .onnx file and its external data files (or, under 2 GB, "
            "save the model as one file: onnx.save_model(model, path, "
            "save_as_external_data=False))",
            code="external_data_unsupported",
        )
    external = verify_external_data(model, path.parent) if refs else ExternalDataFiles([], 0)
    try:
        # By path when data is external: the checker then resolves it beside the file,
        # and the model may be over the 2 GB an in-memory check can take.
        onnx.checker.check_model(str(path) if refs else model)
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

    if graph_limits is not None:
        check_graph_limits(model, len(raw) + external.total_bytes, graph_limits)

    # The checker accepts graphs ONNX Runtime cannot run (unknown ops, opsets newer than
    # the runtime, and garbage that a truncated file can parse into): load it to be sure.
    # Without graph optimizations: constant folding would compute, in this process, every
    # tensor the graph derives from constants (a few KB of ConstantOfShape nodes can ask
    # for tens of GB); loading resolves a kernel for every node all the same.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        # ONNX Runtime resolves external data relative to the model file's path.
        ort.InferenceSession(
            str(path) if refs else raw, options, providers=["CPUExecutionProvider"]
        )
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
        size_bytes=len(raw) + external.total_bytes,
        node_count=sum(op_types.values()),
        op_types=dict(sorted(op_types.items())),
        external_data=bool(refs),
        external_data_files=external.files,
        external_data_bytes=external.total_bytes,
    )


def parse_model(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file's protobuf and nothing else: external data is not read."""
    return _parse(_read_bytes(path))


def load_model(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file into a model that holds all its data in memory.

    A self-contained file is parsed and nothing else. External data is read only after
    every reference was checked to lie inside the file's own directory (InvalidModel
    otherwise, see verify_external_data), so the model returned references no file.
    """
    model = parse_model(path)
    if external_data_refs(model):
        verify_external_data(model, path.parent)
        _load_external_data(model, path.parent)
    return model


def save_model(
    model: onnx.ModelProto,
    path: Path,
    *,
    single_file_limit_bytes: int = SINGLE_FILE_LIMIT_BYTES,
) -> Path:
    """Write a model that holds its data in memory (as load_model returns it).

    Under `single_file_limit_bytes` (the 2 GiB protobuf limit) it is one self-contained
    file, as always. Bigger, its tensors go to one external data file `<name>.data`
    beside `path` (replaced if present), and the model's tensors are changed in place to
    point at it: the in-memory model then no longer holds their data.
    """
    if external_data_refs(model):
        raise ValueError("the model references external data it does not hold: use load_model")
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() < single_file_limit_bytes:
        onnx.save_model(model, str(path))
        return path
    data_path = path.with_name(f"{path.name}.data")
    data_path.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_path.name,
        size_threshold=EXTERNAL_DATA_MIN_TENSOR_BYTES,
    )
    return path


def model_files(path: Path) -> list[Path]:
    """The model file followed by the external data files it references (checked)."""
    external = verify_external_data(parse_model(path), path.parent)
    return [path, *(path.parent / name for name in external.files)]


def bytes_digest(path: Path) -> str:
    """SHA-256 of one file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_digest(model: Path) -> str:
    """SHA-256 of a model: its file's bytes and its external data files' (by their names,
    which the model refers to); the model file's own name does not count, so a copy under
    another name is the same model."""
    digest = hashlib.sha256()
    for index, path in enumerate(model_files(model)):
        if index:
            digest.update(path.name.encode())
        digest.update(bytes_digest(path).encode())
    return digest.hexdigest()


def model_size_bytes(path: Path) -> int:
    """Bytes of the model file and its external data files together."""
    return sum(file.stat().st_size for file in model_files(path))


def copy_model(source: Path, destination: Path) -> Path:
    """Copy a model file and its external data files, which keep their relative names."""
    files = model_files(source)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    for data_file in files[1:]:
        target = destination.parent / data_file.relative_to(source.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_file, target)
    return destination


def external_data_location(ref: ExternalDataRef) -> PurePosixPath:
    """Where the tensor's data lies, relative to the model file; InvalidModel (code
    "external_data_outside_upload") for an absolute path, ".." or a refused character."""
    relative = safe_relative_path(ref.location)
    if relative is None:
        raise InvalidModel(
            f"tensor {ref.tensor_name!r} keeps its data at {ref.location!r}, outside the "
            "upload: external data must be a relative path to a file in the archive, "
            "without '..'",
            code="external_data_outside_upload",
        )
    return relative


def safe_relative_path(text: str) -> PurePosixPath | None:
    """`text` as a relative POSIX path that stays below the directory it is relative to.

    None when it is empty or absolute, has a ".." part, or holds a character refused in
    file names here (control characters, backslash, "*", "?"). "." parts and repeated
    slashes are dropped, so "./a//b" is "a/b".
    """
    if not text or len(text) > MAX_PATH_CHARS or text.startswith("/"):
        return None
    if any(char in _UNSAFE_PATH_CHARS or not char.isprintable() for char in text):
        return None
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if not parts or any(
        part == ".." or len(part.encode("utf-8")) > _MAX_NAME_BYTES for part in parts
    ):
        return None
    return PurePosixPath(*parts)


def external_data_refs(model: onnx.ModelProto) -> list[ExternalDataRef]:
    """Every tensor the model keeps as external data: initializers, sparse tensors and
    tensor attributes, in subgraphs and functions too. Nothing is read or checked on disk.

    Raises InvalidModel (code "external_data_invalid") for an offset or length that is not
    a non-negative integer.
    """
    refs = []
    for tensor in _iter_model_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        try:
            offset = int(entries.get("offset") or 0)
            length = int(entries["length"]) if entries.get("length") else None
        except ValueError:
            offset = length = -1
        if offset < 0 or (length is not None and length < 0):
            raise InvalidModel(
                f"tensor {tensor.name!r} declares external data at offset "
                f"{entries.get('offset')!r} with length {entries.get('length')!r}: "
                "both must be non-negative integers",
                code="external_data_invalid",
            )
        refs.append(
            ExternalDataRef(
                tensor_name=tensor.name,
                location=entries.get("location", ""),
                offset=offset,
                length=length,
                nbytes=_tensor_nbytes(tensor),
            )
        )
    return refs


def verify_external_data(model: onnx.ModelProto, model_dir: Path) -> ExternalDataFiles:
    """Check that every external data reference names a regular file inside `model_dir`
    (no absolute path, no "..", no symbolic link on the way) and that the bytes it
    declares lie inside that file and match the tensor's type and shape. Nothing is read
    but the files' sizes.

    Raises InvalidModel with code "external_data_outside_upload", "external_data_missing",
    "external_data_out_of_range" or "external_data_invalid".
    """
    root = model_dir.resolve()
    sizes: dict[str, int] = {}
    for ref in external_data_refs(model):
        relative = external_data_location(ref)
        name = relative.as_posix()
        if name not in sizes:
            sizes[name] = _data_file_size(root, relative, ref.tensor_name)
        _check_data_range(ref, name, sizes[name])
    return ExternalDataFiles(files=sorted(sizes), total_bytes=sum(sizes.values()))


def _data_file_size(root: Path, relative: PurePosixPath, tensor_name: str) -> int:
    path = root
    for part in relative.parts:  # lstat each step: a symbolic link could lead anywhere
        path = path / part
        try:
            info = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidModel(
                f"tensor {tensor_name!r} keeps its data in {relative.as_posix()!r}, which is "
                "not in the upload: put the external data files in the archive, at the "
                "paths the model names relative to the .onnx file",
                code="external_data_missing",
            ) from None
        if stat.S_ISLNK(info.st_mode):
            raise InvalidModel(
                f"tensor {tensor_name!r} keeps its data behind a symbolic link "
                f"({relative.as_posix()!r}), which could lead outside the upload",
                code="external_data_outside_upload",
            )
    if not stat.S_ISREG(info.st_mode):
        raise InvalidModel(
            f"tensor {tensor_name!r} keeps its data in {relative.as_posix()!r}, which is not "
            "a regular file",
            code="external_data_missing",
        )
    return info.st_size


def _check_data_range(ref: ExternalDataRef, name: str, file_bytes: int) -> None:
    length = ref.length if ref.length is not None else file_bytes - ref.offset
    if ref.offset > file_bytes or ref.offset + length > file_bytes:
        raise InvalidModel(
            f"tensor {ref.tensor_name!r} reads bytes {ref.offset} to {ref.offset + length} "
            f"of {name!r}, which holds {file_bytes} bytes",
            code="external_data_out_of_range",
        )
    if ref.nbytes is not None and length != ref.nbytes:
        raise InvalidModel(
            f"tensor {ref.tensor_name!r} needs {ref.nbytes} bytes for its type and shape, "
            f"but its external data in {name!r} is {length} bytes",
            code="external_data_invalid",
        )


def _tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    if any(dim < 0 for dim in tensor.dims):
        return None
    elements = 1
    for dim in tensor.dims:
        elements *= dim
    if tensor.data_type in _PACKED_4BIT_TYPES:
        return (elements + 1) // 2
    element_bytes = _ELEMENT_BYTES.get(tensor.data_type)
    return None if element_bytes is None else elements * element_bytes


def _load_external_data(model: onnx.ModelProto, model_dir: Path) -> None:
    for tensor in _iter_model_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        try:
            external_data_helper.load_external_data_for_tensor(tensor, os.fspath(model_dir))
        except (OSError, ValueError) as exc:
            raise InvalidModel(
                f"cannot read the external data of tensor {tensor.name!r}: {short_reason(exc)}",
                code="external_data_invalid",
            ) from exc


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
    for subgraph in subgraphs(node):
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
        for subgraph in subgraphs(node):
            yield from iter_nodes(subgraph)


def drop_dead_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Set the main graph's nodes to `nodes` less those whose outputs nothing reads
    (subgraphs' reads of outer names count), repeatedly."""
    outputs = {output.name for output in graph.output}
    while True:
        read = set(outputs)
        for node in nodes:
            read.update(node.input)
            for subgraph in subgraphs(node):
                read.update(
                    inner_input for inner in iter_nodes(subgraph) for inner_input in inner.input
                )
        alive = [node for node in nodes if any(output in read for output in node.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del graph.node[:]
    graph.node.extend(nodes)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the main graph's initializers no node (subgraphs included) or output reads."""
    used = {name for node in iter_nodes(graph) for name in node.input}
    used.update(output.name for output in graph.output)
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _iter_initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for subgraph in subgraphs(node):
            yield from _iter_initializers(subgraph)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs a node carries as attributes (If branches, Loop and Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _iter_model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that can hold data: initializers, sparse initializers and tensor-valued
    attributes (Constant nodes), in the main graph, every subgraph, every function and
    the training graphs."""
    yield from _iter_graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _iter_node_tensors(node)
    for training in model.training_info:
        yield from _iter_graph_tensors(training.initialization)
        yield from _iter_graph_tensors(training.algorithm)


def _iter_graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _iter_node_tensors(node)


def _iter_node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            yield attr.t
        elif attr.type == onnx.AttributeProto.TENSORS:
            yield from attr.tensors
        elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
            yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
        elif attr.type == onnx.AttributeProto.SPARSE_TENSORS:
            for sparse in attr.sparse_tensors:
                yield from (sparse.values, sparse.indices)
        elif attr.type == onnx.AttributeProto.GRAPH:
            yield from _iter_graph_tensors(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for subgraph in attr.graphs:
                yield from _iter_graph_tensors(subgraph)


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
