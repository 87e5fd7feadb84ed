"""The student a distill step trains, from the spec's `student.source`:

- `family`: built from core.families (the family given, or chosen by the input's rank
  for "auto"), sized to a fraction of the teacher's parameters or of its latency;
- `step_input`: the model entering the step (after pruning: the pruned teacher);
- `upload`: another uploaded ONNX model.

ONNX students are converted with core.torch_bridge.onnx_to_torch; a graph it cannot
convert fails with the bridge's message naming the op or node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.context import RunContext
from core.data import Feeds, pinned_batch_size, take_rows
from core.errors import EngineError, InputError, UnsupportedModel
from core.families import (
    FAMILIES,
    FamilyConfig,
    SizingError,
    build,
    family_for,
    parameter_count,
    size_by_latency,
    size_by_parameters,
)
from core.formats import ModelInfo, TensorInfo, inspect_model
from core.measure import compare_latency, open_session
from core.quantize.common import QUANTIZED_OPS
from core.spec import (
    AutoStudent,
    FamilyStudentConfig,
    StepInputStudent,
    StudentConfig,
    UploadedStudent,
)

if TYPE_CHECKING:
    from torch import nn

INVALID_STUDENT = "invalid_student"
# Rows an uploaded student is test-run on before it is converted.
_PROBE_ROWS = 2


@dataclass(frozen=True)
class Teacher:
    """What resolving a student needs to know about the teacher."""

    path: Path
    info: ModelInfo
    output_index: int
    output_shape: tuple[int, ...]  # one sample's output (no batch dim)
    parameters: int  # weight elements of the ONNX file


@dataclass
class Student:
    module: nn.Module
    # The teacher's inputs in the order the module takes them positionally.
    inputs: list[TensorInfo]
    # Which of the module's outputs is matched to the teacher's output.
    output_index: int
    # The outputs the exported student names (the teacher's names).
    outputs: list[TensorInfo]
    # For the report: source, family and architecture, sizing.
    description: dict[str, Any] = field(default_factory=dict)


def resolve_student(
    config: StudentConfig,
    step_input: Path,
    teacher: Teacher,
    feeds: Feeds,
    models: dict[str, Path],
    batch_size: int,
    ctx: RunContext,
) -> Student:
    """The untrained (or, for ONNX students, as uploaded) student as a torch module.

    Raises InputError (code "invalid_student") when the student cannot stand in for the
    teacher (wrong inputs or outputs, a ratio no width meets), UnsupportedModel when an
    ONNX student is quantized or cannot be converted.
    """
    if isinstance(config, StepInputStudent):
        return _onnx_student(step_input, "step_input", teacher, feeds, ctx)
    if isinstance(config, UploadedStudent):
        path = models.get(config.model_id)
        if path is None:
            raise EngineError(
                f"uploaded student {config.model_id!r} was not provided to the engine",
                code="model_missing",
            )
        student = _onnx_student(path, "upload", teacher, feeds, ctx)
        student.description["model_id"] = config.model_id
        return student
    return _family_student(config, teacher, feeds, batch_size, ctx)


def _family_student(
    config: FamilyStudentConfig,
    teacher: Teacher,
    feeds: Feeds,
    batch_size: int,
    ctx: RunContext,
) -> Student:
    import torch

    if len(teacher.info.inputs) != 1:
        raise InputError(
            f"family students take one input; the teacher has {len(teacher.info.inputs)} "
            "(upload a student instead)",
            code=INVALID_STUDENT,
        )
    if len(teacher.info.outputs) > 1:
        kept = teacher.info.outputs[teacher.output_index].name
        dropped = [t.name for i, t in enumerate(teacher.info.outputs) if i != teacher.output_index]
        raise InputError(
            f"family students give one output ({kept!r}); the teacher also gives "
            f"{', '.join(map(repr, dropped))}, which such a student would drop (upload a "
            "student that gives every output)",
            code=INVALID_STUDENT,
        )
    if config.parameter_ratio is not None and teacher.parameters == 0:
        raise InputError(
            "parameter_ratio sizes the student by the teacher's weight tensors, and this "
            "teacher has none (its weights are node attributes, as in ai.onnx.ml ops): set "
            "parameter_ratio to null and choose the family's size fields",
            code=INVALID_STUDENT,
        )
    tensor = teacher.info.inputs[0]
    if np.dtype(tensor.dtype).kind != "f":
        raise InputError(
            f"family students take float inputs; the teacher's input {tensor.name!r} is "
            f"{tensor.dtype} (e.g. token ids): upload a student instead",
            code=INVALID_STUDENT,
        )
    input_shape = tuple(int(size) for size in feeds[tensor.name].shape[1:])
    num_outputs = math.prod(teacher.output_shape)
    family = _family_config(config, input_shape)
    sizing: dict[str, Any] | None = None
    try:
        if config.parameter_ratio is not None:
            sized = size_by_parameters(
                family, input_shape, num_outputs, teacher.parameters, config.parameter_ratio
            )
        elif config.latency_ratio is not None:
            measure = _latency_ratio_measurer(
                teacher, input_shape, num_outputs, feeds, batch_size, ctx
            )
            sized = size_by_latency(
                family, input_shape, num_outputs, teacher.parameters, config.latency_ratio, measure
            )
        else:
            sized = None
        if sized is not None:
            family = sized.config
            sizing = {"target": sized.target, "candidates": sized.candidates}
        torch.manual_seed(ctx.seed)
        module = build(family, input_shape, num_outputs)
    except (SizingError, ValueError) as exc:
        raise InputError(f"student: {exc}", code=INVALID_STUDENT) from exc
    if len(teacher.output_shape) != 1:
        module = _reshaped(module, teacher.output_shape)
    return Student(
        module=module,
        inputs=list(teacher.info.inputs),
        output_index=0,
        outputs=[teacher.info.outputs[teacher.output_index]],
        description={
            "source": "family",
            "family": family.family,
            "family_chosen_by": "input rank" if isinstance(config, AutoStudent) else "spec",
            "architecture": family.model_dump(),
            "input_shape": list(input_shape),
            "torch_parameters": parameter_count(module),
            "sizing": sizing,
        },
    )


def _family_config(config: FamilyStudentConfig, input_shape: tuple[int, ...]) -> FamilyConfig:
    """The family part of the spec's student (its fields as given, defaults elsewhere)."""
    if isinstance(config, AutoStudent):
        return FAMILIES[family_for(input_shape)]()
    family_type = FAMILIES[config.family]
    return family_type.model_validate(config.model_dump(include=set(family_type.model_fields)))


