"""reduce_range's default follows the CPU: on where INT8 kernels add products in int16."""

from __future__ import annotations

import pytest

from core.quantize import cpu_int8
from core.quantize.cpu_int8 import reduce_range_for, saturates


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"sse4_2", "avx2", "fma"}, True),  # AMD EPYC (Zen 2/3), Intel before Cascade Lake
        ({"avx2", "avx512f", "avx512bw"}, True),  # Skylake-SP: AVX-512 without VNNI
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, False),  # Cascade Lake and later
        ({"avx2", "avx_vnni"}, False),  # Alder Lake
        ({"fp", "asimd", "asimddp"}, False),  # ARM: not x86
        (set(), False),
    ],
)
def test_only_x86_without_vnni_saturates(flags: set[str], expected: bool) -> None:
    assert saturates(flags) is expected


def test_the_default_is_on_where_the_cpu_saturates_and_a_given_value_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cpu_int8, "cpu_flags", lambda: frozenset({"avx2"}))
    on, why = reduce_range_for(None)
    assert on is True and "VNNI" in why
    assert reduce_range_for(False) == (False, "as the spec asked")

    monkeypatch.setattr(cpu_int8, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    assert reduce_range_for(None)[0] is False
    assert reduce_range_for(True) == (True, "as the spec asked")
