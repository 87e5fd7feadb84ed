"""INT8 with ONNX Runtime's quantizer: dynamic (run-time activation ranges) and static
(activation ranges calibrated on the uploaded data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.registry import IntegerOpsRegistry

from core.context import RunContext
from core.data import pinned_batch_size
from core.formats import (
    ensure_opset,
    load_model,
    model_opset,
    save_model,
)
from core.measure import providers_for
from core.quantize.common import (
    PER_CHANNEL_MIN_OPSET,
    QDQ_MIN_OPSET,
    StreamingCalibrationReader,
    gemm_to_matmul,
    pre_process,
)
from core.quantize.modes import register_mode
from core.registry import StepData
from core.spec import DynamicQuantize, StaticQuantize

# Dynamic mode quantizes everything ONNX Runtime's integer-op quantizer supports except
# Conv: ConvInteger is slow on the CPU provider (3-15x slower on real CNNs, field notes).
DYNAMIC_DEFAULT_OP_TYPES = sorted(set(IntegerOpsRegistry) - {"Conv"})
DYNAMIC_CONV_NOTE = (
    "Conv left out: dynamic ConvInteger is slow on ONNX Runtime's CPU provider; "
    "use static mode for convolutions"
)
# U8S8: unsigned activations, signed symmetric weights. It is MLAS's native x86 INT8 path
# (VPMADDUBSW / VNNI take u8 x s8) and asymmetric u8 spends all 256 levels on post-ReLU
# activations. S8S8 measured the same accuracy and speed on the digits CNN here; on x86
# without VNNI, set reduce_range if U8S8 saturation costs accuracy.
STATIC_ACTIVATION_TYPE = QuantType.QUInt8
STATIC_WEIGHT_TYPE = QuantType.QInt8


@register_mode("dynamic")
def quantize_dynamic_mode(
    model_path: Path, output_path: Path, config: DynamicQuantize, data: StepData, ctx: RunContext
) -> dict[str, Any]:
    op_types = config.op_types or DYNAMIC_DEFAULT_OP_TYPES
    model = load_model(model_path)
    rewritten = 0
    if "MatMul" in op_types:
        # Exporters write nn.Linear on 2-D inputs as Gemm, which the integer-op quantizer
        # does not handle: rewritten as MatMul + Add, those weights get quantized too.
        model, rewritten = gemm_to_matmul(model)
    prepared = save_model(model, ctx.work_dir / "prepared.onnx")
    ctx.check_cancelled()
    quantize_dynamic(
        prepared,
        output_path,
        op_types_to_quantize=list(op_types),
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        weight_type=QuantType.QInt8,
    )
    details: dict[str, Any] = {
        "mode": "dynamic",
        "weight_type": "QInt8",
        "activation_type": "QUInt8 (computed at run time)",
        "per_channel": config.per_channel,
        "reduce_range": config.reduce_range,
        "op_types": list(op_types),
        "gemm_rewritten_to_matmul": rewritten,
    }
    if config.op_types is None:
        details["op_types_note"] = DYNAMIC_CONV_NOTE
    return details


@register_mode("static")
def quantize_static_mode(
    model_path: Path,
    output_path: Path,
    config: StaticQuantize,
    data: StepData,
    ctx: RunContext,
) -> dict[str, Any]:
    model = load_model(model_path)
    min_opset = PER_CHANNEL_MIN_OPSET if config.per_channel else QDQ_MIN_OPSET
    model, upgraded_from = ensure_opset(model, min_opset)
    source = save_model(model, ctx.work_dir / "source.onnx")
    prepared, pre_process_note = pre_process(source, ctx.work_dir / "preprocessed.onnx")
    ctx.check_cancelled()

    batch_size = pinned_batch_size(data.inputs) or config.calibration_batch_size
    available = len(next(iter(data.calibration_arrays.values())))
    samples = min(config.calibration_samples, available)
    # A seeded random subset: calibration files are often sorted by class, and the first
    # N rows would then miss whole classes' activation ranges.
    rows = np.sort(np.random.default_rng(ctx.seed).permutation(available)[:samples])
    reader = StreamingCalibrationReader(
        data.calibration_arrays, data.inputs, data.task, rows, batch_size, ctx.check_cancelled
    )
    quantize_static(
        prepared,
        output_path,
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=config.op_types,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        activation_type=STATIC_ACTIVATION_TYPE,
        weight_type=STATIC_WEIGHT_TYPE,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_providers=providers_for(ctx.device),
        # CalibMaxIntermediateOutputs is left unset on purpose: in onnxruntime 1.32 it
        # discards collected ranges instead of merging them. MinMax keeps only per-batch
        # minima and maxima, so memory stays small without it.
    )
    return {
        "mode": "static",
        "format": "QDQ",
        "activation_type": STATIC_ACTIVATION_TYPE.name,
        "weight_type": STATIC_WEIGHT_TYPE.name,
        "per_channel": config.per_channel,
        "reduce_range": config.reduce_range,
        "op_types": config.op_types or "all the quantizer supports",
        "calibration_method": config.calibration_method,
        "calibration_samples": reader.samples_served,
        "calibration_batch_size": batch_size,
        "opset": model_opset(model),
        "opset_upgraded_from": upgraded_from,
        "pre_process": pre_process_note,
    }
