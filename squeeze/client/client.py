"""`Client`: every endpoint of the squeeze API as a typed method.

```python
from squeeze.client import Client

with Client("http://127.0.0.1:8000", api_key="sqz_...") as client:
    model = client.upload_model("model.onnx")
    data = client.upload_dataset("eval.npz")
    job = client.submit_job({"model_id": model.id, "eval_dataset_id": data.id,
                             "steps": [{"method": "quantize"}]})
    job = client.wait(job)
    client.download_model(job, "model.int8.onnx")
```

The URL and key default to `SQUEEZE_URL` and `SQUEEZE_API_KEY`. Connection errors, 5xx
and 429 are retried with backoff (`RetryPolicy`), honouring `Retry-After`; an error
answer is raised as `SqueezeError` with the problem's status, code and detail.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from squeeze.client import retry
from squeeze.client.errors import SqueezeConnectionError, SqueezeError, WaitTimeout
from squeeze.client.models import (
    Account,
    ApiKey,
    ApiKeyCreated,
    Artifact,
    Batch,
    BatchPage,
    Dataset,
    DatasetPage,
    Event,
    EventPage,
    Job,
    JobPage,
    Model,
    ModelPage,
    Tenant,
    WebhookSecret,
)
from squeeze.client.retry import RetryPolicy
from squeeze.client.transfer import Progress, ProgressReader, file_sha256, write_stream

DEFAULT_URL = "http://127.0.0.1:8000"
MODEL_ARTIFACTS = ("model.onnx", "model.zip")

T = TypeVar("T", bound=BaseModel)
JobRef = Job | str
# what a request sends, built afresh for every attempt (an upload reopens its file)
RequestArgs = Callable[[], dict[str, Any]]


def _job_id(job: JobRef) -> str:
    return job if isinstance(job, str) else job.id


class Client(AbstractContextManager["Client"]):
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        retry_policy: RetryPolicy | None = None,
        http: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`http`: an httpx client to send through (e.g. a FastAPI TestClient), else one
        is made on `url` (with `transport`, if given). `sleep` is what waits between
        retries and polls (tests pass a recorder)."""
        self.url = (url or os.environ.get("SQUEEZE_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("SQUEEZE_API_KEY")
        self.retry_policy = retry_policy or RetryPolicy()
        self.timeout_s = timeout_s
        self.sleep = sleep
        self._owns_http = http is None
        self.http = http or httpx.Client(
            base_url=self.url, timeout=timeout_s, transport=transport, follow_redirects=False
        )

    # --- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    def _send(self, method: str, path: str, args: RequestArgs, *, safe: bool) -> httpx.Response:
        """Send with retries; returns a 2xx response, raises SqueezeError otherwise."""
        attempt = 0
        while True:
            attempt += 1
            try:
                kwargs = args()
                kwargs["headers"] = self._headers(kwargs.get("headers"))
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                delay = self.retry_policy.delay_s(attempt, None)
                if delay is None or not retry.should_retry_error(error, safe=safe):
                    raise SqueezeConnectionError(
                        f"{method} {self.url}{path}: {type(error).__name__}: {error}"
                    ) from error
                self.sleep(delay)
                continue
            if response.is_success:
                return response
            wait_s = retry.retry_after_s(response)
            if retry.should_retry_status(response.status_code, safe=safe):
                delay = self.retry_policy.delay_s(attempt, wait_s)
                if delay is not None:
                    self.sleep(delay)
                    continue
            raise _error_from(response, wait_s)

    def _json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        safe: bool = True,
    ) -> Any:
        query = {key: value for key, value in (params or {}).items() if value is not None}

        def args() -> dict[str, Any]:
            kwargs: dict[str, Any] = {"params": query, "headers": dict(headers or {})}
            if json is not None:
                kwargs["json"] = json
            return kwargs

        return self._send(method, path, args, safe=safe).json()

    def _get(self, path: str, model: type[T], **params: Any) -> T:
        return model.model_validate(self._json("GET", path, params=params))

    # --- service ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return dict(self._json("GET", "/healthz"))

    def ready(self) -> dict[str, Any]:
        return dict(self._json("GET", "/readyz"))

    def metrics(self) -> str:
        """The Prometheus exposition (needs an admin key)."""
        return self._send("GET", "/metrics", lambda: {}, safe=True).text

    # --- uploads ------------------------------------------------------------------------

    def upload_model(
        self, path: Path | str, *, progress: Progress | None = None, reuse: bool = True
    ) -> Model:
        """Upload an ONNX model (or an archive of one with its external data), streamed
        from disk; `progress(bytes_sent, total)` is called as it goes. With `reuse`, a
        model with the same bytes (sha256) already in the account is returned instead
        (`reused` is true) and nothing is sent; the service reuses it anyway."""
        return Model.model_validate(self._upload("/v1/models", Path(path), progress, reuse))

    def upload_dataset(
        self, path: Path | str, *, progress: Progress | None = None, reuse: bool = True
    ) -> Dataset:
        """Upload an `.npz` of named arrays, streamed from disk (`reuse` as for models)."""
        return Dataset.model_validate(self._upload("/v1/datasets", Path(path), progress, reuse))

    def upload_torch(
        self,
        module: Any,
        example: Any,
        *,
        input_name: str = "input",
        output_name: str = "output",
        opset: int = 17,
        progress: Progress | None = None,
    ) -> Model:
        """Export a PyTorch module to ONNX here (see `torch_export.export_torch`), upload
        it, and remove the exported file."""
        from squeeze.client.torch_export import export_torch

        path = export_torch(
            module, example, input_name=input_name, output_name=output_name, opset=opset
        )
        try:
            return self.upload_model(path, progress=progress)
        finally:
            path.unlink(missing_ok=True)
            path.parent.rmdir()

    def _upload(self, route: str, path: Path, progress: Progress | None, reuse: bool) -> Any:
        total = path.stat().st_size
        if reuse:
            # one read of the file here can save sending it
            listed = self._json("GET", route, params={"sha256": file_sha256(path), "limit": 1})
            if listed["items"]:
                return {**listed["items"][0], "reused": True}
        opened: list[Any] = []

        def args() -> dict[str, Any]:
            for handle in opened:  # an earlier attempt's file
                handle.close()
            handle = path.open("rb")
            opened.append(handle)
            reader = ProgressReader(handle, total, progress)
            return {"files": {"file": (path.name, reader, "application/octet-stream")}}

        try:
            # an upload is repeated only when the service cannot have stored it
            return self._send("POST", route, args, safe=False).json()
        finally:
            for handle in opened:
                handle.close()

    def get_model(self, model_id: str) -> Model:
        return self._get(f"/v1/models/{model_id}", Model)

    def get_dataset(self, dataset_id: str) -> Dataset:
        return self._get(f"/v1/datasets/{dataset_id}", Dataset)

    def list_models(
        self,
        *,
        name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> ModelPage:
        """The tenant's models, newest first: file names containing `name` (any case),
        created in [created_after, created_before); follow `next_cursor`."""
        return self._get(
            "/v1/models",
            ModelPage,
            **_listing(name, created_after, created_before, limit, cursor),
        )

    def list_datasets(
        self,
        *,
        name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> DatasetPage:
        return self._get(
            "/v1/datasets",
            DatasetPage,
            **_listing(name, created_after, created_before, limit, cursor),
        )

    def iter_models(self, *, name: str | None = None, page_size: int = 100) -> Iterator[Model]:
        """Every model (whose file name contains `name`), newest first."""
        cursor: str | None = None
        while True:
            page = self.list_models(name=name, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def iter_datasets(
        self, *, name: str | None = None, page_size: int = 100
    ) -> Iterator[Dataset]:
        cursor: str | None = None
        while True:
            page = self.list_datasets(name=name, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def delete_model(self, model: Model | str) -> None:
        """Delete an upload (and its file unless another upload holds the same bytes).
        A model a queued or running job reads: SqueezeError 409 `in_use`, naming it."""
        self._delete(f"/v1/models/{model if isinstance(model, str) else model.id}")

    def delete_dataset(self, dataset: Dataset | str) -> None:
        self._delete(f"/v1/datasets/{dataset if isinstance(dataset, str) else dataset.id}")

    def _delete(self, path: str) -> None:
        # not repeated after a lost answer: a second try would say 404 for a success
        self._send("DELETE", path, lambda: {}, safe=False)

    # --- jobs ---------------------------------------------------------------------------

    def submit_job(
        self,
        spec: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a job. An Idempotency-Key is always sent (a new one unless given), so a
        retried submission never makes a second job."""
        body = dict(spec)
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        key = idempotency_key or f"sqz-client-{uuid.uuid4()}"
        return Job.model_validate(
            self._json("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
        )

    def get_job(self, job: JobRef) -> Job:
        return self._get(f"/v1/jobs/{_job_id(job)}", Job)

    def list_jobs(
        self,
        *,
        state: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        outcome: str | None = None,
        method: str | None = None,
    ) -> JobPage:
        """`outcome`: improved, unchanged, targets_missed, failed or cancelled; `method`:
        jobs with a step of that method (quantize, prune, distill, search, auto)."""
        return self._get(
            "/v1/jobs",
            JobPage,
            state=state,
            outcome=outcome,
            method=method,
            limit=limit,
            cursor=cursor,
        )

    def iter_jobs(self, *, state: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job, newest first, following the cursor."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(state=state, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def delete_job(self, job: JobRef) -> None:
        """Delete a finished job with its events and artifacts. A queued or running job:
        SqueezeError 409 `job_active` (cancel it first)."""
        self._delete(f"/v1/jobs/{_job_id(job)}")

    def cancel_job(self, job: JobRef) -> Job:
        """A queued job ends at once; a running one at its next progress check."""
        return Job.model_validate(self._json("POST", f"/v1/jobs/{_job_id(job)}/cancel"))

    def list_events(self, job: JobRef, *, after: int = 0, limit: int = 100) -> EventPage:
        return self._get(f"/v1/jobs/{_job_id(job)}/events", EventPage, after=after, limit=limit)

    def iter_events(self, job: JobRef, *, after: int = 0) -> Iterator[Event]:
        """The job's events after `after`, oldest first, as far as there are any now."""
        while True:
            page = self.list_events(job, after=after, limit=1000)
            yield from page.items
            if not page.items:
                return
            after = page.next_after

    def list_artifacts(self, job: JobRef) -> list[Artifact]:
        body = self._json("GET", f"/v1/jobs/{_job_id(job)}/artifacts")
        return [Artifact.model_validate(item) for item in body["items"]]

    def download_artifact(
        self,
        job: JobRef,
        name: str,
        destination: Path | str,
        *,
        progress: Progress | None = None,
    ) -> Path:
        """Stream one artifact to `destination` (a file, or a folder to put it in); its
        sha256 is checked against the service's. Returns the file written."""
        target = Path(destination)
        if target.is_dir():
            target = target / name
        path = f"/v1/jobs/{_job_id(job)}/artifacts/{name}"
        attempt = 0
        while True:
            attempt += 1
            try:
                # redirects are followed here, never with the API key (whatever `http` does)
                stream = self.http.stream(
                    "GET", path, headers=self._headers(), follow_redirects=False
                )
                with stream as response:
                    if response.status_code == 307 and "Location" in response.headers:
                        # the object store's presigned URL: fetched without the API key
                        etag = response.headers.get("ETag", "").strip('"') or None
                        self._download_from(
                            response.headers["Location"], target, etag, progress
                        )
                        return target
                    if not response.is_success:
                        response.read()
                        raise _error_from(response, retry.retry_after_s(response))
                    _write_download(response, target, progress, None)
                return target
            except httpx.TransportError as error:
                delay = self.retry_policy.delay_s(attempt, None)
                if delay is None:
                    raise SqueezeConnectionError(f"GET {self.url}{path}: {error}") from error
                self.sleep(delay)
            except SqueezeError as error:
                delay = None
                if retry.should_retry_status(error.status, safe=True):
                    delay = self.retry_policy.delay_s(attempt, error.retry_after_s)
                if delay is None:
                    raise
                self.sleep(delay)

    def _download_from(
        self, url: str, target: Path, etag: str | None, progress: Progress | None
    ) -> None:
        """A download the service redirected to a presigned URL: no API key goes along
        (the URL is the permission; the store would refuse a second authorisation)."""
        with httpx.Client(timeout=self.timeout_s) as plain, plain.stream("GET", url) as response:
            if not response.is_success:
                response.read()
                raise SqueezeError(
                    response.status_code,
                    "download_failed",
                    f"the object store answered {response.status_code} for the presigned URL",
                )
            _write_download(response, target, progress, etag)

    def download_model(
        self, job: JobRef, destination: Path | str, *, progress: Progress | None = None
    ) -> Path:
        """Download the job's compressed model (`model.onnx`, or `model.zip` for a model
        with external data)."""
        names = {artifact.name for artifact in self.list_artifacts(job)}
        name = next((candidate for candidate in MODEL_ARTIFACTS if candidate in names), None)
        if name is None:
            raise SqueezeError(404, "not_found", f"job {_job_id(job)} has no model artifact")
        return self.download_artifact(job, name, destination, progress=progress)

    def wait(
        self,
        job: JobRef,
        *,
        timeout_s: float | None = None,
        poll_s: float = 0.5,
        max_poll_s: float = 5.0,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is final and return its record. Polls start every `poll_s`
        and slow down by half each time nothing changed, up to `max_poll_s`;
        `on_update(job)` sees every poll. WaitTimeout after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        interval = poll_s
        previous: tuple[str, float, str | None] | None = None
        while True:
            current = self.get_job(job)
            if on_update is not None:
                on_update(current)
            if current.is_final:
                return current
            seen = (current.state, current.progress, current.current_step)
            interval = poll_s if seen != previous else min(interval * 1.5, max_poll_s)
            previous = seen
            if deadline is not None and time.monotonic() + interval > deadline:
                raise WaitTimeout(f"job {current.id} still {current.state} after {timeout_s} s")
            self.sleep(interval)

    # --- batches ------------------------------------------------------------------------

    def submit_batch(
        self,
        model_ids: list[str],
        spec: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """One job per model, all sharing `spec` (without model_id)."""
        template = {key: value for key, value in spec.items() if key != "model_id"}
        body: dict[str, Any] = {"model_ids": model_ids, "spec": template}
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        key = idempotency_key or f"sqz-client-{uuid.uuid4()}"
        return Batch.model_validate(
            self._json("POST", "/v1/batches", json=body, headers={"Idempotency-Key": key})
        )

    def get_batch(self, batch: Batch | str) -> Batch:
        return self._get(f"/v1/batches/{batch if isinstance(batch, str) else batch.id}", Batch)

    def list_batches(self, *, limit: int = 20, cursor: str | None = None) -> BatchPage:
        return self._get("/v1/batches", BatchPage, limit=limit, cursor=cursor)

    def wait_batch(
        self,
        batch: Batch | str,
        *,
        timeout_s: float | None = None,
        poll_s: float = 1.0,
        max_poll_s: float = 10.0,
        on_update: Callable[[Batch], None] | None = None,
    ) -> Batch:
        """Poll until every job of the batch is final; returns the batch."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        interval = poll_s
        while True:
            current = self.get_batch(batch)
            if on_update is not None:
                on_update(current)
            if current.is_final:
                return current
            if deadline is not None and time.monotonic() + interval > deadline:
                raise WaitTimeout(f"batch {current.id} still active after {timeout_s} s")
            self.sleep(interval)
            interval = min(interval * 1.5, max_poll_s)

    # --- account, keys, tenants ---------------------------------------------------------

    def account(self) -> Account:
        return self._get("/v1/account", Account)

    def list_api_keys(self) -> list[ApiKey]:
        body = self._json("GET", "/v1/api-keys")
        return [ApiKey.model_validate(item) for item in body["items"]]

    def create_api_key(self, name: str = "api key") -> ApiKeyCreated:
        body = self._json("POST", "/v1/api-keys", json={"name": name}, safe=False)
        return ApiKeyCreated.model_validate(body)

    def revoke_api_key(self, key_id: str) -> ApiKey:
        return ApiKey.model_validate(self._json("DELETE", f"/v1/api-keys/{key_id}"))

    def rotate_webhook_secret(self, key_id: str) -> WebhookSecret:
        body = self._json("POST", f"/v1/api-keys/{key_id}/webhook-secret", safe=False)
        return WebhookSecret.model_validate(body)

    def create_tenant(
        self,
        name: str,
        *,
        quota_storage_bytes: int | None = None,
        quota_concurrent_jobs: int | None = None,
    ) -> Tenant:
        """Admin only."""
        body = {
            "name": name,
            "quota_storage_bytes": quota_storage_bytes,
            "quota_concurrent_jobs": quota_concurrent_jobs,
        }
        return Tenant.model_validate(self._json("POST", "/v1/tenants", json=body, safe=False))

    def get_tenant(self, tenant_id: str) -> Tenant:
        """Admin only."""
        return self._get(f"/v1/tenants/{tenant_id}", Tenant)

    def create_tenant_key(self, tenant_id: str, name: str = "api key") -> ApiKeyCreated:
        """Admin only: a key for another tenant."""
        body = self._json(
            "POST", f"/v1/tenants/{tenant_id}/api-keys", json={"name": name}, safe=False
        )
        return ApiKeyCreated.model_validate(body)


def _listing(
    name: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    return {
        "name": name,
        "created_after": created_after.isoformat() if created_after else None,
        "created_before": created_before.isoformat() if created_before else None,
        "limit": limit,
        "cursor": cursor,
    }


def _write_download(
    response: httpx.Response, target: Path, progress: Progress | None, etag: str | None
) -> None:
    """The body to `target`, checked against the ETag (the sha256) when there is one."""
    length = response.headers.get("Content-Length")
    expected = etag or response.headers.get("ETag", "").strip('"') or None
    try:
        write_stream(
            response.iter_bytes(),
            target,
            total=int(length) if length else None,
            progress=progress,
            expected_sha256=expected,
        )
    except ValueError as error:
        raise SqueezeError(0, "checksum_mismatch", str(error)) from error


def _error_from(response: httpx.Response, retry_after: float | None) -> SqueezeError:
    """The problem answer as a SqueezeError (any error body is tolerated)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        return SqueezeError(
            response.status_code,
            str(body["code"]),
            str(body.get("detail") or body.get("title") or response.reason_phrase),
            problem=body,
            retry_after_s=retry_after,
        )
    text = response.text[:500] if response.text else response.reason_phrase
    return SqueezeError(
        response.status_code, f"http_{response.status_code}", text, retry_after_s=retry_after
    )