def _latency_ratio_measurer(
    teacher: Teacher,
    input_shape: tuple[int, ...],
    num_outputs: int,
    feeds: Feeds,
    batch_size: int,
    ctx: RunContext,
) -> Any:
    """A function timing a candidate config against the teacher in ONNX Runtime
    (interleaved in one process, at the job's batch size) and returning the ratio of
    their median latencies. Candidates are exported with random weights: their
    latency does not depend on the values."""
    import torch

    from core.torch_bridge import torch_to_onnx

    tensor = teacher.info.inputs[0]
    rows = pinned_batch_size(teacher.info.inputs) or batch_size
    batch = take_rows(feeds, rows)

    def latency_ratio(config: FamilyConfig) -> float:
        ctx.check_cancelled()
        torch.manual_seed(ctx.seed)
        module = build(config, input_shape, num_outputs)
        if len(teacher.output_shape) != 1:
            module = _reshaped(module, teacher.output_shape)
        path = torch_to_onnx(
            module.eval(),
            batch,
            ctx.work_dir / "latency-candidates" / f"width-{config.width_units()}.onnx",
            inputs=[tensor],
            outputs=[teacher.info.outputs[teacher.output_index]],
            opset=teacher.info.opset,
        )
        teacher_latency, student_latency = compare_latency(
            [teacher.path, path], batch, rows, ctx.measure, ctx.device
        )
        return student_latency.median_ms / teacher_latency.median_ms

    return latency_ratio


