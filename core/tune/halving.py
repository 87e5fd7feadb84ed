"""Successive halving: every candidate gets a short budget, the best share of them a
long one. Which are "best" is the caller's ranking. Pure."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def survivors(candidates: Sequence[T], keep: float, rank_key: Callable[[T], object]) -> list[T]:
    """The best ceil(keep * n) candidates (at least one while any), best first."""
    if not candidates:
        return []
    count = max(1, math.ceil(keep * len(candidates)))
    return sorted(candidates, key=rank_key)[:count]  # type: ignore[arg-type]
