#!/usr/bin/env bash
# For the day an NVIDIA GPU machine is at hand: builds a venv with ONNX Runtime's GPU build
# (the lock, then onnxruntime-gpu in place of onnxruntime, as the Dockerfile's gpu target
# does), then runs every test marked `gpu` (ONNX Runtime's CUDA provider through the runtime
# adapter, TensorRT where installed, QAT / pruning / distillation / search training on
# CUDA) and one GPU job end to end (tests/integration/test_gpu_job.py: the API, a real
# worker on the gpu queue, a cuda job). Fails, rather than skips, when no GPU is reachable.
#
#   scripts/gpu-check.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi finds none)" >&2
    exit 2
fi

lock_key="$(cat requirements.lock requirements-gpu.txt | sha256sum | cut -c1-12)"
venv="${SQUEEZE_GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/squeeze/venv-gpu-$lock_key}"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    echo "gpu-check: creating $venv" >&2
    rm -rf "$venv"
    python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r requirements.lock
    "$venv/bin/python" -m pip uninstall -q -y onnxruntime
    "$venv/bin/python" -m pip install -q -r requirements-gpu.txt
    touch "$venv/.complete"
fi

# What this machine offers, as a worker would register it.
PYTHONPATH=. "$venv/bin/python" -m core.devices

# SQUEEZE_REQUIRE_GPU: a gpu test that would skip fails the run instead.
export SQUEEZE_REQUIRE_GPU=1
PYTHONPATH=. "$venv/bin/python" -m pytest -q -p no:cacheprovider -m gpu -rs "$@" \
    tests/core/test_gpu.py tests/core/test_devices.py tests/integration/test_gpu_job.py