def _onnx_student(
    path: Path, source: str, teacher: Teacher, feeds: Feeds, ctx: RunContext
) -> Student:
    from core.torch_bridge import onnx_to_torch

    info = inspect_model(path)
    what = "the step's input" if source == "step_input" else "the uploaded student"
    quantized = sorted(op for op in info.op_types if op in QUANTIZED_OPS)
    if quantized:
        raise UnsupportedModel(
            f"{what} is already quantized ({', '.join(quantized)}): it cannot be trained; "
            "distill before quantizing",
            code="already_quantized",
        )
    inputs = _student_inputs(info, teacher, what)
    output_index = _student_output(info, teacher, what)
    _probe(path, info, inputs, output_index, teacher, feeds, what, ctx)
    module: nn.Module = onnx_to_torch(path, ctx.work_dir / f"torch-{source}")
    keeps_all_outputs = source == "step_input"
    if not keeps_all_outputs and len(info.outputs) > 1:
        module = _selected(module, output_index)
        output_index = 0
    return Student(
        module=module,
        inputs=inputs,
        output_index=output_index,
        outputs=(
            list(teacher.info.outputs)
            if keeps_all_outputs
            else [teacher.info.outputs[teacher.output_index]]
        ),
        description={
            "source": source,
            "onnx_parameters": info.parameters,
            "op_types": info.op_types,
            "torch_parameters": parameter_count(module),
        },
    )


def _student_inputs(info: ModelInfo, teacher: Teacher, what: str) -> list[TensorInfo]:
    """The teacher's inputs in the student's positional order: matched by name when the
    names agree, else by position; dtypes must agree."""
    ours = [tensor.name for tensor in info.inputs]
    theirs = {tensor.name: tensor for tensor in teacher.info.inputs}
    if len(ours) != len(theirs):
        raise InputError(
            f"{what} takes {len(ours)} inputs, the teacher {len(theirs)}", code=INVALID_STUDENT
        )
    ordered = (
        [theirs[name] for name in ours] if set(ours) == set(theirs) else list(teacher.info.inputs)
    )
    for student_tensor, teacher_tensor in zip(info.inputs, ordered, strict=True):
        if student_tensor.dtype != teacher_tensor.dtype:
            raise InputError(
                f"{what}'s input {student_tensor.name!r} is {student_tensor.dtype}, the "
                f"teacher's {teacher_tensor.name!r} {teacher_tensor.dtype}",
                code=INVALID_STUDENT,
            )
    return ordered


def _student_output(info: ModelInfo, teacher: Teacher, what: str) -> int:
    """The student's output matched to the teacher's: the one of the same name, else
    its only output."""
    wanted = teacher.info.outputs[teacher.output_index].name
    names = [tensor.name for tensor in info.outputs]
    if wanted in names:
        return names.index(wanted)
    if len(names) == 1:
        return 0
    raise InputError(
        f"{what} has outputs {names} and none is named {wanted!r} like the teacher's",
        code=INVALID_STUDENT,
    )


def _probe(
    path: Path,
    info: ModelInfo,
    inputs: list[TensorInfo],
    output_index: int,
    teacher: Teacher,
    feeds: Feeds,
    what: str,
    ctx: RunContext,
) -> None:
    """Run the student on a few training rows: it must accept the teacher's data and
    give one sample the teacher's output shape."""
    rows = pinned_batch_size(info.inputs) or _PROBE_ROWS
    batch = take_rows(feeds, rows)
    session = open_session(path, ctx.measure, ctx.device)
    named = {
        student.name: batch[teacher_tensor.name]
        for student, teacher_tensor in zip(info.inputs, inputs, strict=True)
    }
    try:
        outputs = session.run([info.outputs[output_index].name], named)
    except Exception as exc:
        raise InputError(
            f"{what} does not run on the training data: {str(exc).splitlines()[0][:300]}",
            code=INVALID_STUDENT,
        ) from exc
    shape = tuple(np.asarray(outputs[0]).shape[1:])
    if shape != teacher.output_shape:
        raise InputError(
            f"{what}'s output has shape {list(shape)} per sample, the teacher's "
            f"{list(teacher.output_shape)}",
            code=INVALID_STUDENT,
        )


def _reshaped(module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    from torch import nn

    return nn.Sequential(module, nn.Unflatten(1, shape))


def _selected(module: nn.Module, index: int) -> nn.Module:
    """The module returning only its output `index` (a student with several outputs
    whose others the teacher does not have)."""
    from torch import nn

    class OneOutput(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            return self.inner(*inputs)[index]

    return OneOutput(module)
