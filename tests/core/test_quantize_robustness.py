"""Quantization never crashes on the models people upload.

Over common architectures (MobileNet-, ResNet-style, Transformer, LSTM, GRU), odd graphs
(hard activations, upsampling, If/Loop holding weights, symbolic sequence lengths, a graph
shape inference cannot finish) and exports from legacy opset 7 to the dynamo exporter's 18,
each mode either returns a model that passes the checker, runs and agrees with the
original, or fails with a specific EngineError whose message names the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import quantize_dynamic

from core.context import RunContext
from core.errors import EngineError
from core.formats import inspect_model
from core.registry import StepData, StepOutput, get_step
from core.spec import QUANTIZE_STEP_ADAPTER, TaskSpec
from service.examples import (
    DepthwiseSeparableCNN,
    RecurrentClassifier,
    ResidualCNN,
    TransformerEncoderClassifier,
    digits_arrays,
    digits_sequences,
    export_onnx,
    train_classifier,
)
from tests.core import zoo

# The exporters warn about old opsets, traced Python conditionals and RNN batch sizes:
# exporting at those opsets is the point here.
pytestmark = pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning", "ignore::UserWarning:torch", "ignore::FutureWarning"
)

# Small, briefly trained: agreement needs real decision margins, not accuracy.
TRAINED: dict[str, tuple[Callable[[], torch.nn.Module], str]] = {
    "depthwise": (lambda: DepthwiseSeparableCNN(width=8, blocks=2), "images"),
    "residual": (lambda: ResidualCNN(width=8), "images"),
    "hard_activations": (lambda: zoo.HardActivationNet(), "images"),
    "upsampling": (lambda: zoo.UpsamplingNet(), "images"),
    "transformer": (
        lambda: TransformerEncoderClassifier(d_model=16, heads=2, layers=2, ff=32),
        "sequences",
    ),
    "lstm": (lambda: RecurrentClassifier("lstm", hidden=16), "sequences"),
    "gru": (lambda: RecurrentClassifier("gru", hidden=16), "sequences"),
    "symbolic_sequence": (lambda: zoo.SequenceMLP(), "sequences"),
}
HAND_BUILT: dict[str, Callable[[], onnx.ModelProto]] = {
    "if": zoo.if_model,
    "loop": zoo.loop_model,
    "uninferable_shapes": zoo.uninferable_shapes_model,
    "conv_only": zoo.conv_only_model,
}
# "<architecture>@<opset or dynamo>" for exports; the TorchScript exporter writes
# attention only from opset 14, HardSwish from 14 (HardSigmoid + Mul below), Upsample
# below opset 10 and Resize from 10.
MODELS = [
    "digits_cnn@7",  # IR version 3: initializers are graph inputs too
    "depthwise@11",
    "depthwise@17",
    "residual@12",
    "residual@dynamo",
    "hard_activations@11",
    "hard_activations@17",
    "upsampling@10",
    "upsampling@13",
    "transformer@17",
    "transformer@dynamo",
    "lstm@13",
    "gru@17",
    "symbolic_sequence@17",
    "if",
    "loop",
    "uninferable_shapes",
    "conv_only",
    "already_quantized",
]
INT8_AND_FP16 = ("dynamic", "static", "fp16")
# int4's accuracy is tested on an MLP in test_quantize_modes; on models as small as these
# (16-wide attention) 4-bit weights do cost agreement, which is the tuner's call to judge.
CASES = [(model, mode) for model in MODELS for mode in INT8_AND_FP16] + [
    ("if", "int4"),
    ("conv_only", "int4"),
]
# (model, mode) -> (error code, words the message must contain); all else must succeed.
EXPECTED_FAILURES: dict[tuple[str, str], tuple[str, str]] = {
    ("conv_only", "int4"): ("nothing_to_quantize", "no MatMul or Gemm"),
    **{
        ("already_quantized", mode): ("already_quantized", "already quantized")
        for mode in INT8_AND_FP16
    },
}
# Share of eval samples whose top class is unchanged (hand-built graphs have random
# weights, so their margins are thin).
MIN_AGREEMENT = {"dynamic": 0.93, "static": 0.93, "fp16": 0.99, "int4": 0.9}
EVAL_ROWS = 256


@dataclass(frozen=True)
class ZooModel:
    path: Path
    data: StepData


class Zoo:
    """Builds each model once, on first use, and quantizes each (model, mode) once."""

    def __init__(self, folder: Path, digits_cnn: torch.nn.Module) -> None:
        self.folder = folder
        self.digits_cnn = digits_cnn
        self.models: dict[str, ZooModel] = {}
        self.trained: dict[str, torch.nn.Module] = {}
        self.results: dict[tuple[str, str], StepOutput | EngineError] = {}

    def model(self, name: str) -> ZooModel:
        if name not in self.models:
            path, kind = self._build(name, self.folder / f"{name.replace('@', '_')}.onnx")
            self.models[name] = ZooModel(path, _step_data(path, kind))
        return self.models[name]

    def quantized(self, name: str, mode: str) -> StepOutput | EngineError:
        """The step's output, or the EngineError it raised (anything else propagates)."""
        if (name, mode) not in self.results:
            model = self.model(name)
            spec = {"method": "quantize", "mode": mode}
            if mode == "static":
                spec |= {"calibration_samples": 64, "calibration_batch_size": 32}
            work_dir = self.folder / "runs" / f"{name.replace('@', '_')}-{mode}"
            try:
                self.results[(name, mode)] = get_step("quantize")(
                    model.path,
                    QUANTIZE_STEP_ADAPTER.validate_python(spec),
                    model.data,
                    RunContext(work_dir=work_dir),
                )
            except EngineError as error:
                self.results[(name, mode)] = error
        return self.results[(name, mode)]

    def _build(self, name: str, path: Path) -> tuple[Path, str]:
        if name in HAND_BUILT:
            return zoo.save(HAND_BUILT[name](), path), "images"
        if name == "already_quantized":
            source = self.model("residual@12").path
            quantize_dynamic(source, path)
            return path, "images"
        architecture, export = name.split("@")
        if architecture == "digits_cnn":
            example, _ = digits_arrays("test")
            return export_onnx(self.digits_cnn, example[:1], path, opset=int(export)), "images"
        module, kind = self._trained(architecture)
        example = _eval_inputs(kind)[:2]
        if architecture == "symbolic_sequence":
            return zoo.export_with_symbolic_sequence(module, example, path, int(export)), kind
        return zoo.export_at(module, example[:1], path, export), kind

    def _trained(self, architecture: str) -> tuple[torch.nn.Module, str]:
        make, kind = TRAINED[architecture]
        if architecture not in self.trained:
            x, y = digits_arrays("train") if kind == "images" else digits_sequences("train")
            self.trained[architecture] = train_classifier(
                make(), x[:512], y[:512], epochs=2, lr=3e-3, seed=0
            )
        return self.trained[architecture], kind


