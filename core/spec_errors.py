"""Validation errors in the user's words.

Pydantic reports where an error is by its own location (`loc`), which mixes the keys the
user wrote with the tags of the unions it tried (`('steps', 0, 'quantize', 'auto',
'calibration_method')`), and says what is wrong in its own vocabulary ("Unable to extract
tag using discriminator _step_method()"). `describe` turns one such error into the JSON
path the user wrote (`steps[0].calibration_method`) and a sentence that lists what is
allowed there and suggests the nearest allowed name (difflib).

Pure: it reads the error, the input the user sent, and the type it was validated against.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Discriminator, Tag
from typing_extensions import TypeAliasType

# The discriminator functions of core.spec's unions and the field each one reads: a
# failed tag names the function, the user wrote the field.
DISCRIMINATOR_FIELDS = {
    "_step_method": "method",
    "_quantize_mode": "mode",
    "_prune_kind": "kind",
    "_student_family": "family",
    "_student_source": "source",
}

_KINDS = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number (not NaN or Infinity)",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}

_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


@dataclass(frozen=True)
class UserError:
    """One validation error: `path` as the user wrote it (`steps[0].targets.max_drop`,
    "" for the whole document), `message` the sentence to show (it starts with the path)."""

    path: str
    message: str


def json_path(parts: Sequence[str | int]) -> str:
    """`['steps', 0, 'targets']` -> `steps[0].targets`; keys that are not identifiers are
    quoted (`task.inputs["input.1"]`)."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{_quote(part)}]"
    return text


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# words people write for an allowed value that no spelling distance finds
SYNONYMS = {"gpu": "cuda", "quantise": "quantize", "int8": "static", "float16": "fp16"}


def suggest(word: str, allowed: Sequence[str]) -> str | None:
    """The allowed name nearest to `word`, if one is near enough to be a typo of it."""
    lowered = {name.lower(): name for name in allowed}
    if word.lower() in lowered:
        return lowered[word.lower()]
    if SYNONYMS.get(word.lower()) in lowered:
        return lowered[SYNONYMS[word.lower()]]
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return lowered[close[0]]
    # a prefix or a part of a longer name: max_drop -> max_metric_drop
    parts = [p for p in re.split(r"[_\-.]", word.lower()) if p]
    if parts:
        containing = [
            name for low, name in lowered.items() if all(part in low for part in parts)
        ]
        if len(containing) == 1:
            return containing[0]
    return None


def describe_all(
    errors: Sequence[dict[str, Any]], document: Any, root: Any, *, root_name: str = "the request"
) -> list[UserError]:
    """Every error of one validation, in the user's words, one per place: the members of
    a plain union (`str | InputBinding`) each report the value, merged into one sentence;
    a member's type mismatch is dropped where another member got further."""
    described = [
        (str(error.get("type", "")), describe(error, document, root, root_name=root_name))
        for error in errors
    ]
    deeper = [found.path for kind, found in described if kind not in _KINDS]
    merged: dict[str, list[str]] = {}
    result: list[UserError] = []
    for kind, found in described:
        if kind in _KINDS:
            if found.path and any(_inside(path, found.path) for path in deeper):
                continue
            if found.path in merged:
                merged[found.path].append(_KINDS[kind])
                continue
            merged[found.path] = [_KINDS[kind]]
        result.append(found)
    for index, found in enumerate(result):
        kinds = list(dict.fromkeys(merged.get(found.path, [])))
        if len(kinds) > 1:
            got = found.message.rsplit("; got ", 1)[-1]
            head = f"`{found.path}` must be " if found.path else "Must be "
            result[index] = UserError(found.path, f"{head}{' or '.join(kinds)}; got {got}")
    return result


def _inside(path: str, parent: str) -> bool:
    return path.startswith(parent) and path[len(parent) : len(parent) + 1] in (".", "[")


