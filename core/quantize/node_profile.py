"""Per-node latency of a float model and of its QDQ twin, from ONNX Runtime's profiler.

What ONNX Runtime 1.32's CPU provider emits (read from its profile files, not guessed):
every kernel is a "Node" event named "<node name>_kernel_time" with `args.op_name` (the
kernel) and `args.output_size` (bytes). Optimized graphs rename what they rewrite:
- float Conv + activation fused in the NCHWc layout: "<fused output tensor>_nchwc";
- QDQ groups fused into integer kernels (QLinearConv): "<original node>_token_<n>";
  QGemm and QLinearGlobalAveragePool keep the original node's name;
- the Q/DQ the fusion did not absorb: "<tensor>_QuantizeLinear" /
  "<tensor>_DequantizeLinear" (and ".../duplicated" where one was copied per consumer);
- layout changes the optimizer adds (Transpose, ReorderInput/Output) have no graph node.
`kernel_owner` maps such a name back to the float graph's node or tensor; what maps to
nothing is reported as unattributed time, never spread over nodes.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from core.context import MeasureSettings
from core.data import Feeds
from core.measure import providers_for, session_options
from core.quantize.latency_aware import FLOAT, Link, Selection, Unit, select

_TOKEN = re.compile(r"(_token_\d+)+$")
_Q, _DQ = "_QuantizeLinear", "_DequantizeLinear"


@dataclass(frozen=True)
class KernelTime:
    name: str  # the event's name without "_kernel_time"
    op_name: str
    median_us: float
    output_bytes: int


def profile_kernels(
    model_path: Path,
    feeds: Feeds,
    settings: MeasureSettings,
    work_dir: Path,
    *,
    runs: int,
    warmup_runs: int,
    device: str = "cpu",
) -> dict[str, KernelTime]:
    """Median time per kernel over `runs` profiled runs (after `warmup_runs`), by name."""
    options = session_options(settings)
    options.enable_profiling = True
    work_dir.mkdir(parents=True, exist_ok=True)
    options.profile_file_prefix = str(work_dir / model_path.stem)
    session = ort.InferenceSession(str(model_path), options, providers=providers_for(device))
    for _ in range(warmup_runs + runs):
        session.run(None, dict(feeds))
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink(missing_ok=True)
    durations: dict[str, list[float]] = {}
    kinds: dict[str, tuple[str, int]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        key = name[: -len("_kernel_time")]
        durations.setdefault(key, []).append(float(event["dur"]))
        args = event.get("args", {})
        kinds[key] = (str(args.get("op_name", "")), int(args.get("output_size", 0) or 0))
    # the first runs of each kernel are warm-up (the profile starts with the session)
    return {
        key: KernelTime(key, kinds[key][0], statistics.median(d[warmup_runs:] or d), kinds[key][1])
        for key, d in durations.items()
    }


@dataclass(frozen=True)
class Owner:
    kind: str  # "node", "quantize" (a Q on tensor), "dequantize" (a DQ on tensor), "none"
    name: str  # node or tensor name


def kernel_owner(
    kernel: str, node_names: set[str], producers: Mapping[str, str], tensors: set[str]
) -> Owner:
    """The float graph's node (or tensor, for Q/DQ) an ORT kernel name comes from."""
    base = kernel.removesuffix("/duplicated")
    for suffix, kind in ((_Q, "quantize"), (_DQ, "dequantize")):
        if base.endswith(suffix) and base[: -len(suffix)] in tensors:
            return Owner(kind, base[: -len(suffix)])
    base = _TOKEN.sub("", base)
    if base in node_names:
        return Owner("node", base)
    tensor = base.removesuffix("_nchwc")
    if tensor in producers:  # fused nodes are named after the tensor they produce
        return Owner("node", producers[tensor])
    return Owner("none", kernel)


@dataclass(frozen=True)
class GraphView:
    """The float graph as units and links see it."""

    nodes: dict[str, onnx.NodeProto]
    producers: dict[str, str]  # tensor -> node
    consumers: dict[str, list[str]]  # tensor -> nodes
    initializers: set[str]
    inputs: set[str]
    outputs: set[str]

    @property
    def tensors(self) -> set[str]:
        return set(self.producers) | set(self.consumers)


