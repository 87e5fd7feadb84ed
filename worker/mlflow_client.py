"""An MLflow tracking server over its REST API: model versions, runs, proxied artifacts.

Plain httpx, not the `mlflow` package: the server's dependencies (and its pins) stay out
of the service's environment, and the few calls squeeze makes are stable REST endpoints
(`/api/2.0/mlflow/...`). Artifacts go through the server's artifact proxy
(`/api/2.0/mlflow-artifacts/artifacts/...`, served by `mlflow server` unless it runs with
`--no-serve-artifacts`), so a worker needs no credentials for the store behind it.

Every failure is an `MlflowError` carrying a code a client can act on:
`mlflow_unreachable` (no answer, or a server error), `mlflow_model_not_found`,
`mlflow_artifacts_not_proxied`, `mlflow_model_not_onnx`, `mlflow_error` (anything else
the server refused, with its message).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import httpx

from core.errors import EngineError
from core.spec import RegistryModelRef

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
# MLflow's own limits on one log-batch request and on a value
BATCH_METRICS = 1000
BATCH_PARAMS = 100
BATCH_TAGS = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 5000


class MlflowError(EngineError):
    code = "mlflow_error"


class _NotFound(Exception):
    """The server answered that the thing asked for does not exist."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    run_id: str | None
    # where the version's files are (an `mlflow-artifacts:` URI when the server proxies)
    download_uri: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class RunData:
    """What a registering run records: numbers, strings, and labels to filter by."""

    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]


@dataclass(frozen=True)
class Upload:
    """A local file and the artifact path (relative to the run's root) it goes to."""

    path: Path
    artifact_path: str


