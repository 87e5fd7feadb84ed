"""Intermediate-feature matching (FitNets-style hints) for students derived from the
teacher, e.g. the teacher after structured pruning.

Layers are paired by name when the student keeps the teacher's module names, else by
position when both have the same sequence of Conv/Linear layers (a pruned and re-exported
teacher keeps its layers but not their names). The last pair, the output layer, is left
to the output loss. Forward hooks capture each paired layer's output; where pruning made
the student's layer narrower, a learnable 1x1 convolution (or linear map) projects it to
the teacher's width before the MSE. The projections train with the student and are not
part of the exported model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class LayerPair:
    teacher: str
    student: str
    teacher_channels: int
    student_channels: int

    def describe(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher,
            "student": self.student,
            "teacher_channels": self.teacher_channels,
            "student_channels": self.student_channels,
            "projected": self.teacher_channels != self.student_channels,
        }


def _layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, kinds)]


def pair_layers(teacher: nn.Module, student: nn.Module) -> list[tuple[str, str]]:
    """(teacher layer, student layer) names, the output layer left out; InputError
    (code "invalid_student") when the two have no corresponding layers."""
    ours, theirs = _layers(student), _layers(teacher)
    their_types = {name: type(layer) for name, layer in theirs}
    if ours and all(their_types.get(name) is type(layer) for name, layer in ours):
        pairs = [(name, name) for name, _ in ours]
    elif [type(layer) for _, layer in ours] == [type(layer) for _, layer in theirs]:
        pairs = [(t, s) for (t, _), (s, _) in zip(theirs, ours, strict=True)]
    else:
        raise InputError(
            "feature matching needs the student's Conv/Linear layers to correspond to the "
            f"teacher's; the student has {len(ours)}, the teacher {len(theirs)}, in "
            "different order or kinds",
            code="invalid_student",
        )
    if len(pairs) < 2:
        raise InputError(
            "feature matching needs a layer before the output layer to match",
            code="invalid_student",
        )
    return pairs[:-1]


class FeatureMatcher:
    """Captures the paired layers' outputs and turns them into a loss."""

    def __init__(
        self, teacher: nn.Module, student: nn.Module, example_inputs: list[torch.Tensor]
    ) -> None:
        import torch
        from torch import nn

        self.teacher = teacher.eval()
        self._student_features: dict[str, torch.Tensor] = {}
        self._teacher_features: dict[str, torch.Tensor] = {}
        names = pair_layers(teacher, student)
        self._hooks = [_capture(teacher, t, self._teacher_features) for t, _ in names] + [
            _capture(student, s, self._student_features) for _, s in names
        ]
        with torch.no_grad():
            was_training = student.training
            student.eval()
            student(*example_inputs)
            student.train(was_training)
            self.teacher(*example_inputs)
        self.pairs: list[LayerPair] = []
        projections: list[nn.Module] = []
        for teacher_name, student_name in names:
            ours = self._student_features[student_name]
            theirs = self._teacher_features[teacher_name]
            axis = 1 if isinstance(student.get_submodule(student_name), _convs()) else -1
            pair = LayerPair(teacher_name, student_name, theirs.shape[axis], ours.shape[axis])
            if _other_dims(ours, axis) != _other_dims(theirs, axis):
                raise InputError(
                    f"feature matching: layer {student_name!r} gives {list(ours.shape[1:])}, "
                    f"the teacher's {teacher_name!r} {list(theirs.shape[1:])}",
                    code="invalid_student",
                )
            self.pairs.append(pair)
            projections.append(_projection(pair, ours.dim(), axis))
        self.projections = nn.ModuleList(projections)

    def to(self, device: torch.device) -> FeatureMatcher:
        self.teacher.to(device)
        self.projections.to(device)
        return self

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.projections.parameters()

    def loss(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Mean over the pairs of MSE(projected student feature, teacher feature), for
        the batch the student has just run on (`inputs`)."""
        import torch
        from torch.nn import functional

        with torch.no_grad():
            self.teacher(*inputs)
        losses = [
            functional.mse_loss(
                projection(self._student_features[pair.student]),
                self._teacher_features[pair.teacher],
            )
            for pair, projection in zip(self.pairs, self.projections, strict=True)
        ]
        return torch.stack(losses).mean()

    def close(self) -> None:
        """Remove the hooks (before export) and drop the captured tensors."""
        for hook in self._hooks:
            hook.remove()
        self._student_features.clear()
        self._teacher_features.clear()


def _other_dims(feature: torch.Tensor, axis: int) -> list[int]:
    """A feature's shape without the batch and the channel axis (1, or -1 for Linear)."""
    shape = list(feature.shape)
    return shape[2:] if axis == 1 else shape[1:-1]


def _convs() -> tuple[type[nn.Module], ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _capture(module: nn.Module, name: str, store: dict[str, torch.Tensor]) -> Any:
    def hook(_layer: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        store[name] = output

    return module.get_submodule(name).register_forward_hook(hook)


def _projection(pair: LayerPair, rank: int, axis: int) -> nn.Module:
    """Identity for equal widths; else a 1x1 convolution (channels on axis 1) or a
    linear map (features last) from the student's width to the teacher's."""
    from torch import nn

    if pair.student_channels == pair.teacher_channels:
        return nn.Identity()
    if axis == -1:
        return nn.Linear(pair.student_channels, pair.teacher_channels, bias=False)
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[rank]
    return conv(pair.student_channels, pair.teacher_channels, 1, bias=False)