def _eval_inputs(kind: str) -> np.ndarray:
    x, _ = digits_arrays("test") if kind == "images" else digits_sequences("test")
    return x[:EVAL_ROWS]


def _step_data(path: Path, kind: str) -> StepData:
    x, _ = digits_arrays("train") if kind == "images" else digits_sequences("train")
    return StepData(
        eval_arrays={"input": _eval_inputs(kind)},
        calibration_arrays={"input": x[:EVAL_ROWS]},
        inputs=inspect_model(path).inputs,
        task=TaskSpec(),
    )


def _top_classes(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": inputs})[0]).argmax(axis=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, digits_cnn: torch.nn.Module) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"), digits_cnn)


@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_quantize_returns_an_agreeing_model_or_a_named_error(
    models: Zoo, name: str, mode: str
) -> None:
    result = models.quantized(name, mode)
    expected_failure = EXPECTED_FAILURES.get((name, mode))

    if isinstance(result, EngineError):
        assert expected_failure is not None, f"unexpected {result.code}: {result}"
        code, words = expected_failure
        assert result.code == code
        assert words in str(result)
        return
    assert expected_failure is None, f"expected {expected_failure[0]}, but it succeeded"
    onnx.checker.check_model(str(result.model_path))
    model = models.model(name)
    inputs = model.data.eval_arrays["input"]
    agreement = np.mean(_top_classes(result.model_path, inputs) == _top_classes(model.path, inputs))
    assert agreement >= MIN_AGREEMENT[mode]
    assert {"size_ratio", "unquantized_subgraph_weights"} <= result.details.keys()


