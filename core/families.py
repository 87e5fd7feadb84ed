"""Built-in model families: CNN, MLP and transformer encoder, parameterised by depth and
width, each parameter declaring the range a search may explore.

Distillation builds its students from these; the architecture search samples them
(`search_space`, `sample`). A family config is a small pydantic model; `build` turns it
into an `nn.Module` for an input shape (without the batch dim) and an output count, and
the sizing functions scale a config's width until the student has a given fraction of
a teacher's parameters (`size_by_parameters`) or of its measured latency
(`size_by_latency`, fed by a measuring function so the choice is testable without
timing anything).

torch is imported inside the functions: the spec (and so the API) imports the configs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import torch
    from torch import nn

FamilyName = Literal["cnn", "mlp", "transformer"]


# --- search ranges, attached to fields as Annotated metadata ---------------------------


@dataclass(frozen=True)
class IntRange:
    """Integers low..high inclusive; `log` samples them on a log scale (widths)."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]


SearchRange = IntRange | FloatRange | Choice


class _Family(BaseModel):
    """A family config: unknown fields are errors, and every searchable field carries
    its range as metadata (read by `search_space`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # The field `with_width_units` sets (the others scale with it); sizing searches over it.
    width_field: ClassVar[str]

    @classmethod
    def search_space(cls) -> dict[str, SearchRange]:
        """Field name -> the range a search samples it from (within the field's bounds)."""
        space: dict[str, SearchRange] = {}
        for name, info in cls.model_fields.items():
            ranges = [m for m in info.metadata if isinstance(m, IntRange | FloatRange | Choice)]
            if ranges:
                space[name] = ranges[0]
        return space

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Self:
        """A config drawn uniformly (log-uniformly for `log` ranges) from the space."""
        values = {name: _draw(rng, spec) for name, spec in cls.search_space().items()}
        return cls.model_validate(cls._consistent(values))

    @classmethod
    def _consistent(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Sampled values made consistent with each other (a hook for constraints)."""
        return values

    def width_units(self) -> int:
        """The width sizing steps through: the width field's value."""
        return int(getattr(self, self.width_field))

    def max_width_units(self) -> int:
        """The largest `width_units()` the field's bounds allow."""
        metadata = type(self).model_fields[self.width_field].metadata
        return int(next(m.le for m in metadata if hasattr(m, "le")))

    def with_width_units(self, width: int) -> Self:
        """The config with its width field set to `width` (others scaled alike)."""
        return self.model_copy(update={self.width_field: width})


def _draw(rng: np.random.Generator, spec: SearchRange) -> Any:
    if isinstance(spec, Choice):
        return spec.options[int(rng.integers(len(spec.options)))]
    if spec.log:
        value = math.exp(rng.uniform(math.log(spec.low), math.log(spec.high)))
    else:
        value = rng.uniform(spec.low, spec.high)
    if isinstance(spec, IntRange):
        return min(max(round(value), spec.low), spec.high)
    return value


Dropout = Annotated[float, Field(ge=0.0, lt=1.0), FloatRange(0.0, 0.5)]


class CnnFamily(_Family):
    """Conv blocks (conv or depthwise + pointwise, BatchNorm, ReLU, 2x2 pooling while the
    map is larger than 1x1), channels `width * growth**block`, then global average
    pooling, dropout and a linear head. Input (C, H, W)."""

    width_field: ClassVar[str] = "width"

    family: Literal["cnn"] = "cnn"
    blocks: Annotated[int, Field(ge=1, le=8), IntRange(1, 5)] = 2
    width: Annotated[int, Field(ge=1, le=2048), IntRange(4, 128, log=True)] = 16
    growth: Annotated[float, Field(ge=1.0, le=4.0), FloatRange(1.0, 2.5)] = 2.0
    kernel_size: Annotated[Literal[1, 3, 5, 7], Choice((3, 5))] = 3
    depthwise: Annotated[bool, Choice((False, True))] = False
    pooling: Annotated[Literal["max", "avg", "none"], Choice(("max", "avg", "none"))] = "max"
    batch_norm: Annotated[bool, Choice((True, False))] = True
    dropout: Dropout = 0.0

    def channels(self) -> list[int]:
        return [max(1, round(self.width * self.growth**block)) for block in range(self.blocks)]


class MlpFamily(_Family):
    """`layers` hidden Linear layers of `units`, activation and dropout, then a linear
    head. Any input shape (flattened)."""

    width_field: ClassVar[str] = "units"

    family: Literal["mlp"] = "mlp"
    layers: Annotated[int, Field(ge=1, le=8), IntRange(1, 4)] = 2
    units: Annotated[int, Field(ge=1, le=16384), IntRange(16, 1024, log=True)] = 128
    activation: Annotated[Literal["relu", "gelu", "tanh"], Choice(("relu", "gelu", "tanh"))] = (
        "relu"
    )
    dropout: Dropout = 0.0


class TransformerFamily(_Family):
    """A linear projection of each step's features to `hidden`, a learned position
    embedding, `layers` encoder layers (`heads` heads, `feed_forward` wide), LayerNorm,
    mean over the sequence and a linear head. Input (L, F): L steps of F float features."""

    width_field: ClassVar[str] = "hidden"

    family: Literal["transformer"] = "transformer"
    layers: Annotated[int, Field(ge=1, le=12), IntRange(1, 4)] = 2
    heads: Annotated[int, Field(ge=1, le=16), Choice((1, 2, 4, 8))] = 4
    hidden: Annotated[int, Field(ge=1, le=4096), IntRange(16, 256, log=True)] = 32
    feed_forward: Annotated[int, Field(ge=1, le=16384), IntRange(16, 1024, log=True)] = 64
    dropout: Dropout = 0.0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> Self:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self

    @classmethod
    def _consistent(cls, values: dict[str, Any]) -> dict[str, Any]:
        heads = int(values["heads"])
        return values | {"hidden": max(heads, round(values["hidden"] / heads) * heads)}

    def width_units(self) -> int:
        return self.hidden // self.heads  # sizing steps in whole heads

    def max_width_units(self) -> int:
        return super().max_width_units() // self.heads

    def with_width_units(self, width: int) -> Self:
        """`width` dims per head; the feed-forward block keeps its ratio to hidden."""
        hidden = width * self.heads
        feed_forward = max(1, round(self.feed_forward * hidden / self.hidden))
        return self.model_copy(update={"hidden": hidden, "feed_forward": feed_forward})


FamilyConfig = CnnFamily | MlpFamily | TransformerFamily
FAMILIES: dict[str, type[FamilyConfig]] = {
    "cnn": CnnFamily,
    "mlp": MlpFamily,
    "transformer": TransformerFamily,
}


def family_for(input_shape: Sequence[int]) -> FamilyName:
    """The family for "auto": (C, H, W) images -> cnn, (L, F) sequences -> transformer,
    anything else -> mlp (flattened)."""
    if len(input_shape) == 3:
        return "cnn"
    if len(input_shape) == 2:
        return "transformer"
    return "mlp"


# --- building -------------------------------------------------------------------------


def build(config: FamilyConfig, input_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """The family's module for inputs of `input_shape` (no batch dim) with `num_outputs`
    outputs per sample: it maps (N, *input_shape) float32 to (N, num_outputs).

    Raises ValueError when the shape does not suit the family (cnn: (C, H, W);
    transformer: (L, F)); built on torch's current default device."""
    shape = [int(size) for size in input_shape]
    if num_outputs < 1 or any(size < 1 for size in shape):
        raise ValueError(f"cannot build for input {shape} and {num_outputs} outputs")
    if isinstance(config, CnnFamily):
        return _build_cnn(config, shape, num_outputs)
    if isinstance(config, TransformerFamily):
        return _build_transformer(config, shape, num_outputs)
    return _build_mlp(config, shape, num_outputs)


def parameter_count(module: nn.Module) -> int:
    """Elements of the module's parameters (BatchNorm's running statistics are not
    parameters: the ONNX export folds them into the convolutions)."""
    return sum(p.numel() for p in module.parameters())


def config_parameters(config: FamilyConfig, input_shape: Sequence[int], num_outputs: int) -> int:
    """`parameter_count` of the built config, built on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        return parameter_count(build(config, input_shape, num_outputs))


def _build_cnn(config: CnnFamily, shape: list[int], num_outputs: int) -> nn.Module:
    from torch import nn

    if len(shape) != 3:
        raise ValueError(f"the cnn family takes (C, H, W) inputs, not {shape}")
    channels, height, width = shape
    layers: list[nn.Module] = []
    padding = config.kernel_size // 2
    for out_channels in config.channels():
        if config.depthwise:
            layers += [
                nn.Conv2d(channels, channels, config.kernel_size, padding=padding, groups=channels),
                nn.Conv2d(channels, out_channels, 1),
            ]
        else:
            layers.append(nn.Conv2d(channels, out_channels, config.kernel_size, padding=padding))
        if config.batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU())
        if config.pooling != "none" and min(height, width) >= 2:
            pool = nn.MaxPool2d(2) if config.pooling == "max" else nn.AvgPool2d(2)
            layers.append(pool)
            height, width = height // 2, width // 2
        channels = out_channels
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(config.dropout),
        nn.Linear(channels, num_outputs),
    )


def _build_mlp(config: MlpFamily, shape: list[int], num_outputs: int) -> nn.Module:
    from torch import nn

    activations: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(shape)
    for _ in range(config.layers):
        layers += [
            nn.Linear(features, config.units),
            activations[config.activation](),
            nn.Dropout(config.dropout),
        ]
        features = config.units
    layers.append(nn.Linear(features, num_outputs))
    return nn.Sequential(*layers)


def _build_transformer(config: TransformerFamily, shape: list[int], num_outputs: int) -> nn.Module:
    if len(shape) != 2:
        raise ValueError(f"the transformer family takes (L, F) inputs, not {shape}")
    return _transformer_class()(config, shape[0], shape[1], num_outputs)


@functools.cache
def _transformer_class() -> type[nn.Module]:
    """The transformer module's class, defined on first use (torch loads lazily)."""
    import torch
    from torch import nn

    class SequenceEncoder(nn.Module):
        def __init__(
            self, config: TransformerFamily, length: int, features: int, num_outputs: int
        ) -> None:
            super().__init__()
            self.project = nn.Linear(features, config.hidden)
            self.position = nn.Parameter(torch.zeros(1, length, config.hidden))
            layer = nn.TransformerEncoderLayer(
                config.hidden,
                config.heads,
                dim_feedforward=config.feed_forward,
                dropout=config.dropout,
                batch_first=True,
            )
            # nested tensors are a training-time fast path that ONNX export does not know
            self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(config.hidden)
            self.head = nn.Linear(config.hidden, num_outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.project(x) + self.position[:, : x.shape[1]]
            return self.head(self.norm(self.encoder(hidden).mean(dim=1)))

    return SequenceEncoder


# --- sizing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizing:
    """A sized config and how it was chosen (for the report)."""

    config: FamilyConfig
    parameters: int
    target: str  # e.g. "parameters <= 26,836 (0.1 x teacher)"
    candidates: list[dict[str, Any]] = field(default_factory=list)


class SizingError(ValueError):
    """No width of the family meets the requested ratio."""


def size_by_parameters(
    config: FamilyConfig,
    input_shape: Sequence[int],
    num_outputs: int,
    teacher_parameters: int,
    ratio: float,
) -> Sizing:
    """The widest config (depth and the other fields as given) with at most
    `ratio * teacher_parameters` parameters, by binary search on the width field (the
    parameter count grows with width). Raises SizingError when even width 1 is too big."""
    budget = ratio * teacher_parameters
    target = f"parameters <= {budget:,.0f} ({ratio:g} x teacher's {teacher_parameters:,})"

    def count(width: int) -> int:
        return config_parameters(config.with_width_units(width), input_shape, num_outputs)

    low, high = 1, config.max_width_units()
    if count(low) > budget:
        raise SizingError(
            f"the smallest {config.family} student of this depth (width 1) has "
            f"{count(low):,} parameters, more than {ratio:g} x the teacher's "
            f"{teacher_parameters:,}: use fewer blocks/layers or a larger ratio"
        )
    if count(high) <= budget:
        low = high
    while high - low > 1:  # invariant: count(low) <= budget < count(high)
        middle = (low + high) // 2
        if count(middle) <= budget:
            low = middle
        else:
            high = middle
    sized = config.with_width_units(low)
    return Sizing(sized, count(low), target)


# Parameter fractions of the teacher whose widths latency sizing measures.
LATENCY_CANDIDATE_FRACTIONS = (0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.01, 0.003, 0.001)


def size_by_latency(
    config: FamilyConfig,
    input_shape: Sequence[int],
    num_outputs: int,
    teacher_parameters: int,
    ratio: float,
    latency_ratio_of: Callable[[FamilyConfig], float],
    fractions: Sequence[float] = LATENCY_CANDIDATE_FRACTIONS,
) -> Sizing:
    """The widest candidate whose measured latency is at most `ratio` x the teacher's.

    Candidates are the config sized to each of `fractions` of the teacher's parameters
    (widest first); `latency_ratio_of(candidate)` measures one (student / teacher, e.g.
    timed interleaved in ONNX Runtime). Measuring stops at the first candidate under the
    ratio: narrower ones would be slower to train for nothing. Raises SizingError when
    none is under it (every measured candidate is in the message).
    """
    candidates: list[dict[str, Any]] = []
    seen: set[int] = set()
    for fraction in fractions:
        try:
            sized = size_by_parameters(
                config, input_shape, num_outputs, teacher_parameters, fraction
            )
        except SizingError:
            break
        if sized.config.width_units() in seen:
            continue
        seen.add(sized.config.width_units())
        measured = latency_ratio_of(sized.config)
        candidates.append(
            {
                "width": sized.config.width_units(),
                "parameters": sized.parameters,
                "latency_ratio": round(measured, 4),
            }
        )
        if measured <= ratio:
            return Sizing(
                sized.config,
                sized.parameters,
                f"latency <= {ratio:g} x teacher's",
                candidates,
            )
    raise SizingError(
        f"no {config.family} student of this depth ran at <= {ratio:g} x the teacher's "
        f"latency; measured (width: ratio): "
        + ", ".join(f"{c['width']}: {c['latency_ratio']}" for c in candidates)
    )
