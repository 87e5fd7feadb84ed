"""N:M pruning: N of every M consecutive input weights kept, in the exported ONNX too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from pydantic import ValidationError

from core.context import RunContext
from core.data import load_arrays
from core.formats import inspect_model
from core.prune.nm import nm_mask
from core.prune.report import SEMI_STRUCTURED_NOTE
from core.registry import StepData, StepOutput, get_step
from core.spec import PRUNE_STEP_ADAPTER, TaskSpec


def nonzeros_per_group(weight: np.ndarray, m: int) -> np.ndarray:
    """Nonzero counts of every m consecutive weights along dim 1 (the input dim)."""
    grouped = np.moveaxis(weight, 1, -1)
    return np.count_nonzero(grouped.reshape(-1, m), axis=1)


def test_nm_mask_keeps_the_n_largest_of_every_m_along_the_input_dim() -> None:
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.1, 0.4, 0.3, 0.2]])

    mask = nm_mask(scores, 2, 4)

    assert mask.tolist() == [[True, False, True, False, False, True, True, False]]


def test_nm_mask_on_a_conv_weight_groups_input_channels() -> None:
    scores = torch.rand(8, 16, 3, 3, generator=torch.Generator().manual_seed(0))

    mask = nm_mask(scores, 2, 4).numpy()

    assert (nonzeros_per_group(mask, 4) == 2).all()
    # a 1:4 mask along the input channels differs from one along the kernel positions
    assert mask.shape == (8, 16, 3, 3)


@pytest.fixture(scope="module")
def nm_output(
    cnn_onnx: Path,
    digits_test_npz: Path,
    digits_train_npz: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> StepOutput:
    train = load_arrays(digits_train_npz)
    data = StepData(
        eval_arrays=load_arrays(digits_test_npz),
        calibration_arrays=train,
        inputs=inspect_model(cnn_onnx).inputs,
        task=TaskSpec(),
        train_arrays={name: array[:256] for name, array in train.items()},
    )
    config = PRUNE_STEP_ADAPTER.validate_python(
        {"method": "prune", "kind": "n_m", "fine_tune": {"epochs": 1, "batch_size": 32}}
    )
    ctx = RunContext(work_dir=tmp_path_factory.mktemp("nm"), seed=3)
    return get_step("prune")(cnn_onnx, config, data, ctx)


def test_2_4_pattern_holds_in_the_exported_onnx_weights(nm_output: StepOutput) -> None:
    weights = {
        tuple(init.dims): numpy_helper.to_array(init)
        for init in onnx.load(nm_output.model_path).graph.initializer
    }

    # the second conv (16 inputs) and the first Linear (2048 inputs); first/last skipped
    for shape in [(32, 16, 3, 3), (128, 2048)]:
        assert (nonzeros_per_group(weights[shape], 4) == 2).all()
    assert np.count_nonzero(weights[(16, 1, 3, 3)]) == 16 * 9
    assert np.count_nonzero(weights[(10, 128)]) == 10 * 128


def test_nm_reports_the_pattern_sparsity_and_the_gpu_note(nm_output: StepOutput) -> None:
    details = nm_output.details

    assert details["kind"] == "n_m" and details["pattern"] == "2:4"
    assert SEMI_STRUCTURED_NOTE in details["notes"]
    pruned = [row for row in details["layers"] if row["target_sparsity"] is not None]
    assert [row["sparsity"] for row in pruned] == [0.5, 0.5]
    assert len(details["epochs"]) == 1


def test_n_must_be_below_m() -> None:
    with pytest.raises(ValidationError, match="n < m"):
        PRUNE_STEP_ADAPTER.validate_python(
            {"method": "prune", "kind": "n_m", "n": 4, "m": 4, "fine_tune": {"epochs": 0}}
        )