def graph_view(model: onnx.ModelProto) -> GraphView:
    graph = model.graph
    nodes = {node.name: node for node in graph.node if node.name}
    producers = {out: node.name for node in graph.node if node.name for out in node.output}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            if name and node.name:
                consumers.setdefault(name, []).append(node.name)
    return GraphView(
        nodes,
        producers,
        consumers,
        {init.name for init in graph.initializer},
        {i.name for i in graph.input},
        {o.name for o in graph.output},
    )


def int8_nodes(
    float_model: onnx.ModelProto, qdq_model: onnx.ModelProto
) -> tuple[list[str], list[str]]:
    """(nodes the QDQ model quantized: still there with a DequantizeLinear-fed input,
    nodes it removed: activations folded into their producer's quantized output)."""
    qdq_nodes = {node.name: node for node in qdq_model.graph.node}
    dq_outputs = {
        out
        for node in qdq_model.graph.node
        if node.op_type == "DequantizeLinear"
        for out in node.output
    }
    quantized, removed = [], []
    for node in float_model.graph.node:
        if not node.name:
            continue
        twin = qdq_nodes.get(node.name)
        if twin is None:
            removed.append(node.name)
        elif any(name in dq_outputs for name in twin.input):
            quantized.append(node.name)
    return quantized, removed


