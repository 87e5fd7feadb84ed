"""Models written with onnxscript: functions in onnxscript's Python subset, compiled to
ONNX by onnxscript (module level, as onnxscript resolves names from the module; no
`from __future__ import annotations`: onnxscript reads the annotations as objects)."""

import numpy as np
import onnx
from onnx import numpy_helper
from onnxscript import FLOAT, script
from onnxscript import opset18 as op


@script()
def mlp(input: FLOAT["N", 64], w1: FLOAT[64, 32], w2: FLOAT[32, 10]) -> FLOAT["N", 10]:  # noqa: F821
    return op.MatMul(op.Relu(op.MatMul(input, w1)), w2)


def mlp_model(seed: int = 1) -> onnx.ModelProto:
    """`mlp` as a model whose weights are initializers (onnxscript gives functions
    inputs only): opset 18, a symbolic batch "N", unnamed nodes."""
    model = mlp.to_model_proto()
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 0.125, (64, 32)).astype(np.float32),
        "w2": rng.normal(0, 0.18, (32, 10)).astype(np.float32),
    }
    kept = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["logits" if name == output else name for name in node.output]
    model.graph.output[0].name = "logits"
    onnx.checker.check_model(model, full_check=True)
    return model
