"""The quantize step and its modes; importing this package registers them."""

from core.quantize import auto, fp16, int4, int8, qat, sensitivity, step

__all__ = ["auto", "fp16", "int4", "int8", "qat", "sensitivity", "step"]