def build_units(
    view: GraphView,
    quantized: Sequence[str],
    removed: Sequence[str],
    fp32: Mapping[int, Mapping[str, KernelTime]],
    int8: Mapping[int, Mapping[str, KernelTime]],
) -> tuple[list[Unit], list[Link], dict[str, float]]:
    """Units (quantized nodes, each with the removed activations that follow it), their
    measured costs, the links between them, and the time no unit owns (per batch size,
    fp32 and int8 separately, for the report)."""
    owner_of: dict[str, str] = {name: name for name in quantized}
    for name in removed:  # a folded activation belongs to the unit of its input's producer
        inputs = view.nodes[name].input
        producer = view.producers.get(inputs[0]) if inputs else None
        if producer is not None and producer in owner_of:
            owner_of[name] = owner_of[producer]
    members: dict[str, list[str]] = {name: [] for name in quantized}
    for member, unit in owner_of.items():
        members[unit].append(member)
    names, tensors = set(view.nodes), view.tensors

    def unit_of(node: str | None) -> str:
        return owner_of.get(node, FLOAT) if node is not None else FLOAT

    costs: dict[str, dict[str, dict[int, float]]] = {"fp32": {}, "int8": {}}
    unowned: dict[str, float] = {}
    samples: dict[int, list[tuple[int, float]]] = {b: [] for b in int8}
    tensor_elements: dict[str, int] = {}
    for label, profiles in (("fp32", fp32), ("int8", int8)):
        for batch, kernels in profiles.items():
            for kernel in kernels.values():
                owner = kernel_owner(kernel.name, names, view.producers, tensors)
                charged: list[str] = []
                if owner.kind == "node":
                    charged = [unit_of(owner.name)]
                    if label == "fp32" and owner.name in view.nodes:
                        out = view.nodes[owner.name].output[0]
                        tensor_elements.setdefault(f"{batch}:{out}", kernel.output_bytes // 4)
                elif owner.kind == "quantize":
                    # an unfused Q runs after its producer, which therefore ran float
                    tensor_elements.setdefault(f"{batch}:{owner.name}", kernel.output_bytes)
                    samples[batch].append((kernel.output_bytes, kernel.median_us))
                    charged = [unit_of(view.producers.get(owner.name))]
                elif owner.kind == "dequantize":
                    if owner.name in view.initializers:  # a weight dequantized every run
                        charged = [unit_of(c) for c in view.consumers.get(owner.name, [])[:1]]
                    else:
                        tensor_elements.setdefault(
                            f"{batch}:{owner.name}", kernel.output_bytes // 4
                        )
                        samples[batch].append((kernel.output_bytes // 4, kernel.median_us))
                        charged = [unit_of(c) for c in view.consumers.get(owner.name, [])] or [
                            FLOAT
                        ]
                charged = [c for c in charged if c != FLOAT]
                if not charged:
                    key = f"{label}_batch_{batch}"
                    unowned[key] = unowned.get(key, 0.0) + kernel.median_us
                    continue
                share = kernel.median_us / len(charged)
                for unit in charged:
                    per_batch = costs[label].setdefault(unit, {})
                    per_batch[batch] = per_batch.get(batch, 0.0) + share
    units = [
        Unit(
            name,
            view.nodes[name].op_type,
            tuple(members[name]),
            {b: costs["fp32"].get(name, {}).get(b, 0.0) for b in fp32},
            {b: costs["int8"].get(name, {}).get(b, 0.0) for b in int8},
        )
        for name in quantized
    ]
    links = _links(view, owner_of, samples, tensor_elements, sorted(int8))
    return units, links, unowned


def conversion_cost(samples: Sequence[tuple[int, float]], elements: int | None) -> float:
    """A Q or DQ on `elements` values, from the ones measured (least squares on
    elements, never below the cheapest measured; their median when the size is unknown)."""
    if not samples:
        return 0.0
    sizes = np.array([s for s, _ in samples], dtype=float)
    times = np.array([t for _, t in samples], dtype=float)
    floor = float(times.min())
    if elements is None or len(set(sizes.tolist())) < 2:
        return (
            float(np.median(times))
            if elements is None
            else max(floor, float(np.median(times / np.maximum(sizes, 1.0))) * elements)
        )
    slope, intercept = np.polyfit(sizes, times, 1)
    return max(floor, float(intercept + max(slope, 0.0) * elements))


def _links(
    view: GraphView,
    owner_of: Mapping[str, str],
    samples: Mapping[int, Sequence[tuple[int, float]]],
    tensor_elements: Mapping[str, int],
    batches: Sequence[int],
) -> list[Link]:
    links: list[Link] = []
    for tensor in sorted(view.tensors - view.initializers):
        producer = view.producers.get(tensor)
        source = owner_of.get(producer, FLOAT) if producer else FLOAT
        ends = [owner_of.get(c, FLOAT) for c in view.consumers.get(tensor, [])]
        if tensor in view.outputs:
            ends.append(FLOAT)
        for target in ends:
            if target == source or (source == FLOAT and target == FLOAT):
                continue
            cost = {
                b: conversion_cost(samples[b], tensor_elements.get(f"{b}:{tensor}"))
                for b in batches
            }
            links.append(Link(tensor, source, target, cost))
    return links


@dataclass(frozen=True)
class LatencyPlan:
    selection: Selection
    unattributed_us: dict[str, float]
    runs: int


def plan_latency_aware(
    float_path: Path,
    qdq_path: Path,
    feeds_by_batch: Mapping[int, Feeds],
    settings: MeasureSettings,
    work_dir: Path,
    *,
    runs: int,
    warmup_runs: int = 3,
    device: str = "cpu",
) -> LatencyPlan:
    """Profile both models at each batch size and choose the units to quantize."""
    fp32: dict[int, dict[str, KernelTime]] = {}
    int8: dict[int, dict[str, KernelTime]] = {}
    for batch, feeds in feeds_by_batch.items():
        for label, path, into in (("fp32", float_path, fp32), ("int8", qdq_path, int8)):
            into[batch] = profile_kernels(
                path, feeds, settings, work_dir / f"{label}-b{batch}",
                runs=runs, warmup_runs=warmup_runs, device=device,
            )  # fmt: skip
    float_model, qdq_model = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    quantized, removed = int8_nodes(float_model, qdq_model)
    units, links, unowned = build_units(graph_view(float_model), quantized, removed, fp32, int8)
    return LatencyPlan(select(units, links), unowned, runs)


__all__ = [
    "GraphView",
    "KernelTime",
    "LatencyPlan",
    "Owner",
    "build_units",
    "conversion_cost",
    "graph_view",
    "int8_nodes",
    "kernel_owner",
    "plan_latency_aware",
    "profile_kernels",
]
