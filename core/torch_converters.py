"""onnx2torch converters for op versions its last release (2024) lacks, registered once
when core.torch_bridge is imported.

GreaterOrEqual and LessOrEqual gained a version 16 (bfloat16 inputs) that onnx2torch
never registered, so a transformer exported at opset 16 or newer (HuggingFace encoders'
attention masks compare positions) could not be converted at all; the computation is the
version 12 one.
"""

from __future__ import annotations

from onnx2torch.node_converters.comparisons import OnnxCompare
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph, OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

# (op type, version) whose computation is onnx2torch's OnnxCompare
_COMPARISONS = (("GreaterOrEqual", 16), ("LessOrEqual", 16))


def _compare(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return OperationConverterResult(
        torch_module=OnnxCompare(operation_type=node.operation_type),
        onnx_mapping=onnx_mapping_from_node(node=node),
    )


def register() -> None:
    """Add the converters onnx2torch has not got (a no-op for those it has)."""
    for op_type, version in _COMPARISONS:
        try:
            get_converter(operation_type=op_type, version=version)
        except NotImplementedError:
            add_converter(operation_type=op_type, version=version)(_compare)


register()
