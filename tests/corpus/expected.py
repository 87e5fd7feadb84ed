"""What each (model, method) of the corpus must do: work, or be refused with this code
and a message naming what is not supported. Everything not listed must work."""

from __future__ import annotations

from tests.corpus.models import CORPUS, OPSETS
from tests.corpus.run import (
    DISTILL_STUDENTS,
    GENERIC_CODES,
    METHODS,
    PRUNE_KINDS,
    QUANTIZE_MODES,
    Cell,
)

# Methods that convert the model to PyTorch (onnx2torch) to train it.
CONVERTED = ("qat", *PRUNE_KINDS, "distill_step_input")
TRAINING = ("qat", *PRUNE_KINDS, *DISTILL_STUDENTS)
# (model, method) -> (code, words the message must hold)
EXPECTED: dict[tuple[str, str], tuple[str, str]] = {}
for _opset in OPSETS:
    _name = f"sklearn_mlp@{_opset}"
    # the "label" output is ArgMax + ai.onnx.ml ArrayFeatureExtractor: no PyTorch op
    EXPECTED |= {(_name, m): ("unsupported_op", "ArrayFeatureExtractor") for m in CONVERTED}
    EXPECTED[(_name, "distill_family")] = ("invalid_student", "the teacher also gives 'label'")
EXPECTED |= {
    ("sklearn_linear_regression", "dynamic"): ("nothing_to_quantize", "outside the ONNX domain"),
    ("sklearn_linear_regression", "static"): ("nothing_to_quantize", "outside the ONNX domain"),
    ("sklearn_linear_regression", "int4"): ("nothing_to_quantize", "no MatMul or Gemm"),
    ("sklearn_linear_regression", "auto"): ("nothing_to_quantize", "no candidate works"),
    ("sklearn_linear_regression", "distill_family"): (
        "invalid_student",
        "this teacher has none",
    ),
    **{
        ("sklearn_linear_regression", m): ("unsupported_op", "ai.onnx.ml.LinearRegressor")
        for m in CONVERTED
    },
    # control flow cannot be rebuilt in PyTorch; a family student replaces it whole
    **{("helper_if", m): ("unsupported_op", "If (1 nodes)") for m in CONVERTED},
    **{("helper_loop", m): ("unsupported_op", "Loop (1 nodes)") for m in CONVERTED},
    # onnx2torch has no GRU; a family student takes one input, the GRU two
    **{("torch_gru_state", m): ("unsupported_op", "GRU (2 nodes)") for m in CONVERTED},
    ("torch_gru_state", "distill_family"): ("invalid_student", "take one input"),
    # the state is bound with its samples on axis 1: PyTorch steps do not take that yet
    **{
        ("torch_gru_state_layers_first", m): ("unsupported_input_binding", "sample axes")
        for m in TRAINING
    },
    # a 314-parameter teacher: no transformer of half its size exists
    ("torch_symbolic_sequence", "distill_family"): ("invalid_student", "smallest transformer"),
}
# To stay fast, the suite leaves some slow runs to scripts/corpus_table.py (which runs
# everything): the training methods on the opset grid's inner exports (onnx2torch sees
# each at its opset up to 17, or converted to 17: the grid's ends, 7 and 21, and the
# dynamo export stand for them), and QAT and distillation (seconds each: capture,
# training, export) where a model kept in the suite takes the same path.
SUITE_SKIPS = frozenset(
    {(f"torch_cnn@{opset}", m) for opset in (9, 11, 13, 15, 17, 19) for m in TRAINING}
    | {(m, "qat") for m in ("torch_cnn@21", "helper_mlp", "onnxscript_mlp", "torch_fixed_batch")}
    | {
        (m, "distill_family")
        for m in ("torch_cnn@21", "torch_cnn@dynamo", "helper_mlp", "helper_loop")
    }
    | {
        (m, "distill_step_input")
        for m in ("torch_cnn@21", "helper_mlp", "onnxscript_mlp", "torch_fixed_batch")
    }
)
# Quantized classifiers keep at least this share of top-1 decisions (hand-built models
# have random weights, so thin margins).
MIN_AGREEMENT = 0.8


def cases(methods: tuple[str, ...]) -> list[tuple[str, str]]:
    """(model, method) pairs the suite runs: every written-up model, minus SUITE_SKIPS."""
    return [
        (name, method)
        for name, model in CORPUS.items()
        if model.pending is None
        for method in methods
        if (name, method) not in SUITE_SKIPS
    ]


def check(cell: Cell) -> None:
    """The cell does what EXPECTED says: it works, or it is refused with the listed code
    and a one-line message holding the listed words; never a generic code."""
    expected = EXPECTED.get((cell.model, cell.method))
    if expected is None:
        assert cell.status == "works", f"refused with {cell.code}: {cell.message}"
        if cell.method in QUANTIZE_MODES and cell.method != "qat" and cell.agreement is not None:
            assert cell.agreement >= MIN_AGREEMENT, f"top-1 agreement {cell.agreement}"
        return
    code, words = expected
    assert cell.status == "refused", f"expected {code}, but it works"
    assert cell.code == code, f"{cell.code}: {cell.message}"
    assert cell.code not in GENERIC_CODES
    message = cell.message or ""
    assert words in message, message
    assert "\n" not in message and "Traceback" not in message


assert set(EXPECTED) <= {(n, m) for n in CORPUS for m in METHODS}, "a typo in EXPECTED"
