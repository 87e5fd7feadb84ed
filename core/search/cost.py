"""What a trial's architecture costs, measured: parameters and size of its ONNX file,
multiply-accumulates of one sample, and latency in ONNX Runtime at the job's batch size.

None of these depend on the weights' values, so they are measured on the untrained
export, before training: a trial over a hard limit is then never trained. MACs count
convolutions and matrix products (the operations that dominate), as is usual, by one
walk over the shape-inferred ONNX graph for the trials and the uploaded model alike (the
weighted objective divides one by the other); torch's FlopCounterMode is the fallback.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from onnx import shape_inference

from core.context import MeasureSettings
from core.data import Feeds
from core.formats import load_model
from core.measure import count_parameters, file_size, measure_latency

if TYPE_CHECKING:
    import torch
    from torch import nn

COST_NAMES = ("parameters", "macs", "size_bytes", "latency_ms")


@dataclass(frozen=True)
class Costs:
    parameters: int
    macs: int
    size_bytes: int
    latency_ms: float  # median, at `latency_batch_size` rows

    def value(self, name: str) -> float:
        return float(getattr(self, name))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_costs(
    onnx_path: Path,
    module: nn.Module,
    example: torch.Tensor,
    latency_feeds: Feeds,
    batch_size: int,
    settings: MeasureSettings,
    device: str,
) -> Costs:
    """Costs of the exported `onnx_path`: size, parameters, latency on `latency_feeds`
    (which hold `batch_size` rows) and MACs of one sample, counted on the ONNX graph as
    for the original model (torch's count of `module` on `example` when the graph's
    shapes cannot be inferred)."""
    latency = measure_latency(onnx_path, latency_feeds, batch_size, settings, device)
    macs = onnx_macs(onnx_path)
    return Costs(
        parameters=count_parameters(onnx_path),
        macs=macs if macs is not None else torch_macs(module, example),
        size_bytes=file_size(onnx_path),
        latency_ms=latency.median_ms,
    )


def torch_macs(module: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on `example` (FLOPs of convolutions and
    matrix products, halved)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    # the transformer's inference fast path is one fused op the counter does not see
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(example)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
        module.train(was_training)
    return int(counter.get_total_flops()) // 2


def onnx_macs(path: Path) -> int | None:
    """Multiply-accumulates of one sample through the ONNX model's Conv, ConvTranspose,
    Gemm and MatMul nodes, from shapes inferred with the batch dim set to 1; None when
    a needed shape cannot be inferred (e.g. shapes computed from data)."""
    model = load_model(path)
    graph_inputs = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in graph_inputs:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return None
    shapes = _known_shapes(inferred)
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in inferred.graph.node:
        macs = _node_macs(node, shapes)
        if macs is None:
            return None
        total += macs
    return total


def _known_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(dim.HasField("dim_value") for dim in dims):
            shapes[value.name] = [int(dim.dim_value) for dim in dims]
    return shapes


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int | None:
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0
    needed = [node.input[0], node.input[1], node.output[0]]
    if any(name not in shapes for name in needed):
        return None
    first, second, out = (shapes[name] for name in needed)
    if node.op_type == "Conv":  # every output element: C_in/groups * kernel MACs
        return math.prod(out) * math.prod(second[1:])
    if node.op_type == "ConvTranspose":  # every input element feeds C_out/groups * kernel
        return math.prod(first) * math.prod(second[1:])
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        inner = first[0] if trans_a else first[-1]
        return math.prod(out) * inner
    return math.prod(out) * first[-1]  # MatMul: [..., M, K] x [..., K, N]