def describe(
    error: dict[str, Any], document: Any, root: Any, *, root_name: str = "the request"
) -> UserError:
    """One pydantic error (an item of `ValidationError.errors()`, `loc` relative to
    `document`) in the user's words; `root` is the type `document` was validated as."""
    loc = list(error.get("loc", ()))
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    tag_error = kind in ("union_tag_invalid", "union_tag_not_found")
    path, value, tags, container_type, field_type = _walk(loc, document, root, kind)
    where = json_path(path)

    def at(text: str) -> UserError:
        return UserError(where, f"`{where}` {text}" if where else text[:1].upper() + text[1:])

    if tag_error:
        field = DISCRIMINATOR_FIELDS.get(str(ctx.get("discriminator", "")).rstrip("()"), "")
        expected = _tags_of(field_type) or _quoted_list(str(ctx.get("expected_tags", "")))
        field_path = json_path([*path, field]) if field else where
        if kind == "union_tag_not_found" or not isinstance(value, dict):
            if not isinstance(value, dict):
                subject = f"`{where}`" if where else root_name[:1].upper() + root_name[1:]
                return UserError(
                    where, f"{subject} must be an object with `{field}`: one of "
                    f"{', '.join(expected)}; got {_show(value)}"
                )
            return UserError(
                field_path,
                f"`{field_path}` is missing: give one of {', '.join(expected)}",
            )
        got = str(ctx.get("tag", value.get(field, "")))
        return UserError(field_path, f"`{field_path}` {_one_of(got, expected)}")

    if kind == "extra_forbidden":
        name = str(path[-1]) if path else ""
        owner = json_path(path[:-1])
        allowed = _fields_of(container_type)
        of = f"`{owner}`" if owner else root_name
        if tags:
            of += f" ({', '.join(tags)})"
        text = f"unknown field of {of}"
        nearest = suggest(name, allowed) if allowed else None
        if nearest is not None:
            text += f"; did you mean `{nearest}`?"
        if allowed:
            text += f" Allowed: {', '.join(allowed)}"
        return UserError(where, f"`{where}`: {text}")

    if kind == "missing":
        return at("is required")

    if kind in ("literal_error", "enum"):
        expected = _literals_of(field_type) or _quoted_list(str(ctx.get("expected", "")))
        return at(_one_of(value, expected))

    if kind in _KINDS:
        return at(f"must be {_KINDS[kind]}; got {_show(value)}")

    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        return at(f"must be {sign} {ctx.get(key)}; got {_show(value)}")

    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        return at(_length_words(kind, ctx, value))

    if kind == "json_invalid":
        return UserError("", f"The body is not valid JSON: {ctx.get('error', 'syntax error')}")

    message = str(error.get("msg", "is invalid"))
    message = re.sub(r"^(Value error|Assertion failed), ", "", message)
    if where:
        return UserError(where, f"`{where}`: {message}")
    return UserError("", message)


def _one_of(got: Any, expected: Sequence[str]) -> str:
    text = f"must be one of {', '.join(expected)}; got {_show(got)}"
    nearest = suggest(str(got), expected) if isinstance(got, str) and expected else None
    if nearest is not None and nearest != got:
        text += f" — did you mean `{nearest}`?"
    return text


def _show(value: Any) -> str:
    if isinstance(value, str):  # a long value is cut: the sentence is about its place
        return f"`{value}`" if len(value) <= 60 else f"`{value[:57]}...`"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _length_words(kind: str, ctx: dict[str, Any], value: Any) -> str:
    items = "characters" if kind.startswith("string") else "items"
    if kind.endswith("short"):
        least = ctx.get("min_length", 1)
        if least == 1:
            return "must not be empty" if items == "characters" else "needs at least one item"
        return f"needs at least {least} {items}"
    return f"may have at most {ctx.get('max_length')} {items}"


