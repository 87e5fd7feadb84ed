"""FP16: half-size weights; inputs and outputs keep their dtypes, unsafe ops stay float32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from core.context import RunContext
from core.errors import StepFailed
from core.formats import (
    graph_inputs,
    load_model,
    save_model,
    sort_topologically,
)
from core.quantize.common import size_report
from core.quantize.modes import register_mode
from core.registry import StepData
from core.spec import Fp16Quantize


@register_mode("fp16")
def convert_fp16_mode(
    model_path: Path, output_path: Path, config: Fp16Quantize, data: StepData, ctx: RunContext
) -> dict[str, Any]:
    model = load_model(model_path)
    # onnxruntime's default block list holds ops without (safe) float16 kernels; the
    # user's keep list adds to it, never replaces it (passing a list replaces the default).
    op_block_list = list(dict.fromkeys([*DEFAULT_OP_BLOCK_LIST, *config.keep_fp32_op_types]))
    # keep_io_types: callers keep feeding float32 and reading float32; blocked ops run in
    # float32 with casts around them.
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=op_block_list)
    sort_topologically(converted.graph)  # the converter appends its input casts last
    _require_same_io(model, converted)
    save_model(converted, output_path)
    details: dict[str, Any] = {
        "mode": "fp16",
        "keep_io_types": True,
        "keep_fp32_op_types": list(config.keep_fp32_op_types),
        "op_block_list": op_block_list,
        "note": "FP16 on the CPU saves size, not time",
    }
    details.update(size_report(model_path, output_path))
    return details


def _require_same_io(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """The converted model must take and give exactly what the original did."""
    before = [(t.name, t.dtype) for t in graph_inputs(original)]
    after = [(t.name, t.dtype) for t in graph_inputs(converted)]
    before_out = [(v.name, v.type.tensor_type.elem_type) for v in original.graph.output]
    after_out = [(v.name, v.type.tensor_type.elem_type) for v in converted.graph.output]
    if before != after or before_out != after_out:
        raise StepFailed(
            f"the float16 conversion changed the model's inputs or outputs "
            f"(inputs {before} -> {after}, outputs {before_out} -> {after_out})"
        )
