"""The README's first command: one real compression job, end to end, on the embedded default.

Starts the API (uvicorn) and one Celery worker process on a fresh data dir (SQLite, the
file-system broker, local blob files: no Redis or PostgreSQL), trains a small CNN on
scikit-learn's digits, exports it to ONNX, uploads it and its data over HTTP, submits a
static INT8 quantization job, polls it with a progress line, downloads the result, checks
it runs, prints a before/after table read from the job's stored metrics, and stops
everything it started.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.examples import (  # noqa: E402
    accuracy,
    digits_arrays,
    export_onnx,
    save_npz,
    train_digits_cnn,
)

# re-exported: the benchmarks and tests start the API the way the demo does
from service.runner import (  # noqa: E402, F401
    Service,
    ServiceError,
    api_command,
    free_port,
    stop,
    wait_ready,
)


@contextmanager
def service(data_dir: Path, port: int, log_dir: Path) -> Iterator[str]:
    """API + one worker as child processes (service.runner, what `squeeze serve` runs);
    both are stopped on exit, whatever happened."""
    try:
        with Service(data_dir=data_dir, port=port, workers=1, log_dir=log_dir) as running:
            yield running.base_url
    except ServiceError as error:
        raise SystemExit(str(error)) from None


def admin_client(base_url: str, data_dir: Path) -> httpx.Client:
    """A client with the admin key the embedded default made on its first start
    (SQUEEZE_ADMIN_API_KEY would set one); the demo reads it as an operator would."""
    admin_key = (data_dir / "admin-api-key").read_text().strip()
    return httpx.Client(
        base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {admin_key}"}
    )


def check(response: httpx.Response, expected: int) -> dict[str, Any]:
    if response.status_code != expected:
        raise SystemExit(
            f"{response.request.method} {response.request.url}: "
            f"{response.status_code} {response.text}"
        )
    body: dict[str, Any] = response.json()
    return body


def upload(client: httpx.Client, route: str, path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        response = client.post(route, files={"file": (path.name, handle)})
    # 200: the same bytes were uploaded before (a demo run again on the same data dir)
    return check(response, 200 if response.status_code == 200 else 201)


def poll(client: httpx.Client, job_url: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last_line = ""
    while time.monotonic() < deadline:
        job = check(client.get(job_url), 200)
        bar = "#" * int(job["progress"] * 30)
        line = (
            f"  [{bar:<30}] {job['progress']:4.0%}  {job['state']:<9} {job['current_step'] or ''}"
        )
        if line != last_line:
            print(line, flush=True)
            last_line = line
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise SystemExit("the job did not finish in time")


def row(label: str, metrics: dict[str, Any], batch_size: int) -> list[str]:
    latency = {entry["batch_size"]: entry for entry in metrics["latency"]}
    cells = [label, f"{metrics['size_bytes'] / 1024:.1f} KiB", f"{metrics['parameters']:,}"]
    for size in sorted({1, batch_size}):
        cells.append(f"{latency[size]['median_ms']:.3f} / {latency[size]['p95_ms']:.3f}")
    cells.append(f"{metrics['metric_value']:.4f}")
    return cells


def print_table(result: dict[str, Any], batch_size: int) -> None:
    headers = ["model", "size", "params"]
    headers += [f"latency b{size} ms (med/p95)" for size in sorted({1, batch_size})]
    headers.append(result["original"]["metric_name"])
    rows = [row("original (FP32)", result["original"], batch_size)]
    for step in result["steps"]:
        mode = step["details"].get("mode", "")
        rows.append(row(f"after {step['method']} {mode}".strip(), step["metrics"], batch_size))
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for cells in [headers, ["-" * w for w in widths], *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    verdict = result["verdict"]
    print(
        f"\n  size ratio {verdict['size_ratio']:.3f}, latency ratio (b{batch_size}) "
        f"{verdict['latency_ratio']:.3f}, metric change {verdict['metric_change']:+.4f}"
    )
    for target in verdict["checks"]:
        state = "met" if target["met"] else "NOT met"
        print(
            f"  target {target['target']}: limit {target['limit']}, "
            f"measured {target['measured'] + 0.0:.4f} -> {state}"
        )
    print(f"  targets met: {verdict['targets_met']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="squeeze-demo-"))

    print("1. training a small CNN on scikit-learn's digits (user side)")
    torch.set_num_threads(1)
    model = train_digits_cnn()
    x_test, y_test = digits_arrays("test")
    x_train, _ = digits_arrays("train")
    print(f"   test accuracy in PyTorch: {accuracy(model, x_test, y_test):.4f}")
    model_path = export_onnx(model, torch.from_numpy(x_test[:1]), args.out / "digits_cnn.onnx")
    calib_path = save_npz(args.out / "calibration.npz", x_train[:256])
    eval_path = save_npz(args.out / "eval.npz", x_test, y_test)

    print(f"2. starting the service (data dir {data_dir}; logs in {args.out})")
    with (
        service(data_dir, free_port(), args.out) as base_url,
        admin_client(base_url, data_dir) as client,
    ):
        print(f"   API at {base_url}, OpenAPI at {base_url}/docs, one Celery worker")
        print(f"   admin API key in {data_dir / 'admin-api-key'}")
        print("3. uploading over HTTP")
        uploaded_model = upload(client, "/v1/models", model_path)
        calib = upload(client, "/v1/datasets", calib_path)
        evaluation = upload(client, "/v1/datasets", eval_path)
        info = uploaded_model["info"]
        print(
            f"   model {uploaded_model['id']}: opset {info['opset']}, "
            f"{info['parameters']:,} parameters, inputs {[i['name'] for i in info['inputs']]}"
        )
        spec = {
            "model_id": uploaded_model["id"],
            "calibration_dataset_id": calib["id"],
            "eval_dataset_id": evaluation["id"],
            "task": {"kind": "classification", "labels": "label"},
            "steps": [{"method": "quantize", "mode": "static", "per_channel": True}],
            "targets": {"max_metric_drop": 0.01},
            "batch_size": args.batch_size,
        }
        print("4. submitting a static INT8 quantization job (target: at most 1 point drop)")
        response = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": data_dir.name})
        job = check(response, 202)
        print(f"   job {job['id']} at {response.headers['location']}")
        job = poll(client, response.headers["location"])
        if job["state"] != "succeeded":
            raise SystemExit(f"job {job['state']}: {job['error']}")
        print("5. downloading the result")
        download = client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx")
        download.raise_for_status()
        result_path = args.out / "digits_cnn.int8.onnx"
        result_path.write_bytes(download.content)
        session = ort.InferenceSession(str(result_path), providers=["CPUExecutionProvider"])
        logits = session.run(None, {"input": x_test})[0]
        local_accuracy = float((np.argmax(logits, axis=1) == y_test).mean())
        print(
            f"   {result_path.name}: {len(download.content):,} bytes, runs in ONNX Runtime, "
            f"accuracy here {local_accuracy:.4f}"
        )
        report = client.get(f"/v1/jobs/{job['id']}/artifacts/report.html")
        report.raise_for_status()
        report_path = args.out / "report.html"
        report_path.write_bytes(report.content)
        print(f"   the job's report with its plots: {report_path} (open it in a browser)")
        print("6. before/after, from the job's stored metrics:\n")
        print_table(job["result"], args.batch_size)
    shutil.rmtree(data_dir, ignore_errors=True)
    print(f"\nservice stopped, {data_dir} removed. demo finished.")


if __name__ == "__main__":
    main()
