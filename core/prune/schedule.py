"""When to prune and how much: sparsity as a function of the optimizer step.

A schedule knows nothing about layers or weights: it answers, for optimizer step `t` and
a layer's final sparsity, whether masks are recomputed at `t` and to which sparsity. The
kinds apply it; the fine-tuning loop only counts steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from core.errors import InputError


class SparsitySchedule(Protocol):
    def is_pruning_step(self, step: int) -> bool:
        """Whether masks are recomputed after optimizer step `step` (0: before training)."""
        ...

    def sparsity(self, step: int, final_sparsity: float) -> float:
        """The sparsity a layer whose final sparsity is `final_sparsity` has at `step`."""
        ...


@dataclass(frozen=True)
class OneShot:
    """Prune once, before fine-tuning, to the final sparsity; masks stay fixed after."""

    def is_pruning_step(self, step: int) -> bool:
        return step == 0

    def sparsity(self, step: int, final_sparsity: float) -> float:
        return final_sparsity


@dataclass(frozen=True)
class PolynomialDecay:
    """TF-MOT's PolynomialDecay: s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))^power,
    with t clipped to [t0, t_end], recomputed every `frequency` steps from `begin_step`.

    One deviation from TF-MOT: `end_step` is always a pruning step, so the final
    sparsity is reached exactly even when end_step - begin_step is not a multiple of
    `frequency` (TF-MOT then stops at its last multiple, short of the target).
    A layer whose final sparsity is below `initial_sparsity` starts at its final one.
    """

    initial_sparsity: float
    begin_step: int
    end_step: int
    frequency: int
    power: float = 3.0

    def __post_init__(self) -> None:
        if self.end_step <= self.begin_step:
            raise InputError(
                f"polynomial schedule: end_step ({self.end_step}) must come after "
                f"begin_step ({self.begin_step})",
                code="invalid_spec",
            )
        if self.frequency < 1 or self.power <= 0:
            raise InputError(
                "polynomial schedule: frequency >= 1 and power > 0", code="invalid_spec"
            )

    def is_pruning_step(self, step: int) -> bool:
        in_range = self.begin_step <= step <= self.end_step
        return in_range and (
            (step - self.begin_step) % self.frequency == 0 or step == self.end_step
        )

    def sparsity(self, step: int, final_sparsity: float) -> float:
        initial = min(self.initial_sparsity, final_sparsity)
        progress = (min(max(step, self.begin_step), self.end_step) - self.begin_step) / (
            self.end_step - self.begin_step
        )
        return final_sparsity + (initial - final_sparsity) * (1.0 - progress) ** self.power

    def pruning_steps(self) -> list[int]:
        """Every step at which masks are recomputed, in order."""
        steps = list(range(self.begin_step, self.end_step + 1, self.frequency))
        return steps if steps[-1] == self.end_step else [*steps, self.end_step]
