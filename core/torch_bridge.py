"""ONNX <-> PyTorch for the steps that train (QAT; pruning and distillation later).

`onnx_to_torch` rebuilds an uploaded ONNX graph as a `torch.fx.GraphModule` with
onnx2torch: Conv, Gemm (and, after our rewrite, MatMul by a constant matrix) become
`nn.Conv*`/`nn.Linear` with trainable parameters, so any task's model can be fine-tuned,
pruned or distilled. `torch_to_onnx` exports a module back under the original model's
input and output names, keeping its batch axis dynamic when the original's was.

`write_back_weights` is the other way back, for modules whose structure is still the
converted graph's (only weight values changed: masks, fine-tuning): it writes the
module's tensors into the ONNX model it was converted from, which keeps that graph as it
is (dynamic batch, names, opset). `onnx_to_torch` records which initializer each
parameter/buffer came from (`WeightSource`, in the GraphModule's meta) for it. It is the
only way back for graphs torch.export cannot capture, e.g. Reshapes whose targets are
computed at run time (every transformer exported with a dynamic batch).

Uploads are data, never code: the bridge parses ONNX protobufs only and never calls
`torch.load` or `torch.export.load` (both can fall back to pickle).

Export uses torch.onnx's dynamo exporter (`torch.export` + onnxscript's torchlib). It is
the maintained exporter (the TorchScript one is deprecated), it captures onnx2torch's
GraphModules as they are, and it is the only one that translates the quantize/dequantize
ops of PT2E quantization (`quantized_decomposed.*`) into QuantizeLinear/DequantizeLinear.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper, version_converter
from onnx2torch import convert
from onnx2torch.node_converters import get_converter
from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
from onnx2torch.node_converters.matmul import OnnxMatMul
from onnx2torch.node_converters.reshape import OnnxReshape
from onnx2torch.onnx_graph import OnnxGraph, OnnxNode
from torch import fx, nn

from core import torch_converters  # noqa: F401  (registers converters onnx2torch lacks)
from core.errors import StepFailed, UnsupportedModel, short_reason
from core.formats import (
    TensorInfo,
    drop_unused_initializers,
    load_model,
    model_opset,
    save_model,
)

# onnx2torch (last release 2024) has converters for opsets up to 17; newer exports
# (torch 2.14 writes opset 20) are converted down to it first.
ONNX2TORCH_MAX_OPSET = 17
# The name of a dynamic batch dim when the original's is unnamed or not an identifier.
DEFAULT_BATCH_DIM = "batch"
_DEFAULT_DOMAINS = ("", "ai.onnx")
# GraphModule.meta key of the module's {parameter/buffer path: WeightSource} map (meta,
# unlike plain attributes, survives GraphModule's deepcopy).
WEIGHT_SOURCES = "squeeze_weight_sources"
# The node inputs onnx2torch turns into tensors of the module it builds for a node, by op
# type, as {tensor attribute: input index}. Ops not listed keep their initializers as
# buffers of `module.initializers`.
_CONVERTED_INPUTS: dict[str, dict[str, int]] = {
    "Conv": {"weight": 1, "bias": 2},
    "ConvTranspose": {"weight": 1, "bias": 2},
    "Gemm": {"weight": 1, "bias": 2},
    "BatchNormalization": {"weight": 1, "bias": 2, "running_mean": 3, "running_var": 4},
    "InstanceNormalization": {"weight": 1, "bias": 2},
    "LayerNormalization": {"weight": 1, "bias": 2},
}


@dataclass(frozen=True)
class WeightSource:
    """The initializer a module tensor was converted from: tensor = initializer (its
    transpose when `transposed`) * `scale` (a Gemm's alpha or beta)."""

    initializer: str
    transposed: bool = False
    scale: float = 1.0


class WriteBackRefused(Exception):
    """The module's tensors no longer fit the graph it was converted from (channels were
    removed, a parameter was added) or were never mapped to it: export it instead."""


def onnx_to_torch(model_path: Path, work_dir: Path) -> fx.GraphModule:
    """The ONNX model at `model_path` as a torch GraphModule in eval mode, on the CPU.

    The module takes the graph's inputs positionally, in the order of the ONNX graph
    inputs, and returns its single output or a tuple of outputs in the graph's order.
    Constant nodes are turned into initializers and the opset is converted to one
    onnx2torch supports before conversion; MatMuls by a constant 2-D matrix become
    `nn.Linear` (their weights become trainable). Files are written under `work_dir`.

    Raises UnsupportedModel with code "unsupported_op", naming the op types (or the
    node) onnx2torch cannot convert, or code "conversion_failed" for other failures.
    """
    model = _initializer_identities_as_initializers(
        _constants_as_initializers(load_model(model_path))
    )
    _drop_needless_allowzero(model)
    _flattening_reshapes_as_flatten(model)
    model = _convertible_opset(model)
    work_dir.mkdir(parents=True, exist_ok=True)
    # onnx2torch runs shape inference on a path next to the file (no 2 GB protobuf limit)
    source = save_model(model, work_dir / "onnx2torch_source.onnx")
    try:
        module = convert(source, attach_onnx_mapping=True)
    except Exception as exc:
        raise _conversion_error(model, exc) from exc
    sources = _weight_sources(model, module)
    _matmul_by_constant_as_linear(module, sources)
    _bias_adds_into_linear(module, sources)
    _constant_reshapes_as_python(module, sources)
    module.meta[WEIGHT_SOURCES] = sources
    return module.eval()


def write_back_weights(module: nn.Module, source_onnx_path: Path, path: Path) -> Path:
    """The ONNX model at `source_onnx_path` (the one `onnx_to_torch` converted into
    `module`) with the module's current parameters and buffers as its weights, saved to
    `path` and checked with the ONNX checker.

    Only the weights change: the graph, its names, opset and dynamic dims stay the
    source's. A weight the source holds in a Constant node, or behind an Identity, becomes
    an initializer of the same name when its value changed. Raises WriteBackRefused when
    a parameter has no source initializer, a mapped tensor is gone or changed shape, or
    tensors converted from one shared initializer now differ.
    """
    sources = getattr(module, "meta", {}).get(WEIGHT_SOURCES)
    if not sources:  # empty: the conversion could not be mapped
        raise WriteBackRefused("the module was not converted from ONNX by onnx_to_torch")
    unmapped = [name for name, _ in module.named_parameters() if name not in sources]
    if unmapped:
        raise WriteBackRefused(f"parameters without a source initializer: {unmapped[:5]}")
    model = load_model(source_onnx_path)
    stored = _stored_tensors(model)
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    for initializer, arrays in _weights_by_initializer(tensors, sources).items():
        original = stored.get(initializer)
        if original is None:
            raise WriteBackRefused(f"the source model has no initializer {initializer!r}")
        array = _fitted(arrays, numpy_helper.to_array(original), initializer)
        if array is not None:
            _set_initializer(model, initializer, array)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, path)
    onnx.checker.check_model(str(path))
    return path


