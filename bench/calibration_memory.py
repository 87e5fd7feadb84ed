"""Peak memory of static quantization's calibration on a deep CNN (issue 18).

    PYTHONPATH=. python bench/calibration_memory.py [minmax|entropy|percentile] [layers]

Builds a CNN of `layers` 3x3 convolutions (16 channels) on 8 images of 3x256x256, runs
the pipeline with one static quantize step in a child process and prints that child's
peak resident memory (VmHWM), with the peak of a dynamic quantize job (no calibration) for
comparison.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 16
IMAGES = 8
SIDE = 256


def deep_cnn(path: Path, layers: int) -> Path:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    previous, channels = "input", 3
    for index in range(layers):
        weight = rng.normal(0, 0.1, (CHANNELS, channels, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{index}"))
        inits.append(numpy_helper.from_array(np.zeros(CHANNELS, np.float32), f"b{index}"))
        nodes.append(
            helper.make_node(
                "Conv", [previous, f"w{index}", f"b{index}"], [f"c{index}"], pads=[1, 1, 1, 1]
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"]))
        previous, channels = f"r{index}", CHANNELS
    head = rng.normal(0, 0.1, (CHANNELS, 10)).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "fc"))
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "deep_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


CHILD = """
import json, sys
from pathlib import Path
from core import pipeline
from core.context import MeasureSettings, RunContext
from core.spec import JobSpec
args = json.loads(sys.argv[1])
spec = JobSpec.model_validate(args["spec"])
ctx = RunContext(work_dir=Path(args["work"]), measure=MeasureSettings(1, 1, 3))
pipeline.run(Path(args["model"]), {"data": Path(args["data"])}, spec, ctx)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print("PEAK", int(line.split()[1]) * 1024)
"""


def peak_rss(model: Path, data: Path, work: Path, steps: list[dict[str, object]]) -> int:
    spec = {"model_id": "m", "eval_dataset_id": "data", "calibration_dataset_id": "data",
            "steps": steps, "batch_size": IMAGES}
    args = {"spec": spec, "model": str(model), "data": str(data), "work": str(work)}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True,
                         text=True, check=False)
    peaks = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("PEAK")]
    if not peaks:
        raise SystemExit(out.stderr[-3000:])
    return peaks[0]


def main() -> None:
    method = sys.argv[1] if len(sys.argv) > 1 else "minmax"
    layers = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = deep_cnn(root / "cnn.onnx", layers)
        images = np.random.default_rng(1).random((IMAGES, 3, SIDE, SIDE), dtype=np.float32)
        np.savez(root / "data.npz", input=images)
        dynamic = {"method": "quantize", "mode": "dynamic"}
        floor = peak_rss(model, root / "data.npz", root / "w0", [dynamic])
        step = {"method": "quantize", "mode": "static", "calibration_method": method}
        quantized = peak_rss(model, root / "data.npz", root / "w1", [step])
    mib = 1024 * 1024
    print(json.dumps({"method": method, "layers": layers, "images": f"{IMAGES}x3x{SIDE}x{SIDE}",
                      "peak_rss_mib_dynamic_quantize": floor // mib,
                      "peak_rss_mib_static_quantize": quantized // mib}))


if __name__ == "__main__":
    main()
