"""core.graph_limits: a graph that would materialise too much, loop for ever or nest too
deep is refused from its shapes and constants, before any runtime builds it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from core.errors import InvalidModel
from core.formats import inspect_model
from core.graph_limits import INT64_MAX, GraphLimits, check_graph_limits
from tests.hostile.corpus import (
    constant_of_shape_bomb,
    expand_bomb,
    loop_model,
    nested_ifs,
    range_bomb,
    tile_bomb,
)

LIMITS = GraphLimits()
ROOT = Path(__file__).resolve().parents[2]


def refused_code(content: bytes, limits: GraphLimits = LIMITS) -> str:
    model = onnx.load_from_string(content)
    with pytest.raises(InvalidModel) as raised:
        check_graph_limits(model, len(content), limits)
    return raised.value.code


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (constant_of_shape_bomb(), "constant_folding_too_large"),  # 24 x 1 GiB folded
        (expand_bomb(), "tensor_too_large"),
        (tile_bomb(), "tensor_too_large"),
        (range_bomb(), "tensor_too_large"),
        (loop_model(2**62), "loop_trip_count_too_large"),
        (loop_model(None), "loop_trip_count_too_large"),  # no M, condition constantly true
        (loop_model(INT64_MAX), "loop_trip_count_too_large"),
        (nested_ifs(LIMITS.max_subgraph_depth + 1), "subgraph_too_deep"),
    ],
    ids=[
        "ConstantOfShape",
        "Expand",
        "Tile",
        "Range",
        "Loop 2^62",
        "Loop without M",
        "Loop INT64_MAX",
        "nested If",
    ],
)
def test_a_graph_over_a_limit_is_refused_with_its_code(content: bytes, code: str) -> None:
    assert len(content) < 4096  # tiny files, enormous claims
    assert refused_code(content) == code


def test_a_loop_its_condition_ends_may_carry_the_exporters_while_trip_count() -> None:
    check_graph_limits(onnx.load_from_string(loop_model(INT64_MAX, False)), 1000, LIMITS)


def test_a_constant_trip_count_over_the_cap_is_refused_whatever_the_condition() -> None:
    assert refused_code(loop_model(2**40, condition_stays_true=False)) == (
        "loop_trip_count_too_large"
    )


def test_graphs_within_the_limits_pass(cnn_onnx: Path) -> None:
    for content in (loop_model(10), nested_ifs(LIMITS.max_subgraph_depth)):
        check_graph_limits(onnx.load_from_string(content), len(content), LIMITS)
    inspect_model(cnn_onnx, graph_limits=LIMITS)


def test_the_limits_are_the_callers() -> None:
    small = constant_of_shape_bomb(count=2, elements=2**20)  # 8 MiB folded
    check_graph_limits(onnx.load_from_string(small), len(small), LIMITS)
    assert refused_code(small, GraphLimits(max_folded_bytes=2**20)) == (
        "constant_folding_too_large"
    )
    assert refused_code(small, GraphLimits(max_tensor_bytes=2**20)) == "tensor_too_large"
    assert refused_code(loop_model(11), GraphLimits(max_loop_trip_count=10)) == (
        "loop_trip_count_too_large"
    )
    assert refused_code(nested_ifs(3), GraphLimits(max_subgraph_depth=2)) == "subgraph_too_deep"


def test_inspect_model_refuses_before_onnx_runtime_builds_the_session(tmp_path: Path) -> None:
    path = tmp_path / "bomb.onnx"
    path.write_bytes(constant_of_shape_bomb())
    with pytest.raises(InvalidModel) as raised:
        inspect_model(path, graph_limits=LIMITS)
    assert raised.value.code == "constant_folding_too_large"


def test_loading_a_model_to_validate_it_folds_no_constants(tmp_path: Path) -> None:
    """Within the limits, validation still builds an ONNX Runtime session: without graph
    optimizations, so 400 MB of ConstantOfShape stay unmaterialised (peak RSS, measured
    in a fresh process)."""
    path = tmp_path / "folds.onnx"
    path.write_bytes(constant_of_shape_bomb(count=24, elements=2**22))  # 400 MiB folded
    # VmHWM is the peak resident size; writing 5 to clear_refs resets it (Linux), so the
    # import's own peak does not hide what inspecting takes.
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from core.formats import inspect_model
        def peak_kib():
            status = Path("/proc/self/status").read_text().splitlines()
            return int(next(l for l in status if l.startswith("VmHWM")).split()[1])
        Path("/proc/self/clear_refs").write_text("5")
        before = peak_kib()
        inspect_model(Path({str(path)!r}))
        print((peak_kib() - before) // 1024)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    grown_mib = int(done.stdout.strip().splitlines()[-1])
    assert grown_mib < 150, f"validation grew the process by {grown_mib} MiB"
