"""The quantize step and its modes; importing this package registers them."""

from core.quantize import fp16, int8, step

__all__ = ["fp16", "int8", "step"]
