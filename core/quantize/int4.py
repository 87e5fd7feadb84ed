"""INT4 weight-only: MatMul weights stored as 4-bit blocks (com.microsoft MatMulNBits).

Activations stay float; each block of `block_size` weights along the input dimension
gets its own scale (and zero point when asymmetric). Only MatMuls with a constant 2-D
weight qualify; Gemms (how exporters write nn.Linear on 2-D inputs) are rewritten as
MatMul + Add first so they qualify too.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat

from core.context import RunContext
from core.errors import UnsupportedModel
from core.formats import iter_nodes, load_model, save_model
from core.quantize.common import gemm_to_matmul, modernize_ir, size_report
from core.quantize.modes import register_mode
from core.registry import StepData
from core.spec import Int4Quantize

INT4_OUTPUT_OP = "MatMulNBits"


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
    ctx.check_cancelled()
    nbits = _import_matmul_nbits_quantizer()
    quantizer = nbits.MatMulNBitsQuantizer(
        model,
        algo_config=nbits.DefaultWeightOnlyQuantConfig(
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            # accuracy_level unset: float32 compute on dequantized blocks, the most
            # accurate choice; the file shrinks either way.
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=("MatMul",),
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
    save_model(quantized, output_path)
    converted = sum(1 for node in iter_nodes(quantized.graph) if node.op_type == INT4_OUTPUT_OP)
    details: dict[str, Any] = {
        "mode": "int4",
        "bits": 4,
        "block_size": config.block_size,
        "symmetric": config.symmetric,
        "format": f"{INT4_OUTPUT_OP} (com.microsoft contrib op)",
        "gemm_rewritten_to_matmul": rewritten,
        "ir_version_upgraded_from": ir_upgraded_from,
        "eligible_matmuls": len(eligible),
        "matmuls_quantized": converted,
        "matmuls_left_float": len(eligible) - converted,
    }
    details.update(size_report(model_path, output_path))
    return details


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
