"""Structured pruning (torch-pruning on the bridge's GraphModule): channels really go,
the graph stays consistent across residual Adds, BatchNorm and depthwise convs, and the
result exports to ONNX that runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from core.context import RunContext
from core.errors import IncompatibleData, UnsupportedModel
from core.formats import inspect_model
from core.prune.structured import prunable_layers, prune_channels, prune_structured
from core.registry import StepData
from core.spec import StructuredPrune, TaskSpec
from core.torch_bridge import onnx_to_torch, torch_to_onnx
from service.examples import (
    DepthwiseSeparableCNN,
    ResidualCNN,
    accuracy,
    digits_arrays,
    train_classifier,
)

X_TRAIN, Y_TRAIN = digits_arrays("train")
X_TEST, Y_TEST = digits_arrays("test")
EXAMPLE = {"input": torch.from_numpy(X_TEST[:2])}


def structured(**fields: object) -> StructuredPrune:
    return StructuredPrune.model_validate({"method": "prune", "kind": "structured", **fields})


def step_data(model_path: Path) -> StepData:
    return StepData(
        eval_arrays={"input": X_TEST, "label": Y_TEST},
        calibration_arrays={"input": X_TEST},
        inputs=inspect_model(model_path).inputs,
        task=TaskSpec(),
        train_arrays={"input": X_TRAIN[:256], "label": Y_TRAIN[:256]},
    )


def export_keeping_batchnorm(module: torch.nn.Module, path: Path) -> Path:
    """TorchScript export with BatchNormalization nodes kept (not folded into Conv); the
    exporter then deduplicates equal initializers through Identity nodes, which the bridge
    must handle."""
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (torch.from_numpy(X_TEST[:1]),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
        )
    return path


@pytest.fixture(scope="module")
def residual_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = train_classifier(ResidualCNN(width=8), X_TRAIN, Y_TRAIN, epochs=1)
    return export_keeping_batchnorm(model, tmp_path_factory.mktemp("res") / "residual.onnx")


@pytest.fixture(scope="module")
def depthwise_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = train_classifier(DepthwiseSeparableCNN(width=8, blocks=2), X_TRAIN, Y_TRAIN, epochs=1)
    return export_keeping_batchnorm(model, tmp_path_factory.mktemp("dw") / "depthwise.onnx")


def prune(
    model_path: Path, tmp_path: Path, config: StructuredPrune, fine_tune: object = None
) -> tuple[torch.nn.Module, dict]:
    module = onnx_to_torch(model_path, tmp_path / "torch")
    return prune_structured(
        module,
        config,
        dict(EXAMPLE),
        step_data(model_path),
        RunContext(work_dir=tmp_path),
        fine_tune,  # type: ignore[arg-type]
    )


def export_and_run(module: torch.nn.Module, model_path: Path, tmp_path: Path) -> onnx.ModelProto:
    info = inspect_model(model_path)
    path = torch_to_onnx(
        module,
        {"input": X_TEST[:2]},
        tmp_path / "pruned.onnx",
        inputs=info.inputs,
        outputs=info.outputs,
        opset=18,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": X_TEST[:5]})
    assert logits.shape == (5, 10)
    with torch.no_grad():
        expected = module(torch.from_numpy(X_TEST[:5])).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    return onnx.load(path)


def conv_out_channels(model: onnx.ModelProto) -> list[int]:
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    return [weights[n.input[1]][0] for n in model.graph.node if n.op_type == "Conv"]


def test_half_of_each_layers_channels_go_and_the_onnx_conv_weights_shrink(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    module, details = prune(cnn_onnx, tmp_path, structured(sparsity=0.5))

    channels = details["channels"]
    assert [before for before, _ in channels.values()] == [16, 32, 128, 10]
    assert [after for _, after in channels.values()] == [8, 16, 64, 10]  # classes kept
    assert details["torch_parameters"]["after"] < details["torch_parameters"]["before"] / 2
    assert details["macs"]["after"] < details["macs"]["before"] / 2
    assert details["removed_channel_fraction"] == pytest.approx(1 - 98 / 186)
    assert conv_out_channels(export_and_run(module, cnn_onnx, tmp_path)) == [8, 16]


def test_residual_adds_and_batchnorm_stay_consistent(residual_onnx: Path, tmp_path: Path) -> None:
    module, details = prune(residual_onnx, tmp_path, structured(sparsity=0.5))

    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms, "the export kept BatchNormalization"
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    # every BatchNorm follows a Conv and shrank with it
    assert [n.num_features for n in norms] == [c.out_channels for c in convs]
    assert all(n.running_mean.shape[0] == n.num_features for n in norms)
    assert details["macs"]["after"] < details["macs"]["before"] / 2
    exported = export_and_run(module, residual_onnx, tmp_path)
    assert conv_out_channels(exported) == [4, 4, 4, 8, 8, 8]


def test_depthwise_convs_keep_one_group_per_channel(depthwise_onnx: Path, tmp_path: Path) -> None:
    module, _ = prune(depthwise_onnx, tmp_path, structured(sparsity=0.5, importance="l2"))

    depthwise = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise
    for conv in depthwise:
        assert conv.groups == conv.in_channels == conv.out_channels
        assert conv.weight.shape[1] == 1
    export_and_run(module, depthwise_onnx, tmp_path)


def test_skip_layers_and_layer_sparsity_override_the_ratio(cnn_onnx: Path, tmp_path: Path) -> None:
    names = list(prunable_layers(onnx_to_torch(cnn_onnx, tmp_path / "names")))
    config = structured(
        sparsity=0.5, skip_layers=[names[0], names[-1]], layer_sparsity={names[1]: 0.75}
    )
    _, details = prune(cnn_onnx, tmp_path, config)

    assert details["channels"][names[0]] == [16, 16]
    assert details["channels"][names[1]] == [32, 8]
    assert details["channels"][names[2]] == [128, 64]
    assert details["ignored_layers"] == [names[0], names[-1]]


def test_unknown_layer_names_are_an_input_error(cnn_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(IncompatibleData, match="no_such_layer"):
        prune(cnn_onnx, tmp_path, structured(skip_layers=["no_such_layer"]))


def test_global_scope_prunes_the_requested_share_overall(cnn_onnx: Path, tmp_path: Path) -> None:
    _, details = prune(cnn_onnx, tmp_path, structured(sparsity=0.5, scope="global"))

    pruned = {name: pair for name, pair in details["channels"].items() if pair[0] != 10}
    before = sum(b for b, _ in pruned.values())
    after = sum(a for _, a in pruned.values())
    assert after == pytest.approx(before / 2, abs=3)
    assert len({a / b for b, a in pruned.values()}) > 1  # ratios differ by layer


def test_iterations_prune_in_rounds_and_fine_tune_between_them(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    rounds: list[int] = []

    def fine_tune(module: torch.nn.Module) -> None:
        rounds.append(sum(p.numel() for p in module.parameters()))

    _, details = prune(cnn_onnx, tmp_path, structured(sparsity=0.5, iterations=3), fine_tune)

    assert len(rounds) == 2  # between rounds; the last fine-tune is the step's
    assert rounds[0] > rounds[1] > details["torch_parameters"]["after"]
    assert [a for _, a in details["channels"].values()] == [8, 16, 64, 10]


def test_taylor_importance_uses_the_training_loss(cnn_onnx: Path, tmp_path: Path) -> None:
    module, details = prune(cnn_onnx, tmp_path, structured(sparsity=0.5, importance="taylor"))

    assert details["importance"] == "taylor"
    assert [a for _, a in details["channels"].values()] == [8, 16, 64, 10]
    assert all(p.grad is None for p in module.parameters())  # gradients cleared


def test_taylor_importance_without_training_labels_is_an_input_error(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    module = onnx_to_torch(cnn_onnx, tmp_path / "torch")
    data = step_data(cnn_onnx)
    unlabelled = StepData(
        eval_arrays=data.eval_arrays,
        calibration_arrays=data.calibration_arrays,
        inputs=data.inputs,
        task=data.task,
        train_arrays={"input": X_TRAIN[:64]},
    )
    with pytest.raises(IncompatibleData, match="taylor"):
        prune_structured(
            module,
            structured(importance="taylor"),
            dict(EXAMPLE),
            unlabelled,
            RunContext(work_dir=tmp_path),
            None,
        )


def test_accuracy_comes_back_after_a_short_fine_tune(
    cnn_onnx: Path, tmp_path: Path, torch_test_accuracy: float
) -> None:
    module, _ = prune(cnn_onnx, tmp_path, structured(sparsity=0.5))
    train_classifier(module, X_TRAIN, Y_TRAIN, epochs=3)

    assert accuracy(module, X_TEST, Y_TEST) >= torch_test_accuracy - 0.03


def test_the_prune_step_runs_the_structured_kind_end_to_end(
    cnn_onnx: Path, tmp_path: Path, torch_test_accuracy: float
) -> None:
    from core.registry import get_step

    config = structured(sparsity=0.5, iterations=2, fine_tune={"epochs": 1})
    output = get_step("prune")(
        cnn_onnx, config, step_data(cnn_onnx), RunContext(work_dir=tmp_path / "step")
    )

    details = output.details
    assert details["kind"] == "structured"
    assert [a for _, a in details["channels"].values()] == [8, 16, 64, 10]
    assert len(details["epochs"]) == 2  # one between the rounds, one after the last
    assert details["eval_metric"] >= torch_test_accuracy - 0.05
    assert conv_out_channels(onnx.load(output.model_path)) == [8, 16]


class _FlattenToAConstantWidth(torch.nn.Module):
    """conv (4 channels) -> reshape(-1, 64) -> linear: the reshape's width is the channel
    count times 16, which torch-pruning does not rewrite."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).reshape(-1, 64))


def test_pruning_that_breaks_an_op_is_refused_naming_the_node(tmp_path: Path) -> None:
    module = torch.fx.symbolic_trace(_FlattenToAConstantWidth())
    config = StructuredPrune(method="prune", kind="structured", sparsity=0.5)
    example = {"input": torch.rand(2, 1, 4, 4)}

    with pytest.raises(UnsupportedModel) as refused:
        prune_channels(module, config, example, RunContext(work_dir=tmp_path))

    assert refused.value.code == "channel_dependency_untraced"
    assert "torch-pruning could not follow the removed channels" in refused.value.message
    assert refused.value.message.startswith(
        "structured pruning broke the graph at node 'fc' (Linear)"
    )
