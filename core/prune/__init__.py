"""The prune step and its kinds; importing this package registers them."""

from core.prune import (
    masks,
    nm,
    report,
    schedule,
    sensitivity,
    step,
    structured,
    training,
    unstructured,
)

__all__ = [
    "masks",
    "nm",
    "report",
    "schedule",
    "sensitivity",
    "step",
    "structured",
    "training",
    "unstructured",
]
