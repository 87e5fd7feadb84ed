"""A corpus of hostile uploads: each case builds the bytes an attacker (or a broken
exporter) would send, and names the route it targets.

The files are built, not shipped: a pickle payload in the repository would be a hazard of
its own. `python -m tests.hostile.corpus OUT_DIR` writes the corpus out for inspection.
Every payload that would run code does something harmless but visible: it creates the
`canary` path given to `build_corpus`. Tests assert the canary never appears.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODELS = "/v1/models"
DATASETS = "/v1/datasets"


@dataclass(frozen=True)
class Hostile:
    name: str
    route: str
    filename: str
    content: bytes
    # The HTTP status the service must answer; None: any 4xx.
    status: int | None = None


class RunsCode:
    """Unpickling this creates the canary: the stand-in for an attacker's code."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.canary),)


# --- valid building blocks ---------------------------------------------------------------


def tiny_model(opset: int = 17, ir_version: int | None = None) -> onnx.ModelProto:
    """y = x @ W + b: a valid model, the base most hostile variants start from."""
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def tiny_model_bytes() -> bytes:
    return tiny_model().SerializeToString()


def with_graph(edit: Callable[[onnx.GraphProto], None]) -> bytes:
    model = tiny_model()
    edit(model.graph)
    return model.SerializeToString()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A version 1.0 .npy header declaring `shape`, whatever it is (numpy refuses to
    write negative or overflowing shapes itself)."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    padded = text.ljust(((len(text) + 10) // 64 + 1) * 64 - 10) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(padded)) + padded


def npz_declaring(shape: tuple[int, ...], payload: bytes = b"") -> bytes:
    """An .npz whose one array declares `shape` and holds `payload`."""
    return zip_of({"x.npy": npy_header(shape) + payload})


