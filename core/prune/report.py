"""What pruning did: sparsity per layer and overall, parameters, and compressed size.

Unstructured and N:M sparsity leave every tensor dense in the ONNX file: the file is as
large as before and ONNX Runtime runs it as fast as before. What zeros buy is a smaller
*compressed* file (zip/deflate squeezes runs of zeros), so that is what is reported.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import numpy_helper

from core.formats import load_model
from core.prune.masks import layer_weight, prunable_layers

if TYPE_CHECKING:
    from torch import nn

UNSTRUCTURED_NOTE = (
    "ONNX Runtime gains no speed from unstructured sparsity: expect the same latency; "
    "the gain is the compressed size"
)
SEMI_STRUCTURED_NOTE = (
    "2:4 semi-structured: speedup needs GPU sparse kernels; on CPU this is a masked dense model"
)


def zip_size_bytes(path: Path) -> int:
    """The size of `path` in a deflate-compressed zip (what a download of it weighs)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.write(path, arcname=path.name)
    return buffer.getbuffer().nbytes


def layer_table(module: nn.Module, target_sparsity: dict[str, float]) -> list[dict[str, Any]]:
    """One row per prunable layer: its weight's shape, parameters, nonzero weights,
    sparsity, and the sparsity it was configured to (None: left alone)."""
    rows = []
    for name, layer in prunable_layers(module).items():
        weight = layer_weight(layer).detach()
        total = weight.numel()
        nonzero = int((weight != 0).sum())
        rows.append(
            {
                "layer": name,
                "shape": list(weight.shape),
                "parameters": total,
                "nonzero": nonzero,
                "sparsity": 1.0 - nonzero / total if total else 0.0,
                "target_sparsity": target_sparsity.get(name),
            }
        )
    return rows


def onnx_parameters(path: Path) -> dict[str, int]:
    """Float initializer elements of the ONNX file: total and nonzero."""
    total = nonzero = 0
    for initializer in load_model(path).graph.initializer:
        array = numpy_helper.to_array(initializer)
        if array.dtype.kind == "f":
            total += array.size
            nonzero += int(np.count_nonzero(array))
    return {"total": total, "nonzero": nonzero}


def prune_report(
    original_path: Path, pruned_path: Path, module: nn.Module, target_sparsity: dict[str, float]
) -> dict[str, Any]:
    """Per-layer table, overall sparsity of the prunable weights, parameters of the
    exported file, and its zip-compressed size before and after."""
    layers = layer_table(module, target_sparsity)
    total = sum(row["parameters"] for row in layers)
    nonzero = sum(row["nonzero"] for row in layers)
    pruned = [row for row in layers if row["target_sparsity"] is not None]
    pruned_total = sum(row["parameters"] for row in pruned)
    before, after = zip_size_bytes(original_path), zip_size_bytes(pruned_path)
    return {
        "layers": layers,
        # over every Conv/Linear weight, skipped layers included
        "overall_sparsity": 1.0 - nonzero / total if total else 0.0,
        # over the pruned layers only
        "pruned_layers_sparsity": (
            1.0 - sum(row["nonzero"] for row in pruned) / pruned_total if pruned_total else 0.0
        ),
        "parameters": onnx_parameters(pruned_path),
        "parameters_original": onnx_parameters(original_path),
        "zip_size_bytes": {"before": before, "after": after, "ratio": after / before},
    }
