"""The search space: a family's declared ranges, narrowed by the user, as Optuna
distributions; and the family config a trial's sampled values stand for.

Narrowing only narrows: a range stays inside the family's declared range (a sub-range,
or one value), a choice keeps a subset of its options. Everything here is pure except
`distributions`, which imports Optuna.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.families import Choice, FamilyConfig, FloatRange, IntRange, SearchRange

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

FamilyType = type[FamilyConfig]


def narrow(family: FamilyType, overrides: Mapping[str, Any]) -> dict[str, SearchRange]:
    """The family's search space with `overrides` applied, field by field.

    An override is, for a range field, `{"low": a, "high": b}` or one value; for a
    choice field, a list of allowed options or one option. Raises ValueError naming the
    field and its declared range when an override is unknown, of the wrong kind, or
    reaches outside what the family declares.
    """
    declared = family.search_space()
    name = family.model_fields["family"].default
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise ValueError(
            f"space: the {name} family has no searchable field {', '.join(map(repr, unknown))}"
            f"; its fields are {', '.join(sorted(declared))}"
        )
    space = dict(declared)
    for field, value in overrides.items():
        space[field] = _narrow_one(field, declared[field], _plain(value))
    return space


def describe(space: Mapping[str, SearchRange]) -> dict[str, Any]:
    """The space as JSON for reports: ranges as {low, high, log}, choices as lists."""
    described: dict[str, Any] = {}
    for field, spec in space.items():
        if isinstance(spec, Choice):
            described[field] = {"choices": list(spec.options)}
        else:
            described[field] = {"low": spec.low, "high": spec.high, "log": spec.log}
    return described


def distributions(space: Mapping[str, SearchRange]) -> dict[str, BaseDistribution]:
    """Optuna distributions for the space (fields in a fixed, sorted order)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    result: dict[str, BaseDistribution] = {}
    for field in sorted(space):
        spec = space[field]
        if isinstance(spec, Choice):
            result[field] = CategoricalDistribution(spec.options)
        elif isinstance(spec, IntRange):
            result[field] = IntDistribution(spec.low, spec.high, log=spec.log)
        else:
            result[field] = FloatDistribution(spec.low, spec.high, log=spec.log)
    return result


def config_of(family: FamilyType, params: Mapping[str, Any]) -> FamilyConfig:
    """The family config the sampled `params` stand for, made consistent the way the
    family's own sampler does (e.g. a transformer's hidden size rounded to a multiple of
    its heads). Fields not in `params` keep their defaults."""
    values = family._consistent(dict(params))
    return family.model_validate(values)


def _plain(value: Any) -> Any:
    """A pydantic narrowing model as a plain dict (the spec hands those in)."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def _narrow_one(field: str, declared: SearchRange, value: Any) -> SearchRange:
    if isinstance(declared, Choice):
        options = value if isinstance(value, list) else [value]
        if isinstance(value, dict) or not options:
            raise ValueError(
                f"space.{field}: a choice of {list(declared.options)}: give a non-empty "
                "list of options or one option"
            )
        unknown = [option for option in options if not _is_option(option, declared.options)]
        if unknown:
            raise ValueError(
                f"space.{field}: {unknown} not among the declared options {list(declared.options)}"
            )
        kept = tuple(o for o in declared.options if any(_same(o, v) for v in options))
        return Choice(kept)
    if isinstance(value, list):
        raise ValueError(
            f"space.{field}: a range {declared.low}..{declared.high}: give "
            '{"low": ..., "high": ...} or one value'
        )
    low, high = (value["low"], value["high"]) if isinstance(value, dict) else (value, value)
    integral = isinstance(declared, IntRange)
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise ValueError(f"space.{field}: {bound!r} is not a number")
        if integral and not float(bound).is_integer():
            raise ValueError(f"space.{field}: takes whole numbers, not {bound!r}")
    if not declared.low <= low <= high <= declared.high:
        raise ValueError(
            f"space.{field}: {low}..{high} is not inside the declared range "
            f"{declared.low}..{declared.high} (low <= high, narrowing only)"
        )
    if integral:
        return IntRange(int(low), int(high), declared.log)
    return FloatRange(float(low), float(high), declared.log)


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python: a choice of booleans must not accept 1, nor kernel sizes True
    return type(a) is type(b) and a == b


def _is_option(value: Any, options: tuple[Any, ...]) -> bool:
    return any(_same(option, value) for option in options)
