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
    from squeeze.examples import export_onnx  # imports torch

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
