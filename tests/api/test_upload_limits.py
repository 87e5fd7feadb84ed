"""Uploads whose declared contents are impossible or would exhaust a process are refused
with a problem code naming the limit: graphs that materialise too much, loop for ever or
nest too deep; datasets with impossible shapes or a flood of tiny arrays."""

from __future__ import annotations

import pytest

from core.graph_limits import INT64_MAX
from tests.api.conftest import Api, ApiFactory, assert_problem
from tests.hostile.corpus import (
    constant_of_shape_bomb,
    expand_bomb,
    loop_model,
    nested_ifs,
    npz_declaring,
    npz_of_many_arrays,
)


@pytest.fixture(params=["sqlite", "postgres"])
def profile_api(request: pytest.FixtureRequest, make_api: ApiFactory) -> Api:
    if request.param == "postgres":
        return make_api(database_url=request.getfixturevalue("postgres_url"))
    return make_api()


@pytest.fixture
def small_caps(make_api: ApiFactory) -> Api:
    # Caps small enough that what old code would accept stays cheap to build and load.
    return make_api(
        max_model_folded_bytes=2**20,
        max_model_tensor_bytes=2**24,
        max_model_loop_trip_count=1000,
        max_model_subgraph_depth=4,
        max_dataset_arrays=16,
    )


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (constant_of_shape_bomb(count=2, elements=2**20), "constant_folding_too_large"),
        (expand_bomb((2**12, 2**11)), "tensor_too_large"),  # 32 MiB at run time
        (loop_model(1001), "loop_trip_count_too_large"),
        (loop_model(INT64_MAX), "loop_trip_count_too_large"),
        (nested_ifs(5), "subgraph_too_deep"),
    ],
    ids=["folding", "tensor", "trip count", "endless loop", "depth"],
)
def test_a_model_over_a_settings_cap_is_refused_with_its_code(
    small_caps: Api, content: bytes, code: str
) -> None:
    before = small_caps.snapshot()
    response = small_caps.upload("/v1/models", content, "model.onnx")
    assert_problem(response, 422, code)
    assert small_caps.snapshot() == before


def test_models_within_the_caps_are_stored(small_caps: Api) -> None:
    for content in (loop_model(1000), nested_ifs(4), loop_model(INT64_MAX, False)):
        response = small_caps.upload("/v1/models", content, "model.onnx")
        assert response.status_code == 201, response.text


def test_the_constant_of_shape_bomb_is_refused_without_folding_it(api: Api) -> None:
    """The 1.5 KB model that took the API down (24 x ConstantOfShape([2^28]): 24 GiB when
    folded), on the default limits."""
    content = constant_of_shape_bomb()
    assert len(content) < 2000
    response = api.upload("/v1/models", content, "model.onnx")
    assert_problem(response, 422, "constant_folding_too_large")


@pytest.mark.parametrize(
    ("shape", "payload"),
    [
        ((2**32, 2**32), b""),  # int64 product wraps to 0 bytes
        ((-2, -2), bytes(16)),  # negative dims whose product matches the data
        ((2**70,), b""),  # overflows 2^64
        ((2**33, 2**33, 2**33), b""),
    ],
    ids=["wraps to 0", "negative", "over 2^64", "over 2^64 in a product"],
)
def test_a_dataset_with_an_impossible_shape_is_refused(
    profile_api: Api, shape: tuple[int, ...], payload: bytes
) -> None:
    before = profile_api.snapshot()
    response = profile_api.upload("/v1/datasets", npz_declaring(shape, payload), "data.npz")
    assert_problem(response, 422, "invalid_array_shape")
    assert profile_api.snapshot() == before


def test_a_dataset_of_more_arrays_than_the_cap_is_refused(small_caps: Api) -> None:
    assert small_caps.upload("/v1/datasets", npz_of_many_arrays(16), "d.npz").status_code == 201
    response = small_caps.upload("/v1/datasets", npz_of_many_arrays(17), "d.npz")
    body = assert_problem(response, 422, "dataset_too_many_arrays")
    assert "16" in body["detail"]


def test_the_default_cap_refuses_a_flood_of_tiny_arrays(api: Api) -> None:
    content = npz_of_many_arrays(api.settings.max_dataset_arrays + 1)
    assert_problem(api.upload("/v1/datasets", content, "d.npz"), 422, "dataset_too_many_arrays")
