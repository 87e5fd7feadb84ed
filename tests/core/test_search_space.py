"""The search space: a family's declared ranges, narrowed by the spec, validated."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.families import Choice, CnnFamily, FloatRange, IntRange, MlpFamily, TransformerFamily
from core.search.space import config_of, distributions, narrow
from core.spec import JobSpec, SearchStep


def search_step(**fields: Any) -> SearchStep:
    return SearchStep.model_validate({"method": "search", **fields})


def test_a_range_narrows_to_a_sub_range_keeping_its_scale() -> None:
    space = narrow(CnnFamily, {"blocks": {"low": 1, "high": 3}, "width": {"low": 8, "high": 32}})
    assert space["blocks"] == IntRange(1, 3)
    assert space["width"] == IntRange(8, 32, log=True)
    assert space["kernel_size"] == CnnFamily.search_space()["kernel_size"]  # untouched


def test_one_value_fixes_a_field_and_a_list_keeps_a_subset_of_choices() -> None:
    space = narrow(CnnFamily, {"blocks": 2, "depthwise": [True], "dropout": 0.1})
    assert space["blocks"] == IntRange(2, 2)
    assert space["depthwise"] == Choice((True,))
    assert space["dropout"] == FloatRange(0.1, 0.1)
    assert narrow(MlpFamily, {"activation": "gelu"})["activation"] == Choice(("gelu",))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"depth": 2}, "has no searchable field 'depth'; its fields are"),
        ({"blocks": {"low": 1, "high": 9}}, "1..9 is not inside the declared range 1..5"),
        ({"blocks": {"low": 3, "high": 2}}, "3..2 is not inside"),
        ({"blocks": 1.5}, "takes whole numbers"),
        ({"kernel_size": [7]}, "[7] not among the declared options [3, 5]"),
        ({"depthwise": [1]}, "[1] not among the declared options [False, True]"),
        ({"kernel_size": {"low": 3, "high": 5}}, "a choice of [3, 5]"),
        ({"width": [8, 16]}, "a range 4..128"),
    ],
)
def test_narrowing_outside_the_declared_space_is_refused_naming_it(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        narrow(CnnFamily, overrides)


def test_the_spec_validates_the_narrowing_against_the_named_family() -> None:
    with pytest.raises(ValidationError, match="not inside the declared range"):
        search_step(family="mlp", space={"units": {"low": 2, "high": 8}})
    with pytest.raises(ValidationError, match="needs a named family"):
        search_step(space={"blocks": 2})
    assert search_step(family="transformer", space={"heads": [2, 4]}).space == {"heads": [2, 4]}


def test_pruners_are_refused_for_a_pareto_search_and_chosen_by_the_objective() -> None:
    with pytest.raises(ValidationError, match="set pruner to 'none'"):
        search_step(objective={"kind": "pareto"}, pruner="median")
    assert search_step(objective={"kind": "pareto"}).resolved_pruner() == "none"
    assert search_step().resolved_pruner() == "median"
    with pytest.raises(ValidationError, match="needs max_latency_ms, max_params or max_size"):
        search_step(objective={"kind": "constrained"})
    with pytest.raises(ValidationError, match="distinct"):
        search_step(objective={"kind": "pareto", "costs": ["macs", "macs"]})


def test_a_search_job_needs_training_data_and_labels_or_the_teacher() -> None:
    base = {"model_id": "m", "eval_dataset_id": "e", "steps": [{"method": "search"}]}
    with pytest.raises(ValidationError, match="search trains the model: set train_dataset_id"):
        JobSpec.model_validate(base)
    embedding = {**base, "train_dataset_id": "t", "task": {"kind": "embedding"}}
    with pytest.raises(ValidationError, match="set teacher to true"):
        JobSpec.model_validate(embedding)
    teacher = [{"method": "search", "teacher": True}]
    assert JobSpec.model_validate({**embedding, "steps": teacher}).steps[0].method == "search"


def test_sampled_values_become_a_consistent_family_config() -> None:
    config = config_of(TransformerFamily, {"heads": 4, "hidden": 30, "layers": 1})
    assert config.hidden % config.heads == 0 and config.layers == 1
    kinds = {name: type(d).__name__ for name, d in distributions(narrow(CnnFamily, {})).items()}
    assert kinds["blocks"] == "IntDistribution"
    assert kinds["growth"] == "FloatDistribution"
    assert kinds["pooling"] == "CategoricalDistribution"
