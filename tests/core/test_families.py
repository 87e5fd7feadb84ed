"""Built-in families: what they build, the ranges a search samples, and sizing to a
fraction of a teacher's parameters or latency."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from core.families import (
    FAMILIES,
    Choice,
    CnnFamily,
    FamilyConfig,
    FloatRange,
    IntRange,
    MlpFamily,
    SizingError,
    TransformerFamily,
    build,
    config_parameters,
    family_for,
    parameter_count,
    size_by_latency,
    size_by_parameters,
)

SHAPES: dict[str, tuple[int, ...]] = {"cnn": (1, 8, 8), "mlp": (64,), "transformer": (8, 8)}
DIGITS_CNN_PARAMETERS = 268_362  # service.examples.DigitsCNN, the tests' usual teacher


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_maps_a_batch_to_one_row_of_outputs(name: str) -> None:
    module = build(FAMILIES[name](), SHAPES[name], 10).eval()

    outputs = module(torch.rand(3, *SHAPES[name]))

    assert outputs.shape == (3, 10)
    assert parameter_count(module) == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_search_ranges_lie_within_what_the_config_accepts(name: str) -> None:
    family = FAMILIES[name]
    space = family.search_space()
    assert {"dropout"} < set(space)
    rng = np.random.default_rng(0)
    for _ in range(20):
        config = family.sample(rng)  # validates: a range outside the bounds would raise
        values = config.model_dump()
        for field, spec in space.items():
            if isinstance(spec, Choice):
                assert values[field] in spec.options
            elif isinstance(spec, IntRange | FloatRange) and field != "hidden":
                assert spec.low <= values[field] <= spec.high
        build(config, SHAPES[name], 4)(torch.rand(2, *SHAPES[name]))


def test_depth_and_width_are_searchable_in_every_family() -> None:
    assert CnnFamily.search_space()["blocks"] == IntRange(1, 5)
    assert CnnFamily.search_space()["width"].log  # type: ignore[union-attr]
    assert set(MlpFamily.search_space()) >= {"layers", "units", "activation"}
    assert set(TransformerFamily.search_space()) >= {"layers", "heads", "hidden", "feed_forward"}


def test_a_transformer_needs_hidden_divisible_by_heads() -> None:
    with pytest.raises(ValidationError, match="multiple of heads"):
        TransformerFamily(hidden=30, heads=4)


def test_sampled_transformers_round_hidden_to_whole_heads() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        config = TransformerFamily.sample(rng)
        assert config.hidden % config.heads == 0


@pytest.mark.parametrize(
    ("shape", "family"),
    [((1, 8, 8), "cnn"), ((3, 32, 32), "cnn"), ((8, 8), "transformer"), ((64,), "mlp")],
)
def test_auto_chooses_the_family_by_the_input_rank(shape: tuple[int, ...], family: str) -> None:
    assert family_for(shape) == family


def test_a_family_refuses_an_input_of_the_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build(CnnFamily(), (8, 8), 10)
    with pytest.raises(ValueError, match=r"\(L, F\)"):
        build(TransformerFamily(), (1, 8, 8), 10)


def test_a_depthwise_cnn_has_fewer_parameters_than_a_plain_one() -> None:
    plain = config_parameters(CnnFamily(width=32), (3, 8, 8), 10)
    depthwise = config_parameters(CnnFamily(width=32, depthwise=True), (3, 8, 8), 10)
    assert depthwise < plain / 3


SIZED: list[tuple[FamilyConfig, tuple[int, ...]]] = [
    (CnnFamily(blocks=3), (1, 8, 8)),
    (CnnFamily(blocks=2, depthwise=True), (1, 8, 8)),
    (MlpFamily(layers=2), (64,)),
    (TransformerFamily(layers=2, heads=4), (8, 8)),
]


@pytest.mark.parametrize(("config", "shape"), SIZED, ids=lambda v: getattr(v, "family", ""))
@pytest.mark.parametrize("ratio", [0.1, 0.03])
def test_sizing_by_parameters_hits_the_ratio_within_a_tolerance(
    config: FamilyConfig, shape: tuple[int, ...], ratio: float
) -> None:
    sized = size_by_parameters(config, shape, 10, DIGITS_CNN_PARAMETERS, ratio)

    budget = ratio * DIGITS_CNN_PARAMETERS
    assert 0.8 * budget <= sized.parameters <= budget
    assert sized.parameters == parameter_count(build(sized.config, shape, 10))
    # the widest that fits: one step wider is over the budget
    wider = sized.config.with_width_units(sized.config.width_units() + 1)
    assert config_parameters(wider, shape, 10) > budget
    # depth and the other fields stay as given
    kept = {k: v for k, v in config.model_dump().items() if k not in ("width", "units", "hidden")}
    assert {k: sized.config.model_dump()[k] for k in kept if k != "feed_forward"} == {
        k: v for k, v in kept.items() if k != "feed_forward"
    }


def test_sizing_refuses_a_ratio_no_width_reaches() -> None:
    with pytest.raises(SizingError, match="smallest cnn student"):
        size_by_parameters(CnnFamily(blocks=8, growth=4.0), (1, 8, 8), 10, 10_000, 0.01)


def test_latency_sizing_keeps_the_widest_candidate_under_the_ratio() -> None:
    measured: list[int] = []

    def latency_ratio(config: FamilyConfig) -> float:
        # a stand-in for ONNX Runtime: latency grows with the parameters
        measured.append(config.width_units())
        return config_parameters(config, (1, 8, 8), 10) / DIGITS_CNN_PARAMETERS * 2.0

    sized = size_by_latency(CnnFamily(), (1, 8, 8), 10, DIGITS_CNN_PARAMETERS, 0.3, latency_ratio)

    ratios = [c["latency_ratio"] for c in sized.candidates]
    assert ratios[-1] <= 0.3 and all(r > 0.3 for r in ratios[:-1])
    assert sized.config.width_units() == measured[-1] == min(measured)
    assert measured == sorted(measured, reverse=True)  # widest first, stopping at the first fit


def test_latency_sizing_says_what_it_measured_when_nothing_is_fast_enough() -> None:
    def always_slow(config: Any) -> float:
        return 1.5

    with pytest.raises(SizingError, match="no mlp student") as raised:
        size_by_latency(MlpFamily(), (64,), 10, DIGITS_CNN_PARAMETERS, 0.5, always_slow)
    assert "1.5" in str(raised.value)
