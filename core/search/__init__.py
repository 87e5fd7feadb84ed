"""The architecture search step; importing this package registers it."""

from core.search import step
from core.search.helper import join_search

__all__ = ["join_search", "step"]