def npz_of_many_arrays(count: int) -> bytes:
    """An .npz of `count` one-element arrays (each a member with its own header)."""
    member = npy_header((1,)) + bytes(4)
    return zip_of({f"a{index}.npy": member for index in range(count)})


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_of(entries: list[tarfile.TarInfo], data: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for info in entries:
            payload = data.get(info.name)
            archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def tar_file(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


def tar_link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def external_model(location: str, offset: int = 0, length: int = 48) -> bytes:
    """The tiny model with W stored outside the .onnx at `location`."""
    model = tiny_model()
    weight = model.graph.initializer[0]
    weight.ClearField("float_data")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def nested_if_model(depth: int) -> bytes:
    """If-nodes nested `depth` deep, encoded by hand (the protobuf library itself refuses
    to build it): a few KB that would exhaust a recursive parser's stack."""
    graph = _field(1, _field(4, b"Identity") + _field(1, b"x") + _field(2, b"y"))
    for _ in range(depth):
        branch = _field(1, b"then_branch") + _field(6, graph) + _varint_field(20, 5)
        node = _field(1, b"cond") + _field(2, b"y") + _field(4, b"If") + _field(5, branch)
        graph = _field(1, node)
    opset = _field(1, b"") + _varint_field(2, 17)
    return _varint_field(1, 8) + _field(7, graph) + _field(8, opset)


def _scalar_model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> bytes:
    """A model y = x + r, where the nodes compute the float scalar r."""
    graph = helper.make_graph(
        [*nodes, helper.make_node("Add", ["r", "x"], ["y"])],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def constant_of_shape_bomb(count: int = 24, elements: int = 2**28) -> bytes:
    """`count` ConstantOfShape([elements]) float nodes summed into one scalar: a ~1.5 KB
    file whose constant folding would materialise count * elements * 4 bytes (24 GiB)."""
    one = numpy_helper.from_array(np.array([1.0], np.float32))
    shape = numpy_helper.from_array(np.array([elements], np.int64))
    nodes = [helper.make_node("Constant", [], ["shape"], value=shape)]
    nodes += [
        helper.make_node("ConstantOfShape", ["shape"], [f"ones{i}"], value=one)
        for i in range(count)
    ]
    nodes += [
        helper.make_node("Sum", [f"ones{i}" for i in range(count)], ["total"]),
        helper.make_node("ReduceSum", ["total"], ["r"], keepdims=0),
    ]
    return _scalar_model(nodes, [])


def expand_bomb(dims: tuple[int, ...] = (2**16, 2**16)) -> bytes:
    """The input broadcast by Expand to a constant shape: 16 GiB to hold at run time."""
    nodes = [
        helper.make_node("Expand", ["x", "shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
    ]
    return _scalar_model(nodes, [numpy_helper.from_array(np.array(dims, np.int64), "shape")])


def tile_bomb(repeats: tuple[int, ...] = (2**15, 2**15)) -> bytes:
    """A 2x2 initializer tiled by constant repeats: folded, 16 GiB."""
    nodes = [
        helper.make_node("Tile", ["small", "repeats"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
    ]
    return _scalar_model(
        nodes,
        [
            numpy_helper.from_array(np.ones((2, 2), np.float32), "small"),
            numpy_helper.from_array(np.array(repeats, np.int64), "repeats"),
        ],
    )


def range_bomb(limit: int = 2**31) -> bytes:
    """Range(0, limit, 1) of constant floats: folded, 8 GiB."""
    nodes = [
        helper.make_node("Range", ["start", "limit", "delta"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
    ]
    scalars = {"start": 0.0, "limit": float(limit), "delta": 1.0}
    return _scalar_model(
        nodes, [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in scalars.items()]
    )


def loop_model(trip_count: int | None, condition_stays_true: bool = True) -> bytes:
    """A Loop adding 1 to a float per iteration; `trip_count` None leaves M out. Its body
    passes the condition through unchanged (nothing can end it but the trip count), or,
    with `condition_stays_true=False`, computes it from the running value."""
    body_nodes = [
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.float32(1))),
        helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
    ]
    if condition_stays_true:
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    else:
        limit = numpy_helper.from_array(np.float32(10))
        body_nodes += [
            helper.make_node("Constant", [], ["limit"], value=limit),
            helper.make_node("Less", ["acc_out", "limit"], ["cond_out"]),
        ]
    body = helper.make_graph(
        body_nodes,
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
    )
    initializers = [
        numpy_helper.from_array(np.array(True), "go"),
        numpy_helper.from_array(np.float32(0), "zero"),
    ]
    if trip_count is not None:
        initializers.append(numpy_helper.from_array(np.array(trip_count, np.int64), "trips"))
    loop = helper.make_node(
        "Loop", ["trips" if trip_count is not None else "", "go", "zero"], ["r"], body=body
    )
    return _scalar_model([loop], initializers)


def nested_ifs(depth: int) -> bytes:
    """If-nodes nested `depth` deep with onnx.helper (valid, unlike nested_if_model)."""
    leaf = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["out0"])],
        "leaf",
        [],
        [helper.make_tensor_value_info("out0", TensorProto.FLOAT, [])],
    )
    graph = leaf
    for level in range(1, depth + 1):
        node = helper.make_node(
            "If", ["go"], [f"out{level}"], then_branch=graph, else_branch=leaf
        )
        output = helper.make_tensor_value_info(f"out{level}", TensorProto.FLOAT, [])
        graph = helper.make_graph([node], f"level{level}", [], [output])
    nodes = [*graph.node, helper.make_node("Identity", [f"out{depth}"], ["r"])]
    return _scalar_model(nodes, [numpy_helper.from_array(np.array(True), "go")])


# --- the corpus --------------------------------------------------------------------------


def model_cases(canary: Path) -> list[Hostile]:
    runs_code = pickle.dumps(RunsCode(canary))
    valid = tiny_model_bytes()
    torch_like = zip_of({"archive/data.pkl": runs_code, "archive/version": b"3\n"})
    cases = [
        Hostile("pickle named .onnx", MODELS, "model.onnx", runs_code),
        Hostile("pickle named .pt", MODELS, "model.pt", runs_code),
        Hostile("pickle protocol 0", MODELS, "model.onnx", pickle.dumps(RunsCode(canary), 0)),
        Hostile("torch.save zip", MODELS, "model.pt", torch_like),
        Hostile("torch.save zip named .onnx", MODELS, "model.onnx", torch_like),
        Hostile("torch.export .pt2", MODELS, "model.pt2", zip_of({"m/data.pkl": runs_code})),
        Hostile("python script", MODELS, "model.onnx", b"import os\nos.mkdir('canary')\n"),
        Hostile("empty file", MODELS, "model.onnx", b""),
        Hostile("one byte", MODELS, "model.onnx", b"\x08"),
        Hostile("random bytes", MODELS, "model.onnx", np.random.default_rng(0).bytes(4096)),
        Hostile("truncated to half", MODELS, "model.onnx", valid[: len(valid) // 2]),
        Hostile("last byte cut", MODELS, "model.onnx", valid[:-1]),
        Hostile("json", MODELS, "model.onnx", b'{"graph": {"node": []}}'),
        Hostile("html", MODELS, "model.onnx", b"<html><script>alert(1)</script></html>"),
        Hostile(
            "safetensors header bomb",
            MODELS,
            "model.safetensors",
            struct.pack("<Q", 2**62) + b'{"__metadata__":{}}',
        ),
        Hostile(
            "protobuf length bomb",
            MODELS,
            "model.onnx",
            b"\x3a" + varint(2**31) + b"\x0a\x01x",  # graph field claiming 2 GB
        ),
        Hostile("If nested 1000 deep", MODELS, "model.onnx", nested_if_model(1000)),
        Hostile("ir_version 999", MODELS, "model.onnx", _serialized(tiny_model(ir_version=999))),
        Hostile("opset 99", MODELS, "model.onnx", _serialized(tiny_model(opset=99))),
        Hostile(
            "unknown op domain",
            MODELS,
            "model.onnx",
            with_graph(lambda g: g.node[0].__setattr__("domain", "evil.ops")),
        ),
        Hostile(
            "unknown op type",
            MODELS,
            "model.onnx",
            with_graph(lambda g: g.node[0].__setattr__("op_type", "SystemCall")),
        ),
        Hostile("no outputs", MODELS, "model.onnx", with_graph(lambda g: g.ClearField("output"))),
        Hostile("cycle", MODELS, "model.onnx", with_graph(_make_cycle)),
        Hostile("dangling input", MODELS, "model.onnx", with_graph(_dangle)),
        Hostile("raw data shorter than dims", MODELS, "model.onnx", with_graph(_short_raw)),
        Hostile("dims overflow", MODELS, "model.onnx", with_graph(_huge_dims)),
        Hostile("string input", MODELS, "model.onnx", with_graph(_string_input)),
        Hostile("external data /etc/passwd", MODELS, "model.onnx", external_model("/etc/passwd")),
        Hostile("external data ../", MODELS, "model.onnx", external_model("../../etc/passwd")),
        Hostile("external data missing", MODELS, "model.onnx", external_model("weights.bin")),
        Hostile(
            "zip traversal",
            MODELS,
            "model.zip",
            zip_of({"model.onnx": valid, "../../escaped.bin": b"x"}),
        ),
        Hostile(
            "zip absolute member",
            MODELS,
            "model.zip",
            zip_of({"model.onnx": valid, "/abs.bin": b"x"}),
        ),
        Hostile(
            "zip bomb",
            MODELS,
            "model.zip",
            zip_of({"model.onnx": valid, "w.bin": bytes(50_000_000)}, zipfile.ZIP_DEFLATED),
        ),
        Hostile(
            "zip with two models",
            MODELS,
            "model.zip",
            zip_of({"a.onnx": valid, "b.onnx": valid}),
        ),
        Hostile("zip without a model", MODELS, "model.zip", zip_of({"readme.txt": b"hi"})),
        Hostile(
            "zip in zip", MODELS, "model.zip", zip_of({"inner.zip": zip_of({"m.onnx": valid})})
        ),
        Hostile(
            "tar symlink to /etc/passwd",
            MODELS,
            "model.tar",
            tar_of(
                [tar_file("model.onnx", valid), tar_link("w.bin", "/etc/passwd", tarfile.SYMTYPE)],
                {"model.onnx": valid},
            ),
        ),
        Hostile(
            "tar hardlink",
            MODELS,
            "model.tar",
            tar_of(
                [tar_file("model.onnx", valid), tar_link("w.bin", "/etc/shadow", tarfile.LNKTYPE)],
                {"model.onnx": valid},
            ),
        ),
        Hostile("tar device file", MODELS, "model.tar", _tar_with_device(valid)),
        Hostile(
            "tar traversal",
            MODELS,
            "model.tar",
            tar_of(
                [tar_file("model.onnx", valid), tar_file("../escaped.bin", b"x")],
                {"model.onnx": valid, "../escaped.bin": b"x"},
            ),
        ),
        Hostile("tar.gz bomb", MODELS, "model.tar.gz", _tar_gz_bomb(valid)),
        Hostile("gzip of a pickle", MODELS, "model.onnx", gzip.compress(runs_code)),
        # Tiny files whose graphs would exhaust the API or a worker (core/graph_limits.py).
        Hostile("ConstantOfShape folding bomb", MODELS, "model.onnx", constant_of_shape_bomb()),
        Hostile("Expand to 16 GiB", MODELS, "model.onnx", expand_bomb()),
        Hostile("Tile to 16 GiB", MODELS, "model.onnx", tile_bomb()),
        Hostile("Range of 2^31 floats", MODELS, "model.onnx", range_bomb()),
        Hostile("Loop trip count 2^62", MODELS, "model.onnx", loop_model(2**62)),
        Hostile("Loop that never ends", MODELS, "model.onnx", loop_model(None)),
        Hostile("If nested 20 deep", MODELS, "model.onnx", nested_ifs(20)),
    ]
    return cases


def dataset_cases(canary: Path) -> list[Hostile]:
    runs_code = pickle.dumps(RunsCode(canary))
    objects = np.array([RunsCode(canary), 1], dtype=object)
    good = npy_bytes(np.zeros((4, 3), np.float32))
    huge_header = (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", 118)
        + b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }".ljust(117)
        + b"\n"
    )
    cases = [
        Hostile("object array npz", DATASETS, "data.npz", npz_with_objects(objects)),
        Hostile("object array .npy", DATASETS, "data.npy", npy_bytes(objects, allow_pickle=True)),
        Hostile("pickle named .npz", DATASETS, "data.npz", runs_code),
        Hostile("pickle member in npz", DATASETS, "data.npz", zip_of({"x.npy": runs_code})),
        Hostile("torch.save zip as data", DATASETS, "data.npz", zip_of({"a/data.pkl": runs_code})),
        Hostile("empty file", DATASETS, "data.npz", b""),
        Hostile("random bytes", DATASETS, "data.npz", np.random.default_rng(1).bytes(2048)),
        Hostile("empty npz", DATASETS, "data.npz", zip_of({})),
        Hostile("member not .npy", DATASETS, "data.npz", zip_of({"x.txt": b"1,2,3"})),
        Hostile("garbage .npy member", DATASETS, "data.npz", zip_of({"x.npy": b"\x93NUMPYxx"})),
        Hostile("truncated member", DATASETS, "data.npz", zip_of({"x.npy": good[:-5]})),
        Hostile("header claims 10^12 rows", DATASETS, "data.npz", zip_of({"x.npy": huge_header})),
        Hostile(
            "npz bomb",
            DATASETS,
            "data.npz",
            zip_of({"x.npy": npy_bytes(np.zeros(300_000_000, np.uint8))}, zipfile.ZIP_DEFLATED),
        ),
        Hostile(
            "npz traversal member",
            DATASETS,
            "data.npz",
            zip_of({"../../x.npy": good}),
        ),
        Hostile("string array", DATASETS, "data.npz", npz(x=np.array(["a", "b"]))),
        Hostile("complex array", DATASETS, "data.npz", npz(x=np.ones(3, np.complex64))),
        Hostile(
            "structured dtype",
            DATASETS,
            "data.npz",
            npz(x=np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])),
        ),
        Hostile("datetime array", DATASETS, "data.npz", npz(x=np.array(["2026-01-01"], "M8[D]"))),
        Hostile("zero samples", DATASETS, "data.npz", npz(x=np.zeros((0, 4), np.float32))),
        Hostile("scalar array", DATASETS, "data.npz", npz(x=np.float32(1.0))),
        Hostile("onnx model as data", DATASETS, "data.npz", tiny_model_bytes()),
        Hostile("shape wraps to 0 bytes", DATASETS, "data.npz", npz_declaring((2**32, 2**32))),
        Hostile("negative shape", DATASETS, "data.npz", npz_declaring((-2, -2), bytes(16))),
        Hostile("shape over 2^64", DATASETS, "data.npz", npz_declaring((2**70,))),
        Hostile("1025 tiny arrays", DATASETS, "data.npz", npz_of_many_arrays(1025)),
        Hostile("end record claiming 65535 arrays", DATASETS, "data.npz", _claims_many_arrays()),
    ]
    return cases


# What each case must be refused for: (route, name) -> (problem code, a fragment of the
# detail, case-insensitive). A 4xx for another reason (a size cap catching a pickle, a
# parse error where a check should have spoken) is a failure: the check it was meant to
# exercise may be gone.
MODEL_REASONS: dict[str, tuple[str, str]] = {
    "pickle named .onnx": ("invalid_model", "python pickle"),
    "pickle named .pt": ("invalid_model", "python pickle"),
    # Protocol 0 has no magic bytes to sniff: the protobuf parse refuses it.
    "pickle protocol 0": ("invalid_model", "protobuf does not parse"),
    "torch.save zip": ("archive_without_model", "pytorch checkpoint"),
    "torch.save zip named .onnx": ("archive_without_model", "pytorch checkpoint"),
    "torch.export .pt2": ("archive_without_model", "pytorch checkpoint"),
    "python script": ("invalid_model", "protobuf does not parse"),
    "empty file": ("invalid_model", "empty"),
    "one byte": ("invalid_model", "protobuf does not parse"),
    "random bytes": ("invalid_model", "protobuf does not parse"),
    "truncated to half": ("invalid_model", "protobuf does not parse"),
    "last byte cut": ("invalid_model", "protobuf does not parse"),
    "json": ("invalid_model", "protobuf does not parse"),
    "html": ("invalid_model", "protobuf does not parse"),
    "safetensors header bomb": ("invalid_model", "protobuf does not parse"),
    "protobuf length bomb": ("invalid_model", "protobuf does not parse"),
    "If nested 1000 deep": ("invalid_model", "protobuf does not parse"),
    "ir_version 999": ("invalid_model", "ir_version 999"),
    "opset 99": ("invalid_model", "onnx runtime"),
    "unknown op domain": ("invalid_model", "evil.ops"),
    "unknown op type": ("invalid_model", "systemcall"),
    "no outputs": ("invalid_model", "no graph outputs"),
    "cycle": ("invalid_model", "topologically sorted"),
    "dangling input": ("invalid_model", "'nowhere'"),
    "raw data shorter than dims": ("invalid_model", "raw_data size"),
    "dims overflow": ("invalid_model", "dimension product overflow"),
    "string input": ("invalid_model", "type error"),
    "external data /etc/passwd": ("external_data_unsupported", "external data"),
    "external data ../": ("external_data_unsupported", "external data"),
    "external data missing": ("external_data_unsupported", "external data"),
    "zip traversal": ("unsafe_archive", "'../../escaped.bin'"),
    "zip absolute member": ("unsafe_archive", "'/abs.bin'"),
    "zip bomb": ("archive_too_large", "uncompressed"),
    "zip with two models": ("archive_with_several_models", "2 .onnx files"),
    "zip without a model": ("archive_without_model", "no .onnx file"),
    "zip in zip": ("archive_without_model", "no .onnx file"),
    "tar symlink to /etc/passwd": ("unsafe_archive", "symbolic link"),
    "tar hardlink": ("unsafe_archive", "hard link"),
    "tar device file": ("unsafe_archive", "character device"),
    "tar traversal": ("unsafe_archive", "'../escaped.bin'"),
    "tar.gz bomb": ("archive_too_large", "uncompressed"),
    "gzip of a pickle": ("invalid_model", "not a readable tar.gz"),
    "ConstantOfShape folding bomb": ("constant_folding_too_large", "26843545604 bytes"),
    "Expand to 16 GiB": ("tensor_too_large", "17179869184 bytes"),
    "Tile to 16 GiB": ("tensor_too_large", "17179869184 bytes"),
    "Range of 2^31 floats": ("tensor_too_large", "8589934592 bytes"),
    "Loop trip count 2^62": ("loop_trip_count_too_large", "4611686018427387904"),
    "Loop that never ends": ("loop_trip_count_too_large", "never ends"),
    "If nested 20 deep": ("subgraph_too_deep", "nested more than"),
}
DATASET_REASONS: dict[str, tuple[str, str]] = {
    "object array npz": ("pickle_refused", "pickle"),
    "object array .npy": ("invalid_dataset", "single .npy array"),
    "pickle named .npz": ("invalid_dataset", "python pickle"),
    "pickle member in npz": ("invalid_dataset", "not a valid .npy array"),
    "torch.save zip as data": ("invalid_dataset", "'a/data.pkl'"),
    "empty file": ("invalid_dataset", "not an .npz archive"),
    "random bytes": ("invalid_dataset", "not an .npz archive"),
    "empty npz": ("invalid_dataset", "holds no arrays"),
    "member not .npy": ("invalid_dataset", "'x.txt'"),
    "garbage .npy member": ("invalid_dataset", "unsupported .npy version"),
    "truncated member": ("invalid_array_shape", "holds 43 bytes"),
    "header claims 10^12 rows": ("invalid_array_shape", "[1000000000000]"),
    "npz bomb": ("dataset_too_large", "uncompressed"),
    "npz traversal member": ("invalid_dataset", "'../../x.npy'"),
    "string array": ("invalid_dataset", "dtype <u1"),
    "complex array": ("invalid_dataset", "complex64"),
    "structured dtype": ("invalid_dataset", "only bool, integer and float"),
    "datetime array": ("invalid_dataset", "datetime64"),
    "zero samples": ("invalid_dataset", "no samples"),
    "scalar array": ("invalid_dataset", "0-dimensional"),
    "onnx model as data": ("invalid_dataset", "not an .npz archive"),
    "shape wraps to 0 bytes": ("invalid_array_shape", "[4294967296, 4294967296]"),
    "negative shape": ("invalid_array_shape", "cannot be negative"),
    "shape over 2^64": ("invalid_array_shape", "[1180591620717411303424]"),
    "1025 tiny arrays": ("dataset_too_many_arrays", "(1025)"),
    "end record claiming 65535 arrays": ("dataset_too_many_arrays", "(65535)"),
}


def expected_refusal(case: Hostile) -> tuple[str, str]:
    """The problem code and detail fragment `case` must be refused with."""
    reasons = MODEL_REASONS if case.route == MODELS else DATASET_REASONS
    return reasons[case.name]


def build_corpus(canary: Path) -> list[Hostile]:
    return model_cases(canary) + dataset_cases(canary)


def npz_with_objects(objects: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=objects, allow_pickle=True)
    return buffer.getvalue()


def _serialized(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def _make_cycle(graph: onnx.GraphProto) -> None:
    graph.node[0].input[0] = "y"  # MatMul reads Add's output, which reads MatMul's


def _dangle(graph: onnx.GraphProto) -> None:
    graph.node[1].input[1] = "nowhere"


def _short_raw(graph: onnx.GraphProto) -> None:
    weight = graph.initializer[0]
    weight.ClearField("float_data")
    weight.raw_data = b"\x00" * 5


def _huge_dims(graph: onnx.GraphProto) -> None:
    weight = graph.initializer[0]
    del weight.dims[:]
    weight.dims.extend([2**40, 2**40])


def _string_input(graph: onnx.GraphProto) -> None:
    graph.input[0].type.tensor_type.elem_type = TensorProto.STRING


def _claims_many_arrays() -> bytes:
    """A one-array .npz whose end record claims 65535 members."""
    content = bytearray(npz(x=np.zeros(2, np.float32)))
    end = content.rfind(b"PK\x05\x06")
    content[end + 8 : end + 12] = struct.pack("<HH", 0xFFFF, 0xFFFF)
    return bytes(content)


def _tar_with_device(valid: bytes) -> bytes:
    device = tarfile.TarInfo("dev-zero")
    device.type = tarfile.CHRTYPE
    device.devmajor, device.devminor = 1, 5
    return tar_of([tar_file("model.onnx", valid), device], {"model.onnx": valid})


def _tar_gz_bomb(valid: bytes) -> bytes:
    zeros = bytes(60_000_000)
    return tar_of(
        [tar_file("model.onnx", valid), tar_file("w.bin", zeros)],
        {"model.onnx": valid, "w.bin": zeros},
        mode="w:gz",
    )


def write_corpus(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, case in enumerate(build_corpus(out_dir / "canary")):
        path = (
            out_dir / f"{index:02d}-{case.name.replace(' ', '_').replace('/', '_')}-{case.filename}"
        )
        path.write_bytes(case.content)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")):
        print(path)
