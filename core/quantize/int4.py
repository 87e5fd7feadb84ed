"""INT4 weight-only: MatMul weights stored as 4-bit blocks (com.microsoft MatMulNBits).

Activations stay float; each block of `block_size` weights along the input dimension
gets its own scale (and zero point when asymmetric). Only MatMuls with a constant 2-D
weight qualify; Gemms (how exporters write nn.Linear on 2-D inputs) are rewritten as
MatMul + Add first so they qualify too. Embedding tables (a Gather from a constant 2-D
float table) become 4-bit blocks too (com.microsoft GatherBlockQuantized, which needs
opset 21: the model is upgraded for it). The small float tensors no 4-bit kernel holds
(biases, norms, position tables) are stored as INT8 and dequantized at run time unless
`other_weights` is "float32" (on a 4-layer transformer encoder, INT8 for those took the
file from 5.96x to 6.06x smaller than FP32; folding the exporter's shape arithmetic, as
the dynamic mode does, to 6.13x).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat

from core.context import RunContext
from core.errors import UnsupportedModel
from core.formats import ensure_opset, iter_nodes, load_model, model_opset, save_model
from core.quantize.common import (
    SHAPE_FOLD_CHECK_ROWS,
    fold_shape_computations,
    gemm_to_matmul,
    modernize_ir,
    size_report,
)
from core.quantize.modes import register_mode
from core.registry import StepData
from core.spec import Int4Quantize

INT4_OUTPUT_OP = "MatMulNBits"
INT4_GATHER_OP = "GatherBlockQuantized"
# GatherBlockQuantized takes int4 tensors, which opset 21 and IR version 10 introduced.
INT4_GATHER_MIN_OPSET = 21
INT4_MIN_IR_VERSION = 10
# DequantizeLinear, which the INT8 weights are read through, exists from opset 10.
DEQUANTIZE_MIN_OPSET = 10
# Float tensors smaller than this stay float32: a DequantizeLinear node, its scale and
# zero point take about 170 bytes (names mostly), what INT8 saves on 60 elements.
INT8_REST_MIN_ELEMENTS = 128
# Ops whose float tensors may be INT8 dequantized at run time: elementwise, norms and
# data movement, which read them as data, computed or constant alike (biases, norms'
# scales, position tables). Not Conv/Gemm/MatMul, which prepack constant weights (a
# dequantized one would be repacked every run), nor Gather, whose table would be
# dequantized whole to read a few rows; nor ops that need constant inputs to plan
# (Resize scales, Pad values, shapes).
INT8_REST_READERS = frozenset(
    {
        "Add",
        "BatchNormalization",
        "Concat",
        "Div",
        "Expand",
        "InstanceNormalization",
        "LayerNormalization",
        "Mul",
        "PRelu",
        "Reshape",
        "Slice",
        "Squeeze",
        "Sub",
        "Transpose",
        "Unsqueeze",
        "Where",
    }
)


@register_mode("int4")
def quantize_int4_mode(
    model_path: Path, output_path: Path, config: Int4Quantize, data: StepData, ctx: RunContext
) -> dict[str, Any]:
    model, ir_upgraded_from = modernize_ir(load_model(model_path))
    model, rewritten = gemm_to_matmul(model)
    eligible = eligible_matmuls(model)
    if not eligible:
        ops = Counter(node.op_type for node in iter_nodes(model.graph))
        raise UnsupportedModel(
            "int4 weight-only quantization found no MatMul or Gemm with a constant 2-D float "
            f"weight to quantize (the model's ops: {', '.join(sorted(ops))}); use the dynamic, "
            "static or fp16 mode",
            code="nothing_to_quantize",
        )
    # weight-only INT4 saves no time; the exporter's shape arithmetic would cost some
    model, shape_folding = fold_shape_computations(
        model,
        ctx.work_dir / "shape-folding",
        data.eval_feeds(rows=SHAPE_FOLD_CHECK_ROWS),
        data.eval_layout,
    )
    ctx.check_cancelled()
    tables = embedding_tables(model)
    opset_upgraded_from: int | None = None
    gather_note: str | None = None
    if tables:
        try:
            model, opset_upgraded_from = ensure_opset(model, INT4_GATHER_MIN_OPSET)
        except UnsupportedModel as exc:
            gather_note = f"embedding tables not 4-bit: {exc.message}"
            tables = []
        else:
            model.ir_version = max(model.ir_version, INT4_MIN_IR_VERSION)
    nbits = _import_matmul_nbits_quantizer()
    quantizer = nbits.MatMulNBitsQuantizer(
        model,
        algo_config=nbits.DefaultWeightOnlyQuantConfig(
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            # accuracy_level unset: float32 compute on dequantized blocks, the most
            # accurate choice; the file shrinks either way.
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=("MatMul", "Gather") if tables else ("MatMul",),
            # blocks along a MatMul weight's input dim and along an embedding's row
            quant_axes=(("MatMul", 0), ("Gather", 1)),
            bits=4,
        ),
    )
    # the quantizer logs a line per node at INFO: thousands on a transformer
    quantizer_log = logging.getLogger(nbits.__name__)
    level = quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        quantizer_log.setLevel(level)
    quantized = quantizer.model.model
    int8_tensors, int8_elements = 0, 0
    if config.other_weights == "int8" and model_opset(quantized) >= DEQUANTIZE_MIN_OPSET:
        int8_tensors, int8_elements = weights_to_int8(quantized.graph)
    save_model(quantized, output_path)
    ops = Counter(node.op_type for node in iter_nodes(quantized.graph))
    converted = ops[INT4_OUTPUT_OP]
    details: dict[str, Any] = {
        "mode": "int4",
        "bits": 4,
        "block_size": config.block_size,
        "symmetric": config.symmetric,
        "format": f"{INT4_OUTPUT_OP} (com.microsoft contrib op)",
        "gemm_rewritten_to_matmul": rewritten,
        "shape_folding": shape_folding,
        "ir_version_upgraded_from": ir_upgraded_from,
        "opset_upgraded_from": opset_upgraded_from,
        "eligible_matmuls": len(eligible),
        "matmuls_quantized": converted,
        "matmuls_left_float": len(eligible) - converted,
        "embedding_tables": len(tables),
        "embedding_tables_quantized": ops[INT4_GATHER_OP],
        "other_weights": config.other_weights,
        "other_weights_int8": {"tensors": int8_tensors, "elements": int8_elements},
    }
    if gather_note:
        details["embedding_note"] = gather_note
    details.update(size_report(model_path, output_path))
    return details


def embedding_tables(model: onnx.ModelProto) -> list[str]:
    """Names of the main graph's Gathers that look rows up in a constant 2-D float table
    (axis 0): embeddings, which GatherBlockQuantized holds as 4-bit blocks."""
    tables = {
        init.name
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2
    }
    return [
        node.name or node.op_type
        for node in model.graph.node
        if node.op_type == "Gather"
        and node.domain in ("", "ai.onnx")
        and node.input[0] in tables
        and next((a.i for a in node.attribute if a.name == "axis"), 0) == 0
    ]


def weights_to_int8(graph: onnx.GraphProto) -> tuple[int, int]:
    """Store the main graph's float32 initializers that only INT8_REST_READERS read (and
    that have at least INT8_REST_MIN_ELEMENTS elements) as uint8 with one scale and zero
    point each, dequantized at run time under their old name; return how many tensors
    and elements were converted.

    Asymmetric per tensor: norms' scales cluster around 1 and biases are rarely centred
    on 0, so the 256 levels span [min, max] (0 included, as DequantizeLinear needs).
    """
    readers: dict[str, set[str]] = {}
    for node in iter_nodes(graph):
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    # a graph input may override an initializer of its name; outputs must stay as named
    kept_float = {value.name for value in (*graph.output, *graph.input)}
    converted: list[onnx.TensorProto] = []
    for init in graph.initializer:
        elements = int(np.prod(init.dims, dtype=np.int64))
        ops = readers.get(init.name)
        if (
            init.data_type == onnx.TensorProto.FLOAT
            and elements >= INT8_REST_MIN_ELEMENTS
            and ops
            and ops <= INT8_REST_READERS
            and init.name not in kept_float
        ):
            converted.append(init)
    dequantize: list[onnx.NodeProto] = []
    for init in converted:
        values = numpy_helper.to_array(init).astype(np.float32)
        low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
        scale = (high - low) / 255.0 or 1.0
        zero_point = int(np.clip(round(-low / scale), 0, 255))
        quantized = np.clip(np.round(values / scale) + zero_point, 0, 255).astype(np.uint8)
        name = init.name
        graph.initializer.remove(init)
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantized, f"{name}_int8"),
                numpy_helper.from_array(np.array(scale, np.float32), f"{name}_int8_scale"),
                numpy_helper.from_array(np.array(zero_point, np.uint8), f"{name}_int8_zero_point"),
            ]
        )
        dequantize.append(
            onnx.helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_int8_scale", f"{name}_int8_zero_point"],
                [name],
                name=f"{name}_DequantizeLinear",
            )
        )
    # first in the graph: every reader comes after the tensor it reads
    nodes = [*dequantize, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(converted), sum(int(np.prod(init.dims, dtype=np.int64)) for init in converted)


def eligible_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names (or op types) of MatMuls, subgraphs included, whose B input is a constant
    float weight that MatMulNBits can hold: 2-D, or N-D with all leading dims 1."""
    eligible: list[str] = []
    _collect_eligible(model.graph, {}, eligible)
    return eligible


def _collect_eligible(
    graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto], eligible: list[str]
) -> None:
    # a subgraph sees the initializers of every graph around it, as the quantizer does
    visible = {**outer, **{init.name: init for init in graph.initializer}}
    for node in graph.node:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) > 1:
            weight = visible.get(node.input[1])
            if weight is not None and _fits_matmul_nbits(weight):
                eligible.append(node.name or node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _collect_eligible(attr.g, visible, eligible)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attr.graphs:
                    _collect_eligible(subgraph, visible, eligible)


def _fits_matmul_nbits(weight: onnx.TensorProto) -> bool:
    dims = list(weight.dims)
    return (
        weight.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        and len(dims) >= 2
        and all(d == 1 for d in dims[:-2])
        and int(np.prod(dims)) > 0
    )


def _import_matmul_nbits_quantizer() -> ModuleType:
    """onnxruntime's matmul_nbits_quantizer calls logging.basicConfig(level=INFO) when it
    is imported, which would make every library in the worker log at INFO to stderr:
    import it on first use and put the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return matmul_nbits_quantizer
