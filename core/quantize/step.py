"""The "quantize" step: refuse double quantization, run the mode, validate the result."""

from __future__ import annotations

from pathlib import Path

from core.context import RunContext
from core.errors import EngineError
from core.formats import (
    load_model,
)
from core.quantize.common import (
    count_quantized_nodes,
    refuse_requantization,
    validate_runs,
    wrap_failure,
)
from core.quantize.modes import get_mode
from core.registry import StepData, StepOutput, register_step
from core.spec import QuantizeConfig


@register_step("quantize")
def quantize(
    model_path: Path, config: QuantizeConfig, data: StepData, ctx: RunContext
) -> StepOutput:
    """Quantize the model as `config.mode` says and return the validated result."""
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    output_path = ctx.work_dir / "model.onnx"
    refuse_requantization(load_model(model_path), config.mode)
    try:
        details = get_mode(config.mode)(model_path, output_path, config, data, ctx)
    except EngineError:  # ours (incl. JobCancelled) already say what happened
        raise
    except Exception as exc:
        raise wrap_failure(exc, config.mode, model_path) from exc

    validate_runs(output_path, data, ctx.device, what=f"the {config.mode}-quantized model")
    details["quantized_node_counts"] = count_quantized_nodes(load_model(output_path))
    unchanged: str | None = None
    if details.get("returned_input_unchanged", False):
        unchanged = f"auto quantization kept the input: {details.get('chosen_reason', '')}"
    elif config.mode != "fp16" and not details["quantized_node_counts"]:
        unchanged = "no node was quantized: the model has none of the op types the mode quantizes"
        details["warning"] = unchanged
    return StepOutput(model_path=output_path, details=details, unchanged_reason=unchanged)
