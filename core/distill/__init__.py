"""The distill step; importing this package registers it."""

from core.distill import features, loss, step, students, teacher

__all__ = ["features", "loss", "step", "students", "teacher"]
