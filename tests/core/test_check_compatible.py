"""check_compatible: data that cannot feed the model, or score the task, is refused precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data import ArrayInfo, DatasetInfo, check_compatible, inspect_dataset
from core.errors import IncompatibleData
from core.formats import ModelInfo, TensorInfo, inspect_model
from core.spec import TaskSpec

CAP = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def cnn_info(cnn_onnx: Path) -> ModelInfo:
    return inspect_model(cnn_onnx)


def dataset(**arrays: tuple[list[int], str]) -> DatasetInfo:
    infos = {name: ArrayInfo(shape=shape, dtype=dtype) for name, (shape, dtype) in arrays.items()}
    return DatasetInfo(arrays=infos, samples=next(iter(infos.values())).shape[0])


def model_with_input(dtype: str, shape: list[int | str | None]) -> ModelInfo:
    return ModelInfo(
        opset=17,
        ir_version=8,
        producer="test",
        parameters=0,
        size_bytes=0,
        node_count=1,
        op_types={},
        inputs=[TensorInfo(name="ids", dtype=dtype, shape=shape)],
        outputs=[TensorInfo(name="out", dtype="float32", shape=["batch", 4])],
    )


def test_accepts_matching_data(cnn_info: ModelInfo, digits_test_npz: Path) -> None:
    check_compatible(cnn_info, inspect_dataset(digits_test_npz, CAP), TaskSpec(), need_labels=True)


def test_refuses_a_different_rank(cnn_info: ModelInfo, flat_npz: Path) -> None:
    with pytest.raises(IncompatibleData, match=r"rank 4 .* shape \[450, 64\]"):
        check_compatible(cnn_info, inspect_dataset(flat_npz, CAP), TaskSpec())


def test_refuses_mismatched_fixed_dims(cnn_info: ModelInfo) -> None:
    data = dataset(input=([10, 1, 4, 4], "float32"))
    with pytest.raises(IncompatibleData, match="axis 2: 8 != 4"):
        check_compatible(cnn_info, data, TaskSpec())


def test_symbolic_and_unknown_dims_match_anything() -> None:
    model = model_with_input("float32", ["batch", "seq", None])
    check_compatible(model, dataset(ids=([3, 17, 5], "float32")), TaskSpec())


def test_refuses_a_missing_input_array(cnn_info: ModelInfo) -> None:
    data = dataset(pixels=([10, 1, 8, 8], "float32"))
    with pytest.raises(IncompatibleData, match=r"'input' needs an array named 'input'.*pixels"):
        check_compatible(cnn_info, data, TaskSpec())


def test_maps_inputs_to_arrays_through_the_task(cnn_info: ModelInfo) -> None:
    data = dataset(pixels=([10, 1, 8, 8], "float32"))
    check_compatible(cnn_info, data, TaskSpec(inputs={"input": "pixels"}))


def test_refuses_a_mapping_for_an_unknown_input(cnn_info: ModelInfo) -> None:
    data = dataset(input=([10, 1, 8, 8], "float32"))
    with pytest.raises(IncompatibleData, match=r"task\.inputs maps"):
        check_compatible(cnn_info, data, TaskSpec(inputs={"image": "input"}))


def test_refuses_missing_labels_when_needed(cnn_info: ModelInfo) -> None:
    data = dataset(input=([10, 1, 8, 8], "float32"))
    check_compatible(cnn_info, data, TaskSpec())  # fine: the metric becomes agreement
    with pytest.raises(IncompatibleData, match="needs labels in an array named 'target'"):
        check_compatible(cnn_info, data, TaskSpec(labels="target"), need_labels=True)


def test_refuses_float_labels_for_classification(cnn_info: ModelInfo) -> None:
    data = dataset(input=([10, 1, 8, 8], "float32"), label=([10], "float32"))
    with pytest.raises(IncompatibleData, match="integer class indices"):
        check_compatible(cnn_info, data, TaskSpec())


def test_refuses_float_data_for_an_integer_input() -> None:
    model = model_with_input("int64", ["batch", 16])
    with pytest.raises(IncompatibleData, match="takes int64 but array 'ids' is float32"):
        check_compatible(model, dataset(ids=([3, 16], "float32")), TaskSpec())
    check_compatible(model, dataset(ids=([3, 16], "int32")), TaskSpec())


def test_accepts_float64_data_for_a_float32_input(cnn_info: ModelInfo) -> None:
    check_compatible(cnn_info, dataset(input=([4, 1, 8, 8], "float64")), TaskSpec())


def test_refuses_an_unknown_output(cnn_info: ModelInfo) -> None:
    data = dataset(input=([10, 1, 8, 8], "float32"))
    with pytest.raises(IncompatibleData, match=r"task\.output 'probs' is not a model output"):
        check_compatible(cnn_info, data, TaskSpec(output="probs"))


def test_the_batch_dimension_may_differ_from_a_pinned_one() -> None:
    model = model_with_input("float32", [1, 16])
    check_compatible(model, dataset(ids=([50, 16], "float32")), TaskSpec())


def stateful_model() -> ModelInfo:
    """A streaming model: audio [batch, samples], state [layers, batch, hidden], a scalar
    sample rate."""
    return ModelInfo(
        opset=17,
        ir_version=8,
        producer="test",
        parameters=0,
        size_bytes=0,
        node_count=1,
        op_types={},
        inputs=[
            TensorInfo(name="audio", dtype="float32", shape=["batch", 512]),
            TensorInfo(name="state", dtype="float32", shape=[2, "batch", 64]),
            TensorInfo(name="sr", dtype="int64", shape=[]),
        ],
        outputs=[
            TensorInfo(name="prob", dtype="float32", shape=["batch", 1]),
            TensorInfo(name="new_state", dtype="float32", shape=[2, "batch", 64]),
        ],
    )


STREAMING = dataset(audio=([12, 512], "float32"), state=([2, 12, 64], "float32"))


def test_a_state_with_its_samples_on_axis_1_and_a_constant_sample_rate_are_accepted() -> None:
    task = TaskSpec.model_validate(
        {
            "kind": "embedding",
            "inputs": {"state": {"array": "state", "sample_axis": 1}, "sr": {"constant": 16000}},
        }
    )
    check_compatible(stateful_model(), STREAMING, task)


def test_a_state_transposed_to_batch_first_is_refused_naming_the_axis() -> None:
    # the bug this replaces: axis 0 was skipped for every input, so [batch, layers,
    # hidden] passed against the model's [layers, ?, hidden]
    transposed = dataset(audio=([12, 512], "float32"), state=([12, 2, 64], "float32"))
    task = TaskSpec.model_validate({"kind": "embedding", "inputs": {"sr": {"constant": 16000}}})
    with pytest.raises(IncompatibleData) as raised:
        check_compatible(stateful_model(), transposed, task)
    message = str(raised.value)
    assert "model input 'state' fixes axis 0 to 2, so the samples cannot be there" in message
    assert '{"array": "state", "sample_axis": 1}' in message


def test_a_constant_of_the_wrong_shape_is_refused() -> None:
    task = TaskSpec.model_validate(
        {
            "kind": "embedding",
            "inputs": {"state": {"array": "state", "sample_axis": 1}, "sr": {"constant": [1, 2]}},
        }
    )
    with pytest.raises(IncompatibleData, match=r"model input 'sr'.*the constant"):
        check_compatible(stateful_model(), STREAMING, task)


def test_arrays_that_disagree_on_the_sample_count_are_named() -> None:
    data = dataset(audio=([12, 512], "float32"), state=([2, 11, 64], "float32"))
    task = TaskSpec.model_validate(
        {
            "kind": "embedding",
            "inputs": {"state": {"array": "state", "sample_axis": 1}, "sr": {"constant": 16000}},
        }
    )
    with pytest.raises(IncompatibleData, match=r"audio \(axis 0\): 12, state \(axis 1\): 11"):
        check_compatible(stateful_model(), data, task)


def test_a_missing_scalar_input_says_which_binding_to_give() -> None:
    task = TaskSpec.model_validate(
        {"kind": "embedding", "inputs": {"state": {"array": "state", "sample_axis": 1}}}
    )
    with pytest.raises(IncompatibleData, match="model input 'sr' needs an array named 'sr'"):
        check_compatible(stateful_model(), STREAMING, task)
