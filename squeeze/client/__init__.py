"""The Python client of the squeeze API (httpx): `from squeeze.client import Client`."""

from squeeze.client.client import Client
from squeeze.client.errors import SqueezeConnectionError, SqueezeError, WaitTimeout
from squeeze.client.models import (
    Account,
    ApiKey,
    ApiKeyCreated,
    Artifact,
    Batch,
    BatchJob,
    Dataset,
    Event,
    Job,
    JobResult,
    Model,
    Tenant,
)
from squeeze.client.retry import NO_RETRIES, RetryPolicy
from squeeze.client.torch_export import export_torch

__all__ = [
    "NO_RETRIES",
    "Account",
    "ApiKey",
    "ApiKeyCreated",
    "Artifact",
    "Batch",
    "BatchJob",
    "Client",
    "Dataset",
    "Event",
    "Job",
    "JobResult",
    "Model",
    "RetryPolicy",
    "SqueezeConnectionError",
    "SqueezeError",
    "Tenant",
    "WaitTimeout",
    "export_torch",
]