def _quoted_list(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


# --- walking the input and the type side by side ----------------------------------------


_MISSING = object()
_WRAPPED = re.compile(r"function-\w+\[.*,\s*(\w+)\]")


def _walk(
    loc: list[Any], document: Any, root: Any, kind: str
) -> tuple[list[str | int], Any, list[str], Any, Any]:
    """The user's path along `loc`, the value found there, the union tags passed on the
    way, the type holding the last field and the type at the end."""
    path: list[str | int] = []
    tags: list[str] = []
    value: Any = document
    current: Any = root
    container: Any = root
    tag_error = kind.startswith("union_tag")
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        child = _child_value(value, part)
        # a model validator's location: `function-after[_one_source(), InputBinding]`
        wrapped = _WRAPPED.fullmatch(part) if isinstance(part, str) else None
        member = wrapped.group(1) if wrapped else part
        step_type = _child_type(current, member)
        is_tag = step_type is not None and _is_union_member(current, member)
        # a union tag error sits on the object itself: a trailing key that names a
        # scalar is the tag of an outer union (a student's `family`), not a place
        descend = child is not _MISSING and not is_tag and wrapped is None
        if descend and last and tag_error and isinstance(part, str):
            descend = isinstance(child, dict | list)
        if descend:
            path.append(part)
            value = child
            container = current
        elif is_tag or wrapped is not None:
            if _is_discriminated(current):
                tags.append(member)
        else:  # a place the input does not hold (a missing field), or an unknown type's
            path.append(part)
            container = current
            value = None
        current = step_type
    if kind == "extra_forbidden" and path:
        container = _unwrap_optional(container)
    return path, value, tags, container, current


def _child_value(value: Any, part: Any) -> Any:
    if isinstance(value, dict) and isinstance(part, str) and part in value:
        return value[part]
    if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
        return value[part]
    return _MISSING


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while True:
        if isinstance(tp, TypeAliasType):
            tp = tp.__value__
        elif get_origin(tp) is Annotated:
            args = get_args(tp)
            tp, metadata = args[0], [*metadata, *args[1:]]
        else:
            return tp, metadata


def _is_discriminated(tp: Any) -> bool:
    return any(isinstance(item, Discriminator) for item in _unwrap(tp)[1])


def _union_members(tp: Any) -> list[Any]:
    inner, _ = _unwrap(tp)
    if get_origin(inner) in (Union, types.UnionType):
        return [m for m in get_args(inner) if m is not type(None)]
    return []


def _is_union_member(tp: Any, part: Any) -> bool:
    """Whether `part` names a member of the union `tp` (a tag, or a member's type name)."""
    return isinstance(part, str) and any(
        _member_name(member) == part for member in _union_members(tp)
    )


def _member_name(member: Any) -> str:
    inner, metadata = _unwrap(member)
    for item in metadata:
        if isinstance(item, Tag):
            return item.tag
    return getattr(inner, "__name__", str(inner))


def _unwrap_optional(tp: Any) -> Any:
    members = _union_members(tp)
    if len(members) == 1:
        return members[0]
    return tp


def _child_type(tp: Any, part: Any) -> Any:
    """The type at `part` inside `tp` (a field, an item, a union member), None when
    unknown."""
    if tp is None:
        return None
    members = _union_members(tp)
    if members:
        for member in members:
            if _member_name(member) == part:
                return member
        if len(members) == 1:  # Optional[X]: pydantic adds no location for the None
            return _child_type(members[0], part)
        models = [m for m in members if _is_model(_unwrap(m)[0])]
        if len(models) == 1 and isinstance(part, str):
            return _child_type(models[0], part)
        return None
    inner, _ = _unwrap(tp)
    if _is_model(inner) and isinstance(part, str):
        field = inner.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        metadata = [m for m in field.metadata if isinstance(m, Discriminator)]
        if field.discriminator is not None and not metadata:
            return annotation
        return Annotated[(annotation, *metadata)] if metadata else annotation
    origin = get_origin(inner)
    args = get_args(inner)
    if origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _fields_of(tp: Any) -> list[str]:
    inner, _ = _unwrap(_unwrap_optional(tp))
    if _is_model(inner):
        return list(inner.model_fields)
    return []


def _literals_of(tp: Any) -> list[str]:
    inner, _ = _unwrap(_unwrap_optional(tp))
    if get_origin(inner) is Literal:
        return [str(arg) for arg in get_args(inner)]
    return []


def _tags_of(tp: Any) -> list[str]:
    return [_member_name(member) for member in _union_members(tp)]
