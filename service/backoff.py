"""How long to wait before starting a program that exited again (the supervisor and
`squeeze serve` share it): doubled after each exit that came soon after its start."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 1.0
    max_s: float = 60.0
    # a program that ran this long before it exited starts again after initial_s
    stable_after_s: float = 60.0

    def next_delay(self, previous_s: float, ran_s: float) -> float:
        if ran_s >= self.stable_after_s or previous_s <= 0:
            return self.initial_s
        return min(self.max_s, previous_s * 2)
