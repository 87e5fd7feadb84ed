"""What lets a step that trains on CUDA hand its model back to the CPU (checked without a
GPU: the graph is rewritten, never run on the GPU)."""

from __future__ import annotations

import torch
from torch import fx

from core.prune.structured import on_device
from core.quantize.qat import graph_to_cpu


def cuda_factory_graph() -> fx.GraphModule:
    """y = x + ones(2, device="cuda"): a factory op torch.export records with its device."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    ones = graph.call_function(torch.ones, (2,), {"device": torch.device("cuda")})
    graph.output(graph.call_function(torch.add, (x, ones)))
    return fx.GraphModule(torch.nn.Module(), graph)


def test_a_graph_captured_on_cuda_is_rewritten_to_create_its_tensors_on_the_cpu() -> None:
    module = graph_to_cpu(cuda_factory_graph())
    devices = [node.kwargs.get("device") for node in module.graph.nodes]
    assert torch.device("cuda") not in devices
    assert torch.equal(module(torch.zeros(2)), torch.ones(2))


def test_example_inputs_follow_the_module_to_its_device() -> None:
    module = torch.nn.Linear(2, 2).to(torch.float64)
    moved = on_device({"input": torch.zeros(1, 2)}, module)
    assert moved["input"].device == next(module.parameters()).device