@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize(
    ("name", "weights"), [("if", zoo.IF_SUBGRAPH_WEIGHTS), ("loop", zoo.LOOP_SUBGRAPH_WEIGHTS)]
)
def test_int8_reports_the_float_weights_it_left_in_control_flow(
    models: Zoo, name: str, weights: dict[str, int], mode: str
) -> None:
    result = models.quantized(name, mode)
    assert isinstance(result, StepOutput)
    assert result.details["unquantized_subgraph_weights"] == weights


def test_fp16_converts_weights_inside_control_flow_too(models: Zoo) -> None:
    for name in ("if", "loop"):
        result = models.quantized(name, "fp16")
        assert isinstance(result, StepOutput)
        assert result.details["unquantized_subgraph_weights"] == {"count": 0, "bytes": 0}


def test_int4_quantizes_matmuls_inside_if_branches(models: Zoo) -> None:
    result = models.quantized("if", "int4")

    assert isinstance(result, StepOutput)
    assert result.details["matmuls_quantized"] == 3  # the main graph's and both branches'
    # only the branches' (10,) biases stay float
    assert result.details["unquantized_subgraph_weights"] == {"count": 2, "bytes": 80}


def test_an_if_reading_the_outer_scope_is_put_back_in_order(models: Zoo) -> None:
    """onnxruntime's quantizer moves the If before the node computing what its branches
    read; the step's checker would refuse the model without the reordering."""
    result = models.quantized("if", "dynamic")
    assert isinstance(result, StepOutput)
    assert result.details["nodes_reordered_after_quantization"] is True


def test_a_legacy_ir_model_is_modernized_before_quantizing(models: Zoo) -> None:
    for mode in ("dynamic", "static"):
        result = models.quantized("digits_cnn@7", mode)
        assert isinstance(result, StepOutput)
        assert result.details["ir_version_upgraded_from"] == 3


def test_failed_shape_inference_falls_back_and_leaves_no_files_behind(
    models: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime's symbolic shape inference dumps the model into the working directory
    when it fails; the step must clean that up (each failure would leak a model's size)."""
    model = models.model("uninferable_shapes")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    step = QUANTIZE_STEP_ADAPTER.validate_python(
        {"method": "quantize", "mode": "static", "calibration_samples": 32}
    )

    output = get_step("quantize")(
        model.path, step, model.data, RunContext(work_dir=tmp_path / "work")
    )

    assert output.details["pre_process"].startswith("without symbolic shape inference")
    assert "Incomplete symbolic shape inference" in output.details["pre_process"]
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "input_shape"),
    [
        (lambda: DepthwiseSeparableCNN(width=32, blocks=6, input_size=32), (2, 1, 32, 32)),
        (lambda: ResidualCNN(width=16, stages=3, blocks_per_stage=2), (2, 1, 8, 8)),
        (lambda: TransformerEncoderClassifier(d_model=64, heads=8, layers=3, ff=128), (2, 8, 8)),
        (lambda: RecurrentClassifier("gru", hidden=64, layers=2), (2, 8, 8)),
    ],
    ids=["depthwise", "residual", "transformer", "gru"],
)
def test_example_architectures_scale_up_for_benchmarks(
    make: Callable[[], torch.nn.Module], input_shape: tuple[int, ...]
) -> None:
    with torch.no_grad():
        assert make().eval()(torch.zeros(input_shape)).shape == (2, 10)
