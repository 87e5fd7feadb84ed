"""One split of the eval rows per job: the rows choices are made on, and the rows the
result is reported on.

Choosing among candidates (auto's configurations, an early-stopping epoch, a pruning
ratio, a searched architecture) on the rows the winner is then reported on flatters it:
the winner is partly the luckiest. So every step sees only the *selection* rows, and the
verdict and the reported metrics use only the *held-out* rows. The split is seeded (the
same job, the same rows) and random, since eval files are often sorted by class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from core.spec import TaskSpec

# Fewer rows than this on either side make a split meaningless: below it every row
# serves both (and the record says so).
MIN_ROWS_PER_SIDE = 32


class EvalSplitRecord(BaseModel):
    """What the job's record says about its eval rows."""

    rows: int
    selection_rows: int
    held_out_rows: int
    held_out_fraction: float
    seed: int
    split: bool
    note: str | None = None


@dataclass(frozen=True)
class EvalSplit:
    selection: np.ndarray  # sorted row indices every step chooses on
    held_out: np.ndarray  # sorted row indices the verdict is judged on
    record: EvalSplitRecord

    @property
    def is_split(self) -> bool:
        return self.record.split


def split_eval_rows(rows: int, seed: int, held_out_fraction: float = 0.5) -> EvalSplit:
    """A seeded split of `rows` eval rows; with too few rows (or a fraction of 0) every
    row is both selection and held-out, and the record's note says why."""
    everything = np.arange(rows)
    held_out_rows = round(rows * held_out_fraction)
    selection_rows = rows - held_out_rows
    if held_out_fraction <= 0.0:
        note = (
            "held_out_fraction is 0: the rows that steps chose on also score the result, "
            "so the reported metric is optimistic"
        )
    elif min(held_out_rows, selection_rows) < MIN_ROWS_PER_SIDE:
        note = (
            f"{rows} eval rows are too few to split (at least {MIN_ROWS_PER_SIDE} are needed "
            "on each side): the rows that steps chose on also score the result, so the "
            "reported metric is optimistic; upload more eval rows for an unbiased figure"
        )
    else:
        order = np.random.default_rng(seed).permutation(rows)
        record = EvalSplitRecord(
            rows=rows,
            selection_rows=selection_rows,
            held_out_rows=held_out_rows,
            held_out_fraction=held_out_fraction,
            seed=seed,
            split=True,
        )
        return EvalSplit(np.sort(order[held_out_rows:]), np.sort(order[:held_out_rows]), record)
    record = EvalSplitRecord(
        rows=rows,
        selection_rows=rows,
        held_out_rows=rows,
        held_out_fraction=held_out_fraction,
        seed=seed,
        split=False,
        note=note,
    )
    return EvalSplit(everything, everything, record)


def rows_of(
    arrays: Mapping[str, np.ndarray], rows: np.ndarray, task: TaskSpec, samples: int
) -> dict[str, np.ndarray]:
    """The given rows of the dataset: every per-sample array along its sample axis
    (task.inputs), the labels and any other array holding `samples` rows along axis 0;
    arrays fed whole stay as they are."""
    axes: dict[str, int | None] = {}
    for name in task.inputs:
        binding = task.binding(name)
        if binding.array is not None:
            axes[binding.array] = binding.sample_axis if binding.per_sample else None
    taken: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        axis = axes.get(name, 0 if len(array) == samples else None)
        taken[name] = array if axis is None else np.take(np.asarray(array), rows, axis=axis)
    return taken
