"""Export a PyTorch module to ONNX on the user's side, for upload.

The service takes ONNX only (uploads are data, never pickled code). torch is imported
here lazily, so the client itself does not need it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


def export_torch(
    module: Any,
    example: Any,
    path: Path | str | None = None,
    *,
    input_name: str = "input",
    output_name: str = "output",
    opset: int = 17,
    dynamic_batch: bool = True,
    dynamo: bool = False,
) -> Path:
    """Export `module` (an `nn.Module`) run on `example` (one tensor or array, batch
    first) to ONNX at `path` (default: a new temporary file); returns the path.

    The batch axis is dynamic unless `dynamic_batch=False`; `dynamo=True` uses
    torch.export (opset 18 or newer) instead of the TorchScript exporter.
    """
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="squeeze-export-")) / "model.onnx"
    return export_onnx(
        module,
        example,
        Path(path),
        opset,
        input_name=input_name,
        output_name=output_name,
        dynamic_batch=dynamic_batch,
        dynamo=dynamo,
    )


def export_onnx(
    module: Any,
    example: Any,
    path: Path,
    opset: int = 17,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    dynamic_batch: bool = True,
    dynamo: bool = False,
) -> Path:
    """Export to ONNX: one input and output, batch axis dynamic.

    The TorchScript exporter by default; `dynamo=True` uses torch.export (opset 18 or
    newer). PyTorch's fused Transformer fast path (`_transformer_encoder_layer_fwd`) has
    no ONNX form, so it is switched off while exporting.
    """
    import numpy as np
    import torch  # imported on use: the client itself does not need torch

    tensor = torch.from_numpy(example) if isinstance(example, np.ndarray) else example
    if dynamo and dynamic_batch and tensor.shape[0] == 1:
        # torch.export specializes dimensions of size 1: show it a batch of two
        tensor = torch.cat([tensor, tensor])
    dynamic_axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    # torch.export names dynamic dims its own way (dynamic_shapes, per forward argument)
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamo and dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (tensor,),
                str(path),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes=None if dynamo else dynamic_axes,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=dynamo,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return path