def torch_to_onnx(
    module: nn.Module,
    example_inputs: Mapping[str, np.ndarray],
    path: Path,
    *,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    opset: int,
) -> Path:
    """Export `module` as it computes now (train/eval mode is the caller's) to `path`.

    `inputs`/`outputs` describe the original model (ModelInfo.inputs/.outputs): the
    export takes their names, and dim 0 stays dynamic when the original's inputs left it
    free (see `capture`). `example_inputs` are keyed by input name. The module is moved
    to the CPU first. Writes one self-contained file (no external data) at `opset` and
    checks it with the ONNX checker. Raises UnsupportedModel when torch.export cannot
    capture the module, StepFailed when the capture cannot be written as ONNX.
    """
    module.to("cpu")
    program = capture(module, example_inputs, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(
            program,
            (),
            str(path),
            input_names=[tensor.name for tensor in inputs],
            output_names=[tensor.name for tensor in outputs],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        _name_batch_dim(path, _dynamic_batch_dim(inputs))
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise StepFailed(f"could not export the model to ONNX: {short_reason(exc)}") from exc
    return path


def capture(
    module: nn.Module,
    example_inputs: Mapping[str, np.ndarray],
    inputs: Sequence[TensorInfo],
    device: str = "cpu",
) -> torch.export.ExportedProgram:
    """`torch.export` of `module`, fed `example_inputs` (keyed by input name) in the
    order of `inputs`, as tensors on `device`.

    Dim 0 of the inputs is one shared dynamic "batch" dim when every input with a known
    rank leaves it free (a symbolic or unknown dim in the original), and fixed when
    any input pins it. Raises UnsupportedModel (code "conversion_failed") naming the
    node where torch.export stopped, e.g. an op that reads tensor values as shapes.
    """
    batch_dim = _dynamic_batch_dim(inputs)
    rows = 2 if batch_dim is not None else None  # torch.export specializes a batch of 1
    args = tuple(_example_tensor(example_inputs[tensor.name], rows).to(device) for tensor in inputs)
    dynamic_shapes = (
        tuple({0: batch_dim} if tensor.shape else None for tensor in inputs)
        if batch_dim is not None
        else None
    )
    try:
        return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        raise UnsupportedModel(
            f"torch.export cannot capture the model{_blamed_node(module, str(exc))}: "
            f"{short_reason(exc)}",
            code="conversion_failed",
        ) from exc


def missing_converters(model: onnx.ModelProto) -> dict[str, int]:
    """Op types of the main graph that onnx2torch has no converter for at the model's
    opset, with how many nodes use each (empty when every node can be converted)."""
    versions = {entry.domain or "": entry.version for entry in model.opset_import}
    missing: Counter[str] = Counter()
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        try:
            get_converter(
                operation_type=node.op_type, version=versions.get(domain, 0), domain=domain
            )
        except NotImplementedError:
            missing[node.op_type if not domain else f"{domain}.{node.op_type}"] += 1
    return dict(sorted(missing.items()))


def _convertible_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model, or the model converted to ONNX2TORCH_MAX_OPSET, whichever onnx2torch
    has a converter for every node of; UnsupportedModel naming the ops when neither.

    onnx2torch picks converters by each op's version at the model's opset, so a newer
    opset converts as it is unless one of its ops changed after 17 (Reshape in 19,
    ReduceMean in 18, ...); only then is the model converted down (or an old one up).
    """
    missing = missing_converters(model)
    if not missing:
        return model
    opset = model_opset(model)
    tried = ""
    if opset != ONNX2TORCH_MAX_OPSET:
        try:
            converted = version_converter.convert_version(model, ONNX2TORCH_MAX_OPSET)
        except Exception as exc:
            tried = (
                f"; converting the model to opset {ONNX2TORCH_MAX_OPSET} failed: "
                f"{short_reason(exc, 200)}"
            )
        else:
            if not missing_converters(converted):
                return converted
            tried = f", nor at opset {ONNX2TORCH_MAX_OPSET}"
    listed = ", ".join(f"{op} ({count} nodes)" for op, count in missing.items())
    raise UnsupportedModel(
        f"onnx2torch {_onnx2torch_version()} has no converter for op type(s) {listed} at "
        f"opset {opset}{tried}: this model cannot be trained in PyTorch",
        code="unsupported_op",
    )


def _initializer_identities_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Identity nodes reading an initializer, written out as initializers of their own.

    The TorchScript exporter deduplicates equal weights (e.g. zero Conv biases) through
    Identity nodes; onnx2torch reads Conv/BatchNorm parameters from initializers only and
    fails on a Conv whose bias comes from an Identity, or builds a functional BatchNorm
    that torch-pruning cannot see.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    graph_outputs = {output.name for output in model.graph.output}
    aliases = [
        node
        for node in model.graph.node
        if node.op_type == "Identity"
        and node.domain in _DEFAULT_DOMAINS
        and node.input[0] in initializers
        and node.output[0] not in graph_outputs
    ]
    return _nodes_as_initializers(model, [(node, initializers[node.input[0]]) for node in aliases])


def _constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes of the main graph as initializers.

    onnx2torch reads a Conv's weights (and a Gemm's, to build nn.Linear) from the
    graph's initializers only; exporters sometimes write them as Constant nodes instead.
    """
    constants = [
        node
        for node in model.graph.node
        if node.op_type == "Constant"
        and node.domain in _DEFAULT_DOMAINS
        and len(node.attribute) == 1
        and node.attribute[0].name == "value"
    ]
    graph_outputs = {output.name for output in model.graph.output}
    constants = [node for node in constants if node.output[0] not in graph_outputs]
    return _nodes_as_initializers(model, [(node, node.attribute[0].t) for node in constants])


def _nodes_as_initializers(
    model: onnx.ModelProto, replacements: list[tuple[onnx.NodeProto, onnx.TensorProto]]
) -> onnx.ModelProto:
    """A copy of the model without the given nodes, each node's output now an initializer
    holding the paired tensor."""
    if not replacements:
        return model
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    removed = {id(node) for node, _ in replacements}
    kept = [node for node in model.graph.node if id(node) not in removed]
    for node, source in replacements:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(source)
        tensor.name = node.output[0]
        rewritten.graph.initializer.append(tensor)
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(kept)
    return rewritten


def _drop_needless_allowzero(model: onnx.ModelProto) -> None:
    """Clear Reshape's allowzero=1 where the shape is a constant without zeros.

    torch 2.14's exporter writes allowzero=1 on every Reshape and onnx2torch refuses
    it; with no 0 in the target shape the attribute changes nothing.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.domain not in _DEFAULT_DOMAINS:
            continue
        shape = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if shape is None or np.any(numpy_helper.to_array(shape) == 0):
            continue
        kept = [a for a in node.attribute if not (a.name == "allowzero" and a.i == 1)]
        if len(kept) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(kept)


def _flattening_reshapes_as_flatten(model: onnx.ModelProto) -> int:
    """Rewrite, in place, main-graph Reshapes that flatten all but the first dim to a
    constant width (`Reshape(x, [-1, C*H*W])`, as torch.export writes nn.Flatten) as
    `Flatten(x, axis=1)`; return how many.

    The two compute the same, but the constant width is the channel count times the
    spatial size: once channel pruning removes channels it is wrong ("mat1 and mat2
    shapes cannot be multiplied (1x512 and 256x8)"), while Flatten follows them.
    Shapes come from ONNX shape inference; a Reshape whose input shape is not fully
    known beyond the first dim is left as it is.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return 0
    shapes: dict[str, list[int | None]] = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
            ]
    initializers = {init.name: init for init in model.graph.initializer}
    rewritten = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type != "Reshape" or node.domain not in _DEFAULT_DOMAINS:
            continue
        shape_tensor = initializers.get(node.input[1]) if len(node.input) > 1 else None
        data_shape = shapes.get(node.input[0])
        if shape_tensor is None or data_shape is None or len(data_shape) < 3:
            continue
        target = [int(v) for v in numpy_helper.to_array(shape_tensor).reshape(-1)]
        rest = data_shape[1:]
        if len(target) != 2 or any(d is None for d in rest):
            continue
        width = int(np.prod([d for d in rest if d is not None]))
        batch = data_shape[0]
        first_ok = target[0] in (-1, 0) or (batch is not None and target[0] == batch)
        if not first_ok or target[1] != width:
            continue
        model.graph.node[index].CopyFrom(
            onnx.helper.make_node(
                "Flatten", [node.input[0]], list(node.output), name=node.name, axis=1
            )
        )
        rewritten += 1
    if rewritten:
        drop_unused_initializers(model.graph)
    return rewritten


def _conversion_error(model: onnx.ModelProto, exc: Exception) -> UnsupportedModel:
    """Name the first node onnx2torch fails on (converting node by node, on failure only)."""
    versions = {entry.domain or "": entry.version for entry in model.opset_import}
    graph = OnnxGraph(model.graph)
    for node in graph.nodes.values():
        try:
            converter = get_converter(
                operation_type=node.operation_type,
                version=versions.get(node.domain, 0),
                domain=node.domain,
            )
            converter(node, graph)
        except Exception as node_exc:
            code = "unsupported_op" if isinstance(node_exc, NotImplementedError) else None
            return UnsupportedModel(
                f"onnx2torch cannot convert node {node.name or node.unique_name!r} "
                f"({node.operation_type}): {short_reason(node_exc)}",
                code=code or "conversion_failed",
            )
    return UnsupportedModel(
        f"onnx2torch could not convert the model: {short_reason(exc)}", code="conversion_failed"
    )


def _weight_sources(model: onnx.ModelProto, module: fx.GraphModule) -> dict[str, WeightSource]:
    """Which initializer of `model` each tensor of onnx2torch's conversion of it holds,
    from the ONNX mapping onnx2torch attached to each node's module (removed here).

    onnx2torch keeps each initializer a node reads as an input as a buffer of its own,
    `initializers.onnx_initializer_<k>`, k counting those reads in node order; the
    inputs a converter turns into the node module's own tensors (_CONVERTED_INPUTS) are
    not among the mapped inputs. Empty (nothing can be written back) when the buffers
    found are not the ones expected.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    activations = {value.name for value in model.graph.input} - initializers.keys()
    activations |= {output for node in model.graph.node for output in node.output}
    nodes = OnnxGraph(model.graph).nodes
    mappings = {
        name: module.get_submodule(name).__dict__.pop("onnx_mapping", None) for name in nodes
    }
    if any(mapping is None for mapping in mappings.values()):
        return {}
    sources: dict[str, WeightSource] = {}
    reads = 0
    for name, node in nodes.items():
        for value in mappings[name].inputs:
            if value in initializers and value not in activations:
                sources[f"initializers.onnx_initializer_{reads}"] = WeightSource(value)
                reads += 1
        sources |= _converted_sources(name, node, module.get_submodule(name))
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    expected = {
        path: tuple(reversed(dims) if source.transposed else dims)
        for path, source in sources.items()
        for dims in [tuple(initializers[source.initializer].dims)]
    }
    found = {path: tuple(tensors[path].shape) for path in sources if path in tensors}
    buffers = {path for path in tensors if path.startswith("initializers.")}
    if found != expected or not buffers <= sources.keys():
        return {}
    return sources


def _converted_sources(name: str, node: OnnxNode, converted: nn.Module) -> dict[str, WeightSource]:
    """The tensors of the module onnx2torch built for `node` (named `name`) that hold
    one of the node's inputs: a Conv's weight, a Gemm's (as nn.Linear: transposed
    unless transB, times alpha), a BatchNorm's running mean, ..."""
    attributes = node.attributes
    gemm = node.operation_type == "Gemm"
    tensors = [*converted.named_parameters(), *converted.named_buffers()]
    sources = {}
    for attribute, index in _CONVERTED_INPUTS.get(node.operation_type, {}).items():
        if index >= len(node.input_values) or not node.input_values[index]:
            continue
        paths = [path for path, _ in tensors if path.rpartition(".")[2] == attribute]
        scale = float(attributes.get("alpha" if attribute == "weight" else "beta", 1.0))
        if len(paths) != 1 or (gemm and scale == 0.0):
            continue
        sources[f"{name}.{paths[0]}"] = WeightSource(
            node.input_values[index],
            transposed=gemm and attribute == "weight" and not attributes.get("transB", 0),
            scale=scale if gemm else 1.0,
        )
    return sources


def _weights_by_initializer(
    tensors: Mapping[str, torch.Tensor], sources: Mapping[str, WeightSource]
) -> dict[str, list[np.ndarray]]:
    """The module's tensors as the initializers they came from (several when a graph
    reads one initializer in several places), in the initializers' layout."""
    grouped: dict[str, list[np.ndarray]] = defaultdict(list)
    for path, source in sources.items():
        tensor = tensors.get(path)
        if tensor is None:
            raise WriteBackRefused(f"the module no longer has {path!r} ({source.initializer})")
        array = tensor.detach().cpu().numpy()
        if source.transposed:
            array = array.T
        if source.scale != 1.0:
            array = array / source.scale
        grouped[source.initializer].append(array)
    return grouped


def _fitted(arrays: list[np.ndarray], original: np.ndarray, name: str) -> np.ndarray | None:
    """The value to store in initializer `name`, in its dtype; None when it is the
    stored one already (left untouched)."""
    value = arrays[0]
    if any(not np.array_equal(value, other) for other in arrays[1:]):
        raise WriteBackRefused(f"the tensors converted from the shared initializer {name!r} differ")
    if value.shape != original.shape:
        raise WriteBackRefused(
            f"{name!r} is {list(value.shape)} in the module, {list(original.shape)} in the "
            "source model: its structure changed"
        )
    value = value.astype(original.dtype, copy=False)
    return None if np.array_equal(value, original) else value


def _stored_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The main graph's constant tensors by name: initializers, Constant nodes' values
    and Identity nodes reading either (`onnx_to_torch` converts them as initializers)."""
    stored = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:  # topologically sorted: an Identity follows its input
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            stored[node.output[0]] = node.attribute[0].t
        elif node.op_type == "Identity" and node.input[0] in stored:
            stored[node.output[0]] = stored[node.input[0]]
    return stored


def _set_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    """Store `array` as initializer `name`, replacing the Constant or Identity node that
    produced `name` when it was not an initializer."""
    # (np.asarray keeps a scalar a scalar; np.ascontiguousarray would make it shape (1,))
    tensor = numpy_helper.from_array(np.asarray(array, order="C"), name)
    for initializer in model.graph.initializer:
        if initializer.name == name:
            initializer.CopyFrom(tensor)
            return
    producer = next(node for node in model.graph.node if name in node.output)
    model.graph.node.remove(producer)
    model.graph.initializer.append(tensor)


def _matmul_by_constant_as_linear(module: fx.GraphModule, sources: dict[str, WeightSource]) -> None:
    """Replace `MatMul(x, W)` with a constant 2-D float W (used by nothing else) by
    `nn.Linear` holding W.T as its weight (its source in `sources` follows).

    onnx2torch keeps such weights as buffers of a plain matmul module: they would not
    train, and PT2E quantizers treat them as activations (per-tensor uint8) instead of
    weights (per-channel int8). Exporters write Linear layers on 3-D inputs this way.
    """
    changed = False
    for node in list(module.graph.nodes):
        if node.op != "call_module" or not isinstance(
            module.get_submodule(node.target), OnnxMatMul
        ):
            continue
        if len(node.args) != 2 or node.kwargs:
            continue
        weight_node = node.args[1]
        if not isinstance(weight_node, fx.Node) or weight_node.op != "get_attr":
            continue
        if len(weight_node.users) != 1:
            continue
        weight = _attribute(module, weight_node.target)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        if not weight.is_floating_point():
            continue
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
        with torch.no_grad():
            linear.weight.copy_(weight.T)
        module.add_submodule(node.target, linear)
        node.args = (node.args[0],)
        module.graph.erase_node(weight_node)
        _delete_attribute(module, weight_node.target)
        source = sources.pop(str(weight_node.target), None)
        if source is not None:
            sources[f"{node.target}.weight"] = WeightSource(
                source.initializer, not source.transposed, source.scale
            )
        changed = True
    if changed:
        module.graph.lint()
        module.recompile()


def _bias_adds_into_linear(module: fx.GraphModule, sources: dict[str, WeightSource]) -> None:
    """Fold `Add(Linear(x), b)`, with b a constant vector of the Linear's out features
    read by nothing else, into the Linear's bias (its source in `sources` follows).

    Exporters write a Linear on 3-D inputs as MatMul + Add, which the conversion above
    turns into a bias-free `nn.Linear` and an add of a buffer. Left apart, channel
    pruning shrinks the Linear and not the buffer ("The size of tensor a (16) must match
    the size of tensor b (8)"), and the bias would not train.
    """
    changed = False
    erased: set[fx.Node] = set()
    for node in list(module.graph.nodes):
        if node.op != "call_module" or node in erased:
            continue
        linear = module.get_submodule(node.target)
        if not isinstance(linear, nn.Linear) or linear.bias is not None or len(node.users) != 1:
            continue
        (add,) = node.users
        if add.op != "call_module" or add.kwargs or len(add.args) != 2:
            continue
        adder = module.get_submodule(add.target)
        if not isinstance(adder, OnnxBinaryMathOperation) or adder.broadcast is not None:
            continue
        if adder.math_op_function is not torch.add:
            continue
        bias_node = add.args[0] if add.args[1] is node else add.args[1]
        if not isinstance(bias_node, fx.Node) or bias_node.op != "get_attr":
            continue
        if len(bias_node.users) != 1:
            continue
        bias = _attribute(module, bias_node.target)
        if (
            not isinstance(bias, torch.Tensor)
            or not bias.is_floating_point()
            or tuple(bias.shape) != (linear.out_features,)
        ):
            continue
        linear.bias = nn.Parameter(bias.detach().clone().to(linear.weight.dtype))
        add.replace_all_uses_with(node)
        erased.add(add)
        module.graph.erase_node(add)
        module.graph.erase_node(bias_node)
        module.delete_submodule(add.target)
        _delete_attribute(module, bias_node.target)
        source = sources.pop(str(bias_node.target), None)
        if source is not None:
            sources[f"{node.target}.bias"] = source
        changed = True
    if changed:
        module.graph.lint()
        module.recompile()


def _constant_reshapes_as_python(module: fx.GraphModule, sources: dict[str, WeightSource]) -> None:
    """Replace onnx2torch's Reshape by a constant shape tensor with `reshape_to` given
    the shape as Python ints (the shape buffer leaves `sources`).

    onnx2torch reads the shape tensor's values at run time, which torch.export (the
    capture behind PT2E quantization and the ONNX export) cannot trace: it stops at a
    "data-dependent" branch. Every exported Flatten/view ends up as such a Reshape.
    """
    changed = False
    for node in list(module.graph.nodes):
        if node.op != "call_module" or not isinstance(
            module.get_submodule(node.target), OnnxReshape
        ):
            continue
        shape_node = node.args[1] if len(node.args) == 2 and not node.kwargs else None
        if not isinstance(shape_node, fx.Node) or shape_node.op != "get_attr":
            continue
        shape = _attribute(module, shape_node.target)
        if not isinstance(shape, torch.Tensor) or shape.dim() != 1:
            continue
        with module.graph.inserting_after(node):
            replacement = module.graph.call_function(
                reshape_to, (node.args[0], tuple(int(size) for size in shape.tolist()))
            )
        node.replace_all_uses_with(replacement)
        module.graph.erase_node(node)
        module.delete_submodule(node.target)
        if not shape_node.users:
            module.graph.erase_node(shape_node)
            _delete_attribute(module, shape_node.target)
            sources.pop(str(shape_node.target), None)
        changed = True
    if changed:
        module.graph.lint()
        module.recompile()


def reshape_to(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """ONNX Reshape (allowzero=0) to a constant shape: 0 keeps the input's size there."""
    return tensor.reshape([tensor.shape[i] if size == 0 else size for i, size in enumerate(shape)])


def _name_batch_dim(path: Path, batch_dim: Any) -> None:
    """Give the exported dynamic batch dim the original's name (torch.export calls it
    "s0", "s6", ...), in the graph's inputs, outputs and value infos."""
    if batch_dim is None:
        return
    model = load_model(path)
    symbols = {
        value.type.tensor_type.shape.dim[0].dim_param
        for value in model.graph.input
        if value.type.tensor_type.shape.dim
    } - {""}
    if not symbols:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = batch_dim.__name__
    save_model(model, path)


def _blamed_node(module: nn.Module, message: str) -> str:
    """The node a torch.export error names, as " at node 'X' (ModuleType)", else ""."""
    found = re.search(r"While executing %\S+ : .*?call_module\[target=([^\]]+)\]", message)
    if found is None:
        return ""
    target = found.group(1)
    try:
        kind = type(module.get_submodule(target)).__name__
    except AttributeError:
        return f" at node {target!r}"
    return f" at node {target!r} ({kind})"


def _attribute(module: nn.Module, target: Any) -> Any:
    owner_path, _, name = str(target).rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    return getattr(owner, name, None)


def _delete_attribute(module: nn.Module, target: Any) -> None:
    owner_path, _, name = str(target).rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    if hasattr(owner, name):
        delattr(owner, name)


def _dynamic_batch_dim(inputs: Sequence[TensorInfo]) -> Any:
    """One shared dynamic batch dim when the inputs' dim 0 is free, None when pinned."""
    free = [
        tensor.shape[0]
        for tensor in inputs
        if tensor.shape and not (isinstance(tensor.shape[0], int) and tensor.shape[0] > 0)
    ]
    if not free or len(free) != len([tensor for tensor in inputs if tensor.shape]):
        return None
    named = [dim for dim in free if isinstance(dim, str) and dim.isidentifier()]
    return torch.export.Dim(named[0] if named else DEFAULT_BATCH_DIM)


def _example_tensor(array: np.ndarray, rows: int | None) -> torch.Tensor:
    if rows is not None and array.ndim and len(array) < rows:
        array = array[np.arange(rows) % len(array)]
    return torch.from_numpy(np.asarray(array, order="C"))


def _onnx2torch_version() -> str:
    try:
        return importlib.metadata.version("onnx2torch")
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"
