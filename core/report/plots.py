"""The report's plots drawn with matplotlib as inline SVG (no files, no external assets).

Figures are made with `matplotlib.figure.Figure` directly, not pyplot: no global figure
registry and no backend switch, so the API can draw in several request threads at once.
Text is drawn as paths (matplotlib's default), so a page looks the same whatever fonts
the viewer has. Labels come from user models (node and layer names): `$` is escaped so
matplotlib never parses them as mathtext, and the SVG writer escapes the rest.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.report.model import (
    CandidatesPlot,
    CurvesPlot,
    FallbackCurvePlot,
    LayerBarsPlot,
    ParetoPlot,
    PlotData,
    RankingPlot,
    TrainingPlot,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# matplotlib's tab10: candidates and fronts in blue, the chosen model ringed in red
BLUE, RED, ORANGE, GREY = "#1f77b4", "#d62728", "#ff7f0e", "#8c8c8c"
WIDTH_IN = 9.0
MAX_LABEL_CHARS = 40
MAX_LEGEND_CURVES = 12
LOG_SCALE_COSTS = frozenset({"parameters", "macs", "size_bytes"})
# a search cost's axis label, with its unit (the cost's own name otherwise)
COST_LABELS = {
    "latency_ms": "latency (ms, median)",
    "parameters": "parameters (count)",
    "macs": "MACs (multiply-accumulates per sample)",
    "size_bytes": "size (bytes)",
}
# up to this many epochs, each one is a tick (an integer locator falls back to
# fractional ticks when the axis spans fewer than two integers: one epoch read 0.95..1.05)
MAX_EACH_EPOCH_TICKS = 15


def render_svg(plot: PlotData) -> str:
    """The plot as an `<svg>` element (no XML prolog), sized by its viewBox."""
    figure = draw(plot)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def plain(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """A user-supplied label as matplotlib should print it: shortened, no mathtext."""
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text.replace("$", r"\$")


def _figure(panels: int = 1, height_in: float = 4.0) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def draw_candidates(plot: CandidatesPlot) -> Figure:
    # points are labelled with their number: names are long and the points cluster (the
    # report lists the numbers with names and values below the plot)
    numbers = {id(point): number for number, point in enumerate(plot.points, start=1)}
    with_latency = [p for p in plot.points if p.latency_ms is not None]
    figure, (by_size, by_latency) = _figure(2)
    panels: list[tuple[Axes, str, Callable[[Any], float], list[Any]]] = [
        (by_size, "size (KiB)", lambda p: p.size_bytes / 1024, plot.points),
        (
            by_latency,
            f"latency at batch {plot.latency_batch_size or '?'} (ms, median)",
            lambda p: p.latency_ms,
            with_latency,
        ),
    ]
    for axis, x_label, x_of, points in panels:
        candidates = [p for p in points if not p.is_input]
        axis.scatter(
            [x_of(p) for p in candidates],
            [p.metric_value for p in candidates],
            s=36,
            c=BLUE,
            label="candidate",
            zorder=3,
        )
        inputs = [p for p in points if p.is_input]
        axis.scatter(
            [x_of(p) for p in inputs],
            [p.metric_value for p in inputs],
            s=48,
            marker="s",
            c=GREY,
            label="input",
            zorder=3,
        )
        chosen = [p for p in points if p.chosen]
        axis.scatter(
            [x_of(p) for p in chosen],
            [p.metric_value for p in chosen],
            s=180,
            facecolors="none",
            edgecolors=RED,
            linewidths=2,
            label="chosen",
            zorder=4,
        )
        for point in points:
            axis.annotate(
                str(numbers[id(point)]),
                (x_of(point), point.metric_value),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        axis.set_xlabel(x_label)
        axis.set_ylabel(plain(plot.metric_name))
        axis.grid(alpha=0.3)
    by_size.legend(fontsize=8, loc="best")
    return figure


def draw_ranking(plot: RankingPlot) -> Figure:
    nodes = list(reversed(plot.nodes))  # largest at the top
    figure, (axis,) = _figure(1, height_in=1.2 + 0.3 * len(nodes))
    names = [plain(n.name + (f" ({n.op_type})" if n.op_type else "")) for n in nodes]
    axis.barh(range(len(nodes)), [n.score for n in nodes], color=BLUE)
    axis.set_yticks(range(len(nodes)), names, fontsize=8)
    axis.set_xlabel(plain(plot.score_label, 90))
    axis.grid(axis="x", alpha=0.3)
    return figure


def draw_curves(plot: CurvesPlot) -> Figure:
    figure, (axis,) = _figure(1, height_in=4.2)
    for curve in plot.curves:
        axis.plot(curve.x, curve.y, "o-", ms=3, label=plain(curve.label))
    if plot.baseline is not None:
        axis.axhline(plot.baseline, color=GREY, ls="--", lw=1, label="unpruned")
    axis.set_xlabel(plain(plot.x_label))
    axis.set_ylabel(plain(plot.y_label))
    axis.grid(alpha=0.3)
    if len(plot.curves) <= MAX_LEGEND_CURVES:
        axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure


def draw_fallback_curve(plot: FallbackCurvePlot) -> Figure:
    from matplotlib.ticker import MaxNLocator

    figure, (axis,) = _figure(1, height_in=3.8)
    axis.plot(
        [p.nodes for p in plot.curve],
        [p.metric_drop for p in plot.curve],
        "o-",
        c=BLUE,
        ms=5,
        label="kept steps",
        zorder=3,
    )
    if plot.trials:
        axis.scatter(
            [p.nodes for p in plot.trials],
            [p.metric_drop for p in plot.trials],
            marker="x",
            s=28,
            c=GREY,
            label="tried, not kept",
            zorder=2,
        )
    if plot.chosen is not None:
        axis.scatter(
            [plot.chosen.nodes],
            [plot.chosen.metric_drop],
            s=160,
            facecolors="none",
            edgecolors=RED,
            linewidths=2,
            label="kept in FP32",
            zorder=4,
        )
    if plot.limit is not None:
        axis.axhline(plot.limit, color=ORANGE, ls="--", lw=1, label="target's limit")
    axis.axhline(0.0, color=GREY, ls=":", lw=1, label="original")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_xlabel("nodes kept in float32 (count)")
    axis.set_ylabel(plain(f"{plot.metric_name}: {plot.drop_label}", 60))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    return figure


def draw_layer_bars(plot: LayerBarsPlot) -> Figure:
    layers = list(reversed(plot.layers))  # first layer at the top
    figure, (axis,) = _figure(1, height_in=1.2 + 0.28 * len(layers))
    positions = range(len(layers))
    axis.barh(positions, [layer.value for layer in layers], color=BLUE, label="measured")
    for position, layer in zip(positions, layers, strict=True):
        if layer.note:
            axis.annotate(
                plain(layer.note),
                (layer.value, position),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
    targeted = [(i, layer.target) for i, layer in enumerate(layers) if layer.target is not None]
    if targeted:
        axis.scatter(
            [t for _, t in targeted],
            [i for i, _ in targeted],
            marker="|",
            s=160,
            c=RED,
            label="configured",
            zorder=3,
        )
        axis.legend(fontsize=8, loc="lower right")
    axis.set_yticks(list(positions), [plain(layer.layer) for layer in layers], fontsize=8)
    axis.set_xlim(0, 1)
    axis.set_xlabel(plain(plot.value_label, 90))
    axis.grid(axis="x", alpha=0.3)
    return figure


def draw_pareto(plot: ParetoPlot) -> Figure:
    figure, axes = _figure(len(plot.costs), height_in=4.2)
    for axis, cost in zip(axes, plot.costs, strict=True):
        others = [t for t in plot.trials if not t.on_front]
        front = sorted((t for t in plot.trials if t.on_front), key=lambda t: t.costs[cost])
        axis.scatter(
            [t.costs[cost] for t in others], [t.metric for t in others], s=18, c=GREY, label="trial"
        )
        axis.plot(
            [t.costs[cost] for t in front],
            [t.metric for t in front],
            "o-",
            c=BLUE,
            ms=5,
            label="Pareto front",
        )
        chosen = [t for t in plot.trials if t.chosen]
        axis.scatter(
            [t.costs[cost] for t in chosen],
            [t.metric for t in chosen],
            s=160,
            facecolors="none",
            edgecolors=RED,
            linewidths=2,
            label="chosen",
            zorder=4,
        )
        axis.set_xlabel(plain(COST_LABELS.get(cost, cost)))
        axis.set_ylabel(plain(plot.metric_name))
        values = [t.costs[cost] for t in plot.trials]
        # log scale where counts span decades; on a narrow span its ticks crowd
        if cost in LOG_SCALE_COSTS and min(values) > 0 and max(values) / min(values) > 10:
            axis.set_xscale("log")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    return figure


def draw_training(plot: TrainingPlot) -> Figure:
    from matplotlib.ticker import MaxNLocator

    has_loss = any(v is not None for s in plot.series for v in s.train_loss)
    figure, axes = _figure(2 if has_loss else 1, height_in=3.6)
    colors = [BLUE, ORANGE, GREY]
    for series, color in zip(plot.series, colors * len(plot.series), strict=False):
        _line(axes[0], series.epochs, series.eval_metric, color, plain(series.label))
        if has_loss:
            _line(axes[1], series.epochs, series.train_loss, color, plain(series.label))
    if plot.best_epoch is not None:
        axes[0].axvline(plot.best_epoch, color=RED, ls=":", lw=1.5, label="best epoch")
    axes[0].set_ylabel(plain(plot.metric_name) + " (eval)")
    axes[0].legend(fontsize=8, loc="best")
    if has_loss:
        axes[1].set_ylabel("training loss")
    epochs = sorted({epoch for series in plot.series for epoch in series.epochs})
    for axis in axes:
        if len(epochs) <= MAX_EACH_EPOCH_TICKS:
            axis.set_xticks(epochs)
        else:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    return figure


def _line(axis: Axes, x: list[int], y: list[float | None], color: str, label: str) -> None:
    points = [(a, b) for a, b in zip(x, y, strict=True) if b is not None]
    axis.plot([a for a, _ in points], [b for _, b in points], "o-", c=color, ms=4, label=label)


def draw(plot: PlotData) -> Figure:
    """The plot's matplotlib figure."""
    match plot:
        case CandidatesPlot():
            return draw_candidates(plot)
        case RankingPlot():
            return draw_ranking(plot)
        case CurvesPlot():
            return draw_curves(plot)
        case LayerBarsPlot():
            return draw_layer_bars(plot)
        case ParetoPlot():
            return draw_pareto(plot)
        case TrainingPlot():
            return draw_training(plot)
        case FallbackCurvePlot():
            return draw_fallback_curve(plot)
