"""Pruning schedules: one-shot prunes once; TF-MOT's PolynomialDecay gives its formula's
values every `frequency` steps, always ends on the final sparsity, and needs fine-tuning."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.context import RunContext
from core.data import load_arrays
from core.errors import InputError
from core.formats import inspect_model
from core.prune.schedule import OneShot, PolynomialDecay
from core.prune.unstructured import make_schedule
from core.registry import StepData, get_step
from core.spec import PRUNE_STEP_ADAPTER, TaskSpec, UnstructuredPrune


def polynomial(**overrides: float) -> PolynomialDecay:
    settings = {
        "initial_sparsity": 0.0,
        "begin_step": 0,
        "end_step": 100,
        "frequency": 10,
        "power": 3.0,
    } | overrides
    return PolynomialDecay(**settings)  # type: ignore[arg-type]


def test_one_shot_prunes_once_before_training_to_the_final_sparsity() -> None:
    schedule = OneShot()

    assert [step for step in range(50) if schedule.is_pruning_step(step)] == [0]
    assert schedule.sparsity(0, 0.7) == 0.7


def test_polynomial_decay_follows_the_tf_mot_formula() -> None:
    schedule = polynomial(initial_sparsity=0.1, begin_step=20, end_step=120)

    def expected(step: int) -> float:
        return 0.8 + (0.1 - 0.8) * (1 - (step - 20) / (120 - 20)) ** 3

    assert schedule.sparsity(20, 0.8) == pytest.approx(0.1)
    assert schedule.sparsity(70, 0.8) == pytest.approx(expected(70))
    assert schedule.sparsity(70, 0.8) == pytest.approx(0.8 - 0.7 * 0.125)
    assert schedule.sparsity(120, 0.8) == pytest.approx(0.8)
    # clipped outside [begin_step, end_step]
    assert schedule.sparsity(0, 0.8) == pytest.approx(0.1)
    assert schedule.sparsity(500, 0.8) == pytest.approx(0.8)


def test_polynomial_decay_rises_monotonically() -> None:
    schedule = polynomial()
    values = [schedule.sparsity(step, 0.9) for step in range(0, 101)]

    assert values == sorted(values)


def test_polynomial_decay_prunes_every_frequency_steps_and_at_end_step() -> None:
    schedule = polynomial(begin_step=5, end_step=37, frequency=10)

    assert [s for s in range(60) if schedule.is_pruning_step(s)] == [5, 15, 25, 35, 37]
    assert schedule.pruning_steps() == [5, 15, 25, 35, 37]


def test_a_layer_whose_final_sparsity_is_below_the_initial_one_starts_at_its_final() -> None:
    assert polynomial(initial_sparsity=0.5).sparsity(0, 0.2) == pytest.approx(0.2)


def test_polynomial_decay_needs_end_step_after_begin_step() -> None:
    with pytest.raises(InputError, match="end_step"):
        polynomial(begin_step=10, end_step=10)


def unstructured(**fields: object) -> UnstructuredPrune:
    config = PRUNE_STEP_ADAPTER.validate_python(
        {"method": "prune", "schedule": "polynomial"} | fields
    )
    assert isinstance(config, UnstructuredPrune)
    return config


def test_polynomial_schedule_ends_on_the_last_optimizer_step_by_default() -> None:
    schedule = make_schedule(unstructured(frequency=4), total_steps=32)

    assert isinstance(schedule, PolynomialDecay)
    assert schedule.end_step == 32
    assert schedule.pruning_steps()[-1] == 32


def test_polynomial_schedule_without_fine_tuning_is_refused() -> None:
    with pytest.raises(InputError, match=r"fine_tune\.epochs"):
        make_schedule(unstructured(), total_steps=0)


def test_polynomial_end_step_past_the_fine_tuning_is_refused() -> None:
    with pytest.raises(InputError, match="past the last optimizer step"):
        make_schedule(unstructured(end_step=100), total_steps=32)


def test_polynomial_pruning_reaches_the_final_sparsity_and_reports_each_epoch(
    cnn_onnx: Path, digits_test_npz: Path, digits_train_npz: Path, tmp_path: Path
) -> None:
    train = load_arrays(digits_train_npz)
    data = StepData(
        eval_arrays=load_arrays(digits_test_npz),
        calibration_arrays=train,
        inputs=inspect_model(cnn_onnx).inputs,
        task=TaskSpec(),
        train_arrays={name: array[:128] for name, array in train.items()},
    )
    config = unstructured(
        sparsity=0.75,
        scope="local",
        frequency=3,
        begin_step=1,
        fine_tune={"epochs": 2, "batch_size": 32},
    )
    events: list[str] = []
    ctx = RunContext(work_dir=tmp_path, on_progress=lambda p, m, d: events.append(m))

    output = get_step("prune")(cnn_onnx, config, data, ctx)

    details = output.details
    pruned = [row for row in details["layers"] if row["target_sparsity"] is not None]
    assert [row["sparsity"] for row in pruned] == [pytest.approx(0.75, abs=1e-3)] * 2
    # 128 samples / 32 = 4 steps an epoch: prune at 1, 4, 7 and 8 (end_step)
    assert details["end_step"] == 8
    assert details["pruning_steps"] == 4
    assert [m for m in events if "epoch" in m] == [
        "prune fine-tune epoch 1/2",
        "prune fine-tune epoch 2/2",
    ]
