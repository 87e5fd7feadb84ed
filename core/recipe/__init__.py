"""The auto recipe: goal-driven compression across every method (core.recipe.step), with
candidate kinds registered in core.recipe.kinds."""

from core.recipe.step import auto

__all__ = ["auto"]
