"""FP16: half-size weights; inputs and outputs stay float32, unsafe ops stay float32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from core.context import RunContext
from core.formats import (
    load_model,
    save_model,
    sort_topologically,
)
from core.quantize.modes import register_mode
from core.registry import StepData
from core.spec import Fp16Quantize


@register_mode("fp16")
def convert_fp16_mode(
    model_path: Path, output_path: Path, config: Fp16Quantize, data: StepData, ctx: RunContext
) -> dict[str, Any]:
    model = load_model(model_path)
    # keep_io_types: callers keep feeding float32 and reading float32. The default block
    # list keeps ops without (safe) fp16 kernels in fp32, with casts around them.
    converted = convert_float_to_float16(model, keep_io_types=True)
    sort_topologically(converted.graph)  # the converter appends its input casts last
    save_model(converted, output_path)
    return {
        "mode": "fp16",
        "keep_io_types": True,
        "op_block_list": list(DEFAULT_OP_BLOCK_LIST),
        "note": "FP16 on the CPU saves size, not time",
    }
