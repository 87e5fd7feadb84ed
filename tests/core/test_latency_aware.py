"""Latency-aware op selection: which units are quantized, given measured per-node costs.

The costs are injected: these tests pin the decision rule, not this machine's speed.
"""

from __future__ import annotations

import itertools

from core.quantize.latency_aware import FLOAT, Link, Unit, select


def unit(name: str, fp32: float, int8: float, *, batch: int = 1) -> Unit:
    return Unit(name, "Conv", (name, f"{name}/Relu"), {batch: fp32}, {batch: int8})


def chain(*names: str, cost: float) -> list[Link]:
    """FLOAT -> names[0] -> ... -> names[-1] -> FLOAT, every conversion at `cost` us."""
    ends = [FLOAT, *names, FLOAT]
    return [Link(f"t{i}", a, b, {1: cost}) for i, (a, b) in enumerate(itertools.pairwise(ends))]


def decisions(units: list[Unit], links: list[Link]) -> dict[str, str]:
    return {row["node"]: row["decision"] for row in select(units, links).rows}


def test_when_every_node_wins_by_more_than_the_borders_all_are_quantized() -> None:
    units = [unit("a", 100, 40), unit("b", 100, 40), unit("c", 100, 40)]

    selection = select(units, chain("a", "b", "c", cost=5))

    assert selection.quantize == ("a", "b", "c")
    assert selection.nodes_to_quantize == ("a", "a/Relu", "b", "b/Relu", "c", "c/Relu")
    assert {row["region"] for row in selection.rows} == {1}


def test_when_no_node_wins_none_is_quantized() -> None:
    units = [unit("a", 40, 100), unit("b", 40, 40)]  # a tie is no win

    selection = select(units, chain("a", "b", cost=0.5))

    assert selection.quantize == ()
    assert [row["why"] for row in selection.rows] == ["float32 faster", "float32 faster"]


def test_a_lone_node_whose_win_is_smaller_than_its_border_cost_stays_float() -> None:
    # wins 4 us, but needs a Q before it and a DQ after it at 5 us each
    selection = select([unit("a", 10, 6)], chain("a", cost=5))

    (row,) = selection.rows
    assert row["decision"] == "fp32"
    assert row["why"].startswith("int8 faster, but less than the Q/DQ")
    assert row["border_us"] == {"1": 10.0}


def test_connected_small_winners_share_one_border_and_are_quantized_together() -> None:
    # each wins 4 us: alone none pays its 10 us of Q/DQ, as a region of three they do
    units = [unit("a", 10, 6), unit("b", 10, 6), unit("c", 10, 6)]

    selection = select(units, chain("a", "b", "c", cost=5))

    assert selection.quantize == ("a", "b", "c")
    assert selection.estimated_us[1] == 3 * 6 + 2 * 5
    assert selection.fp32_us[1] == 30


def test_a_slightly_slower_node_between_two_regions_joins_them_to_save_two_conversions() -> None:
    units = [unit("a", 100, 40), unit("dw", 10, 12), unit("b", 100, 40)]

    rows = {row["node"]: row for row in select(units, chain("a", "dw", "b", cost=5)).rows}

    assert [rows[n]["decision"] for n in ("a", "dw", "b")] == ["int8", "int8", "int8"]
    assert rows["dw"]["why"].startswith("int8 slower, quantized with its region")


def test_a_much_slower_node_splits_the_model_into_two_int8_regions() -> None:
    units = [unit("a", 100, 40), unit("dw", 10, 60), unit("b", 100, 40)]

    rows = {row["node"]: row for row in select(units, chain("a", "dw", "b", cost=5)).rows}

    assert [rows[n]["decision"] for n in ("a", "dw", "b")] == ["int8", "fp32", "int8"]
    assert (rows["a"]["region"], rows["dw"]["region"], rows["b"]["region"]) == (1, None, 2)


def test_every_deployment_batch_size_counts_relative_to_the_float_models_latency() -> None:
    # "big" wins 30% at batch 32 and loses 10% at batch 1: over both sizes it wins
    big = Unit("big", "Conv", ("big",), {1: 10, 32: 1000}, {1: 11, 32: 700})
    # "dw" saves 300 us at batch 32 too, but loses 50% of the whole model at batch 1
    dw = Unit("dw", "Conv", ("dw",), {1: 10, 32: 1000}, {1: 20, 32: 700})

    assert decisions([big], chain("big", cost=0)) == {"big": "int8"}
    assert decisions([big, dw], [*chain("big", cost=0), *chain("dw", cost=0)]) == {
        "big": "int8",
        "dw": "fp32",
    }


def test_the_table_gives_both_latencies_per_batch_size_and_the_reason() -> None:
    (row,) = select([unit("a", 100, 40)], chain("a", cost=5)).rows

    assert row == {
        "node": "a",
        "op_type": "Conv",
        "nodes": ["a", "a/Relu"],
        "fp32_us": {"1": 100.0},
        "int8_us": {"1": 40.0},
        "border_us": {"1": 10.0},
        "decision": "int8",
        "region": 1,
        "why": "int8 faster",
    }
