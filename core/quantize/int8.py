"""INT8 with ONNX Runtime's quantizer: dynamic (run-time activation ranges) and static
(activation ranges calibrated on the uploaded data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.registry import IntegerOpsRegistry

from core.context import RunContext
from core.data import pinned_batch_size, sample_count, take_rows
from core.errors import UnsupportedModel
from core.formats import (
    copy_model,
    ensure_opset,
    load_model,
    model_opset,
    save_model,
)
from core.measure import latency_batch_sizes, providers_for
from core.quantize.common import (
    PER_CHANNEL_MIN_OPSET,
    QDQ_MIN_OPSET,
    SHAPE_FOLD_CHECK_ROWS,
    STREAMING_OPTIONS,
    StreamingCalibrationReader,
    compact_zero_points,
    exclusion_names,
    float_biases_for_float_nodes,
    fold_shape_computations,
    gemm_biases_as_vectors,
    gemm_to_matmul,
    has_external_data,
    missing_node_names,
    modernize_ir,
    pre_process,
    require_onnx_domain_ops,
    restore_topological_order,
    size_report,
)
from core.quantize.cpu_int8 import reduce_range_for
from core.quantize.modes import register_mode
from core.quantize.node_profile import plan_latency_aware
from core.registry import StepData
from core.spec import DynamicQuantize, StaticQuantize

# Dynamic mode quantizes everything ONNX Runtime's integer-op quantizer supports except
# Conv: ConvInteger is slow on the CPU provider (3-15x slower on real CNNs, field notes).
DYNAMIC_DEFAULT_OP_TYPES = sorted(set(IntegerOpsRegistry) - {"Conv"})
DYNAMIC_CONV_NOTE = (
    "Conv left out: dynamic ConvInteger is slow on ONNX Runtime's CPU provider; "
    "use static mode for convolutions"
)
# Weights are always signed: MLAS's x86 INT8 kernels take u8 activations x s8 weights
# (VPMADDUBSW / VNNI) or s8 x s8; unsigned weights have no fast path there.
STATIC_WEIGHT_TYPE = QuantType.QInt8
# uint8 (the default): asymmetric u8 spends all 256 levels on post-ReLU activations and
# U8S8 is MLAS's native path. int8: S8S8, which some accelerators want; it measured the
# same accuracy and speed on the digits CNN here.
STATIC_ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
STATIC_FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@register_mode("dynamic")
def quantize_dynamic_mode(
    model_path: Path, output_path: Path, config: DynamicQuantize, data: StepData, ctx: RunContext
) -> dict[str, Any]:
    op_types = config.op_types or DYNAMIC_DEFAULT_OP_TYPES
    model = load_model(model_path)
    require_onnx_domain_ops(model, "dynamic")
    model, ir_upgraded_from = modernize_ir(model)
    rewritten = 0
    if "MatMul" in op_types:
        # Exporters write nn.Linear on 2-D inputs as Gemm, which the integer-op quantizer
        # does not handle: rewritten as MatMul + Add, those weights get quantized too.
        model, rewritten = gemm_to_matmul(model)
    # At small batches the exporter's shape arithmetic costs as much as the INT8 saves
    model, shape_folding = fold_shape_computations(
        model,
        ctx.work_dir / "shape-folding",
        data.eval_feeds(rows=SHAPE_FOLD_CHECK_ROWS),
        data.eval_layout,
    )
    prepared = save_model(model, ctx.work_dir / "prepared.onnx")
    ctx.check_cancelled()
    quantize_dynamic(
        prepared,
        output_path,
        op_types_to_quantize=list(op_types),
        per_channel=config.per_channel,
        reduce_range=reduce_range_for(config.reduce_range)[0],
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclusion_names(config.nodes_to_exclude),
        use_external_data_format=has_external_data(prepared),
    )
    reordered = restore_topological_order(output_path)
    details: dict[str, Any] = {
        "mode": "dynamic",
        "weight_type": "QInt8",
        "activation_type": "QUInt8 (computed at run time)",
        "per_channel": config.per_channel,
        "reduce_range": reduce_range_for(config.reduce_range)[0],
        "reduce_range_why": reduce_range_for(config.reduce_range)[1],
        "op_types": list(op_types),
        "nodes_to_exclude": list(config.nodes_to_exclude),
        "nodes_to_exclude_not_found": missing_node_names(model_path, config.nodes_to_exclude),
        "gemm_rewritten_to_matmul": rewritten,
        "shape_folding": shape_folding,
        "ir_version_upgraded_from": ir_upgraded_from,
        "nodes_reordered_after_quantization": reordered,
    }
    if config.op_types is None:
        details["op_types_note"] = DYNAMIC_CONV_NOTE
    details.update(size_report(model_path, output_path))
    return details


# What one calibration batch's activations may take. The calibrator runs a copy of the
# model that keeps every calibrated tensor alive to the end of the run (graph outputs or
# reductions of them), so a batch costs about the sum of its intermediate tensors: a
# 32-layer CNN at 3x256x256 holds 268 MB per image, and a batch of 32 took 9.3 GB. The
# batch is cut to fit (ranges are merged batch by batch, so fewer samples per batch only
# means more batches).
CALIBRATION_MEMORY_BYTES = 1024**3


def activation_bytes_per_sample(model_path: Path, data: StepData) -> int | None:
    """The bytes of the model's float tensors (inputs, intermediates, outputs) for one
    calibration sample, from shape inference on the calibration data's sample shapes;
    None when the shapes are not all known (the configured batch size stays)."""
    arrays = data.calibration_feeds()
    model = onnx.load(str(model_path), load_external_data=False)
    for graph_input in model.graph.input:
        if not any(info.name == graph_input.name for info in data.inputs):
            continue  # an initializer listed as an input
        array = arrays.get(graph_input.name)
        binding = data.task.binding(graph_input.name)
        if array is None or not binding.splits_samples or binding.sample_axis != 0:
            return None
        dims = graph_input.type.tensor_type.shape.dim
        if len(dims) != array.ndim:
            return None
        for dim, size in zip(dims, (1, *array.shape[1:]), strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = size
    # shapes recorded with symbolic dims (pre-processing keeps "N") would win over these
    del model.graph.value_info[:]
    for graph_output in model.graph.output:
        graph_output.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference gives up on some graphs: keep the configured size
        return None
    total = 0
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        sizes = [dim.dim_value if dim.HasField("dim_value") else 0 for dim in tensor.shape.dim]
        if 0 in sizes:
            return None
        itemsize = 4 if tensor.elem_type == onnx.TensorProto.FLOAT else 2
        total += int(np.prod(sizes, dtype=np.int64)) * itemsize
    return total


def calibration_batch_size(
    configured: int, samples: int, activation_bytes: int | None, budget_bytes: int
) -> int:
    """The configured batch size, cut so that one batch's activations fit the budget
    (at least one sample) and never above the samples there are (a short batch would
    be padded to the batch size, for nothing)."""
    batch = min(configured, max(samples, 1))
    if activation_bytes:
        batch = min(batch, max(1, budget_bytes // activation_bytes))
    return batch


# Profiled runs per model and batch size: per-node medians settle well before the
# interleaved timing's 30 (measured on the depthwise CNN of bench/latency_aware.py).
LATENCY_AWARE_RUNS = 15


def choose_nodes_by_latency(
    float_path: Path, qdq_path: Path, data: StepData, ctx: RunContext
) -> dict[str, Any]:
    """Profile the float and the fully quantized model per node at every deployment
    batch size and choose the nodes to quantize (core.quantize.latency_aware)."""
    feeds = data.eval_feeds()
    sizes = latency_batch_sizes(data.inputs, data.deployment_batch_sizes(), data.task)
    feeds_by_batch = {b: data.eval_layout.to_model(take_rows(feeds, b)) for b in sizes}
    plan = plan_latency_aware(
        float_path, qdq_path, feeds_by_batch, ctx.measure, ctx.work_dir / "profiles",
        runs=LATENCY_AWARE_RUNS, device=ctx.device,
    )  # fmt: skip
    selection = plan.selection
    return {
        "method": "ONNX Runtime's profiler, per-node medians; a minimum cut over units "
        "(quantized op + the activations fused into it) with Q/DQ paid at region borders",
        "batch_sizes": sizes,
        "runs": plan.runs,
        "units": len(selection.rows),
        "quantized_units": len(selection.quantize),
        "nodes_to_quantize": list(selection.nodes_to_quantize),
        "modelled_us": {
            "fp32": {str(b): round(v, 1) for b, v in selection.fp32_us.items()},
            "all_int8": {str(b): round(v, 1) for b, v in selection.all_int8_us.items()},
            "chosen": {str(b): round(v, 1) for b, v in selection.estimated_us.items()},
        },
        "unattributed_us": {k: round(v, 1) for k, v in plan.unattributed_us.items()},
        "table": list(selection.rows),
    }


@register_mode("static")
def quantize_static_mode(
    model_path: Path,
    output_path: Path,
    config: StaticQuantize,
    data: StepData,
    ctx: RunContext,
) -> dict[str, Any]:
    model = load_model(model_path)
    require_onnx_domain_ops(model, "static")
    min_opset = PER_CHANNEL_MIN_OPSET if config.per_channel else QDQ_MIN_OPSET
    model, upgraded_from = ensure_opset(model, min_opset)
    model, ir_upgraded_from = modernize_ir(model)
    source = save_model(model, ctx.work_dir / "source.onnx")
    prepared, pre_process_note = pre_process(source, ctx.work_dir / "preprocessed.onnx")
    biases_reshaped = 0
    if not has_external_data(prepared):  # a > 2 GB model is not rewritten for its biases
        prepared_model = load_model(prepared)
        biases_reshaped = gemm_biases_as_vectors(prepared_model)
        if biases_reshaped:
            prepared = save_model(prepared_model, ctx.work_dir / "prepared.onnx")
    ctx.check_cancelled()

    pinned = pinned_batch_size(data.inputs, data.task)
    available = sample_count(data.calibration_feeds())
    samples = min(config.calibration_samples, available)
    activations = activation_bytes_per_sample(prepared, data)
    batch_size = pinned or calibration_batch_size(
        config.calibration_batch_size, samples, activations, CALIBRATION_MEMORY_BYTES
    )
    # A seeded random subset: calibration files are often sorted by class, and the first
    # N rows would then miss whole classes' activation ranges.
    rows = np.sort(np.random.default_rng(ctx.seed).permutation(available)[:samples])
    activation_type = STATIC_ACTIVATION_TYPES[config.activation_type]
    quant_format = STATIC_FORMATS[config.format]
    extra_options: dict[str, Any] = {
        **STREAMING_OPTIONS,
        "ActivationSymmetric": config.activation_symmetric,
        "WeightSymmetric": config.weight_symmetric,
        # CalibMaxIntermediateOutputs is left unset on purpose: in onnxruntime 1.32 it
        # discards collected ranges instead of merging them; streaming one batch per
        # collect_data call bounds memory instead.
    }
    if config.calibration_method == "percentile":
        # onnxruntime's percentile calibrator works on |activation| (symmetric histogram)
        # and clips the range to the observed min and max.
        extra_options["CalibPercentile"] = config.calibration_percentile

    def run_quantizer(target: Path, nodes_to_quantize: list[str] | None) -> None:
        calibration = StreamingCalibrationReader(
            data.calibration_arrays, data.inputs, data.task, rows, batch_size, ctx.check_cancelled
        )
        quantize_static(
            prepared,
            target,
            calibration,
            quant_format=quant_format,
            op_types_to_quantize=config.op_types,
            per_channel=config.per_channel,
            reduce_range=reduce_range_for(config.reduce_range)[0],
            activation_type=activation_type,
            weight_type=STATIC_WEIGHT_TYPE,
            nodes_to_quantize=nodes_to_quantize,
            nodes_to_exclude=exclusion_names(config.nodes_to_exclude),
            calibrate_method=CALIBRATION_METHODS[config.calibration_method],
            calibration_providers=providers_for(ctx.device),
            extra_options=extra_options,
            # also needed for the augmented FP32 copy the calibrator saves of a >2 GB model
            use_external_data_format=has_external_data(prepared),
        )
        samples_served.append(calibration.samples_served)
        batches.append(len(calibration))

    samples_served: list[int] = []
    batches: list[int] = []
    latency_aware: dict[str, Any] | None = None
    if config.latency_aware:
        if quant_format != QuantFormat.QDQ:
            raise UnsupportedModel(
                "latency_aware selects nodes of a QDQ model: use format 'qdq'",
                code="latency_aware_needs_qdq",
            )
        full = ctx.work_dir / "full-qdq.onnx"
        run_quantizer(full, None)
        restore_topological_order(full)
        latency_aware = choose_nodes_by_latency(prepared, full, data, ctx)
        chosen = latency_aware["nodes_to_quantize"]
        if latency_aware["quantized_units"] == latency_aware["units"]:
            copy_model(full, output_path)  # every unit wins: the full model is the answer
        elif not chosen:
            copy_model(prepared, output_path)  # no unit wins: the float graph, prepared
        else:
            run_quantizer(output_path, list(chosen))
    else:
        run_quantizer(output_path, None)
    reordered = restore_topological_order(output_path)
    compacted = float_biases = 0
    if not has_external_data(output_path):  # at > 2 GB, a few KB are not worth a rewrite
        quantized = load_model(output_path)
        float_biases = float_biases_for_float_nodes(quantized)
        compacted = compact_zero_points(quantized)
        if compacted or float_biases:
            save_model(quantized, output_path)
    # onnxruntime's QDQ quantizer makes per-channel weights symmetric whatever it is told
    # (QLinear kernels need one zero point for all channels).
    weights_symmetric = config.weight_symmetric or (config.per_channel and config.format == "qdq")
    # checked against the graph the quantizer saw: pre-processing fuses some nodes away
    # (BatchNormalization into Conv), and excluding those has no effect
    not_found = missing_node_names(prepared, config.nodes_to_exclude)
    details: dict[str, Any] = {
        "mode": "static",
        "format": quant_format.name,
        "activation_type": activation_type.name,
        "activation_symmetric": config.activation_symmetric,
        "weight_type": STATIC_WEIGHT_TYPE.name,
        "weight_symmetric": weights_symmetric,
        "per_channel": config.per_channel,
        "reduce_range": reduce_range_for(config.reduce_range)[0],
        "reduce_range_why": reduce_range_for(config.reduce_range)[1],
        "op_types": config.op_types or "all the quantizer supports",
        "nodes_to_exclude": list(config.nodes_to_exclude),
        "nodes_to_exclude_not_found": not_found,
        "calibration_method": config.calibration_method,
        "calibration_samples": samples_served[-1] if samples_served else 0,
        "calibration_batch_size": batch_size,
        "calibration_activation_bytes_per_sample": activations,
        "calibration_memory_budget_bytes": CALIBRATION_MEMORY_BYTES,
        "calibration_batches": batches[-1] if batches else 0,
        "calibration_streaming": "one batch per calibrator pass, ranges/histograms merged",
        "opset": model_opset(model),
        "opset_upgraded_from": upgraded_from,
        "ir_version_upgraded_from": ir_upgraded_from,
        "pre_process": pre_process_note,
        "gemm_biases_reshaped_to_vectors": biases_reshaped,
        "nodes_reordered_after_quantization": reordered,
        "zero_points_compacted": compacted,
        "float_biases_restored": float_biases,
    }
    if weights_symmetric != config.weight_symmetric:
        details["weight_symmetric_note"] = (
            "per-channel QDQ weights are always symmetric in onnxruntime; "
            "set per_channel=false for asymmetric weights"
        )
    if latency_aware is not None:
        details["latency_aware"] = latency_aware
    if config.calibration_method == "percentile":
        details["calibration_percentile"] = config.calibration_percentile
    details.update(size_report(model_path, output_path))
    return details