class MlflowClient:
    def __init__(
        self,
        tracking_uri: str,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.tracking_uri, headers=headers, timeout=timeout_s)

    def __enter__(self) -> MlflowClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    # --- the registry ---------------------------------------------------------------------

    def model_version(self, ref: RegistryModelRef) -> ModelVersion:
        """The version `ref` names (an alias resolved to its number), with its download
        URI; `mlflow_model_not_found` when the registry has no such version."""
        try:
            if ref.alias is not None:
                body = self._call(
                    "GET",
                    f"{API}/registered-models/alias",
                    params={"name": ref.name, "alias": ref.alias},
                )
            else:
                body = self._call(
                    "GET",
                    f"{API}/model-versions/get",
                    params={"name": ref.name, "version": str(ref.version)},
                )
        except _NotFound:
            raise MlflowError(
                f"{ref.uri}: the MLflow model registry at {self.tracking_uri} has no such "
                "model version (check the registered model's name and its versions or "
                "aliases in the MLflow UI)",
                code="mlflow_model_not_found",
            ) from None
        found = body["model_version"]
        version = int(found["version"])
        try:
            download = self._call(
                "GET",
                f"{API}/model-versions/get-download-uri",
                params={"name": ref.name, "version": str(version)},
            )
        except _NotFound:
            raise MlflowError(
                f"{ref.uri}: the version's files are gone from the MLflow server",
                code="mlflow_model_not_found",
            ) from None
        return ModelVersion(
            name=str(found["name"]),
            version=version,
            run_id=found.get("run_id") or None,
            download_uri=str(download["artifact_uri"]),
        )

    def download_onnx(self, version: ModelVersion, destination: Path, max_bytes: int) -> Path:
        """The version's one .onnx file (an MLflow `onnx` flavor model keeps it beside its
        MLmodel file), downloaded to `destination` (at most `max_bytes`)."""
        root = self._artifact_path(version.download_uri, what=version.uri)
        try:
            listed = self._list_files(root, depth=2)
        except _NotFound:
            listed = []  # a version whose files were deleted: said below
        onnx = [path for path in listed if path.endswith(".onnx")]
        if len(onnx) != 1:
            raise MlflowError(
                f"{version.uri}: squeeze compresses ONNX models, and this version holds "
                f"{len(onnx)} .onnx files ({', '.join(onnx[:5]) or 'none'}); log the model "
                "with mlflow.onnx.log_model (one model.onnx) and register that",
                code="mlflow_model_not_onnx",
            )
        destination.parent.mkdir(parents=True, exist_ok=True)
        url = f"{ARTIFACTS}/{quote(f'{root}/{onnx[0]}')}"
        try:
            with self._http.stream("GET", url) as response:
                self._check(response, what=f"{version.uri}: {onnx[0]}")
                written = 0
                with destination.open("wb") as out:
                    for chunk in response.iter_bytes(1024 * 1024):
                        written += len(chunk)
                        if written > max_bytes:
                            raise MlflowError(
                                f"{version.uri}: the model is larger than this service's "
                                f"limit of {max_bytes} bytes",
                                code="payload_too_large",
                            )
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        except _NotFound:
            raise MlflowError(
                f"{version.uri}: {onnx[0]} is listed but cannot be downloaded",
                code="mlflow_model_not_found",
            ) from None
        return destination

    def register(
        self,
        *,
        name: str,
        experiment: str,
        run_name: str,
        data: RunData,
        uploads: Sequence[Upload],
        model_path: str,
        description: str,
    ) -> tuple[ModelVersion, str]:
        """A finished run in `experiment` holding `data` and `uploads`, and a new version
        of the registered model `name` (created when missing) made of the run's
        `model_path` folder; the version and the run's id."""
        experiment_id = self._experiment_id(experiment)
        run = self._call(
            "POST",
            f"{API}/runs/create",
            json={
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": _now_ms(),
                "tags": _pairs(data.tags, MAX_TAG_VALUE),
            },
        )["run"]["info"]
        run_id = str(run["run_id"])
        try:
            root = self._artifact_path(run["artifact_uri"], what=f"run {run_id}")
            for upload in uploads:
                self._upload(upload.path, f"{root}/{upload.artifact_path}")
            self._log_batch(run_id, data)
            self._call(
                "POST",
                f"{API}/runs/update",
                json={"run_id": run_id, "status": "FINISHED", "end_time": _now_ms()},
            )
        except Exception:
            self._fail_run(run_id)
            raise
        try:
            self._call("POST", f"{API}/registered-models/create", json={"name": name})
        except MlflowError as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        created = self._call(
            "POST",
            f"{API}/model-versions/create",
            json={
                "name": name,
                "source": f"{run['artifact_uri'].rstrip('/')}/{model_path}",
                "run_id": run_id,
                "tags": _pairs(data.tags, MAX_TAG_VALUE),
                "description": description[:5000],
            },
        )["model_version"]
        version = ModelVersion(
            name=name,
            version=int(created["version"]),
            run_id=run_id,
            download_uri=str(created.get("source", "")),
        )
        return version, run_id

    # --- plumbing -------------------------------------------------------------------------

    def _experiment_id(self, name: str) -> str:
        try:
            found = self._call(
                "GET", f"{API}/experiments/get-by-name", params={"experiment_name": name}
            )
            return str(found["experiment"]["experiment_id"])
        except _NotFound:
            pass
        try:
            return str(
                self._call("POST", f"{API}/experiments/create", json={"name": name})[
                    "experiment_id"
                ]
            )
        except MlflowError as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):  # created meanwhile by another job
                raise
        found = self._call(
            "GET", f"{API}/experiments/get-by-name", params={"experiment_name": name}
        )
        return str(found["experiment"]["experiment_id"])

    def _log_batch(self, run_id: str, data: RunData) -> None:
        timestamp = _now_ms()
        metrics = [
            {"key": key, "value": value, "timestamp": timestamp, "step": 0}
            for key, value in sorted(data.metrics.items())
        ]
        params = _pairs(data.params, MAX_PARAM_VALUE)
        for start in range(0, max(len(metrics), 1), BATCH_METRICS):
            self._call(
                "POST",
                f"{API}/runs/log-batch",
                json={"run_id": run_id, "metrics": metrics[start : start + BATCH_METRICS]},
            )
        for start in range(0, len(params), BATCH_PARAMS):
            self._call(
                "POST",
                f"{API}/runs/log-batch",
                json={"run_id": run_id, "params": params[start : start + BATCH_PARAMS]},
            )

    def _fail_run(self, run_id: str) -> None:
        with suppress(Exception):  # the first error is the one to report
            self._call(
                "POST",
                f"{API}/runs/update",
                json={"run_id": run_id, "status": "FAILED", "end_time": _now_ms()},
            )

    def _upload(self, path: Path, artifact_path: str) -> None:
        try:
            # a file object: httpx streams it with its Content-Length (the proxy's WSGI
            # app does not take chunked bodies)
            with path.open("rb") as handle:
                response = self._http.put(f"{ARTIFACTS}/{quote(artifact_path)}", content=handle)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._check(response, what=f"upload of {artifact_path}")

    def _list_files(self, root: str, *, depth: int) -> list[str]:
        """The files under `root` (paths relative to it), `depth` folders deep at most."""
        listed = self._call("GET", ARTIFACTS, params={"path": root}).get("files", [])
        files: list[str] = []
        for entry in listed:
            relative = str(entry["path"]).rsplit("/", 1)[-1]
            if entry.get("is_dir"):
                if depth > 1:
                    nested = self._list_files(f"{root}/{relative}", depth=depth - 1)
                    files.extend(f"{relative}/{path}" for path in nested)
            else:
                files.append(relative)
        return files

    def _artifact_path(self, uri: str, *, what: str) -> str:
        """The proxy's path for an `mlflow-artifacts:` URI (with or without a host)."""
        parsed = urlparse(uri)
        if parsed.scheme != "mlflow-artifacts":
            raise MlflowError(
                f"{what}: its files are at {uri}, which squeeze reads only through the "
                "tracking server's artifact proxy (run `mlflow server` with "
                "--artifacts-destination, i.e. serving artifacts, and log models to it)",
                code="mlflow_artifacts_not_proxied",
            )
        return parsed.path.strip("/")

    def _call(
        self,
        method: str,
        endpoint: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            response = self._http.request(method, endpoint, params=params, json=json)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._check(response, what=f"{method} {endpoint}")
        body = response.json() if response.content else {}
        if not isinstance(body, dict):
            raise MlflowError(f"{method} {endpoint}: the server answered {body!r}")
        return body

    def _check(self, response: httpx.Response, *, what: str) -> None:
        if response.is_success:
            return
        if not response.is_stream_consumed:
            response.read()
        try:
            body = response.json()
        except ValueError:
            body = {}
        error_code = body.get("error_code", "") if isinstance(body, dict) else ""
        message = body.get("message", "") if isinstance(body, dict) else ""
        if response.status_code == 404 or error_code == "RESOURCE_DOES_NOT_EXIST":
            raise _NotFound(message or what)
        # an alias that does not exist is INVALID_PARAMETER_VALUE "... alias x not found"
        if error_code == "INVALID_PARAMETER_VALUE" and "not found" in message:
            raise _NotFound(message)
        if response.status_code >= 500:
            raise MlflowError(
                f"the MLflow tracking server at {self.tracking_uri} failed on {what} "
                f"(HTTP {response.status_code}): {message or response.text[:300]}",
                code="mlflow_unreachable",
            )
        raise MlflowError(
            f"the MLflow tracking server at {self.tracking_uri} refused {what} "
            f"(HTTP {response.status_code} {error_code}): {message or response.text[:300]}"
        )

    def _unreachable(self, exc: httpx.TransportError) -> MlflowError:
        return MlflowError(
            f"the MLflow tracking server at {self.tracking_uri} does not answer "
            f"({type(exc).__name__}: {exc}); check SQUEEZE_MLFLOW_TRACKING_URI and that the "
            "server is running",
            code="mlflow_unreachable",
        )


def _pairs(values: dict[str, str], limit: int) -> list[dict[str, str]]:
    return [{"key": key, "value": value[:limit]} for key, value in sorted(values.items())]


def _now_ms() -> int:
    return int(time.time() * 1000)
