"""Whether this CPU's INT8 kernels can saturate, which decides `reduce_range`'s default.

x86 CPUs without VNNI (AVX2 or AVX-512 alone) multiply uint8 activations by int8 weights
with `vpmaddubsw`, which adds each pair of products into a saturating int16: with 8-bit
weights, 255 * 127 * 2 overflows it and the quantized model's outputs drift (measured
here on an AMD EPYC with AVX2 only: top-1 agreement of dynamic INT8 on a small residual
CNN fell from >= 0.93 to 0.88). Weights in 7 bits (`reduce_range`) keep every pair within
int16. With VNNI (`avx512_vnni`, `avx_vnni`) or AMX the products accumulate in int32 and
reduce_range only costs precision; other architectures are taken to be safe.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_ACCUMULATES_IN_INT32 = ("avx512_vnni", "avx_vnni", "amx_int8")
_SATURATING_PATHS = ("avx2", "avx512bw")


def saturates(flags: set[str]) -> bool:
    """True for an x86 CPU (its /proc/cpuinfo flags) whose u8s8 kernels use int16 pairs."""
    if any(flag in flags for flag in _ACCUMULATES_IN_INT32):
        return False
    return any(flag in flags for flag in _SATURATING_PATHS)


@cache
def cpu_flags() -> frozenset[str]:
    """The first processor's flags; empty where /proc/cpuinfo has none (not Linux, ARM)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def reduce_range_for(requested: bool | None) -> tuple[bool, str]:
    """The reduce_range to quantize with, and why (for the step's details)."""
    if requested is not None:
        return requested, "as the spec asked"
    if saturates(set(cpu_flags())):
        return True, (
            "this CPU has no VNNI: its INT8 kernels add pairs of products in int16, which "
            "8-bit weights can overflow, so weights use 7 bits"
        )
    return False, "this CPU's INT8 kernels accumulate in int32 (or it is not x86)"
