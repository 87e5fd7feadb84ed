"""A job's side of MLflow: fetch its model from the registry, register its result there.

The runner calls these; they hold what goes where (file names, run data, the registered
model's default name), and `worker.mlflow_client` holds the REST calls.
"""

from __future__ import annotations

import json
import platform
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.archive import ArchiveLimits, inspect_upload
from core.errors import EngineError
from core.formats import ModelInfo, model_files
from core.results import PipelineResult, RegisteredModel
from core.spec import JobSpec, RegistryModelRef
from service.settings import Settings
from worker.mlflow_client import MlflowClient, RunData, Upload

# MLflow's key rules: alphanumerics, underscores, dashes, periods, spaces, slashes
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. /")
MAX_PARAMS = 300  # a manifest flattened this far says what matters; the file has the rest


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    info: ModelInfo
    # the name the stored copy gets in the tenant's models, e.g. "digits-v3.onnx"
    filename: str
    uri: str  # the version by number, e.g. models:/digits/3 (an alias resolved)


def client_for(settings: Settings) -> MlflowClient:
    if settings.mlflow_tracking_uri is None:
        raise EngineError(
            "the job uses MLflow but this worker has no SQUEEZE_MLFLOW_TRACKING_URI",
            code="mlflow_not_configured",
        )
    token = settings.mlflow_token.get_secret_value() if settings.mlflow_token else None
    return MlflowClient(
        settings.mlflow_tracking_uri, token=token, timeout_s=settings.mlflow_timeout_s
    )


def fetch_model(
    settings: Settings, ref: RegistryModelRef, work_dir: Path, limits: ArchiveLimits
) -> FetchedModel:
    """The registry version's ONNX file under `work_dir`, validated as an upload is."""
    with client_for(settings) as mlflow:
        version = mlflow.model_version(ref)
        path = mlflow.download_onnx(
            version, work_dir / "mlflow-model" / "model.onnx", settings.max_model_bytes
        )
    try:
        info = inspect_upload(path, settings.work_dir, limits)
    except EngineError as exc:
        raise type(exc)(f"{version.uri} (from MLflow): {exc.message}", code=exc.code) from exc
    return FetchedModel(path, info, f"{version.name}-v{version.version}.onnx", version.uri)


def registered_name(spec: JobSpec, model_filename: str | None) -> str:
    """The registered model the result becomes a version of: the spec's name, else the
    source's registered model, else "<uploaded file stem>-squeeze"."""
    if spec.registry is not None and spec.registry.name is not None:
        return spec.registry.name
    source = spec.registry_model()
    if source is not None:
        return source.name
    stem = Path(model_filename or "model").stem.replace("/", "_").replace("@", "_")
    return f"{stem or 'model'}-squeeze"


def register_result(
    settings: Settings,
    *,
    job_id: str,
    spec: JobSpec,
    result: PipelineResult,
    model_filename: str | None,
    final_model: Path,
    run_files: list[Path],
) -> RegisteredModel:
    """A run holding the job's metrics, params, tags and `run_files` (the report), and a
    new version of the registered model made of the final model and an MLmodel file."""
    name = registered_name(spec, model_filename)
    model_dir = final_model.parent / "mlflow-registration"
    model_dir.mkdir(parents=True, exist_ok=True)
    mlmodel = model_dir / "MLmodel"
    mlmodel.write_text(mlmodel_text(final_model.name))
    uploads = [Upload(mlmodel, "model/MLmodel")]
    uploads += [
        Upload(path, f"model/{path.relative_to(final_model.parent).as_posix()}")
        for path in model_files(final_model)
    ]
    uploads += [Upload(path, path.name) for path in run_files if path.exists()]
    data = run_data(job_id, spec, result)
    with client_for(settings) as mlflow:
        version, run_id = mlflow.register(
            name=name,
            experiment=settings.mlflow_experiment,
            run_name=f"squeeze {job_id}",
            data=data,
            uploads=uploads,
            model_path="model",
            description=(
                f"squeeze job {job_id} ({data.tags['squeeze.method']}): "
                f"{result.verdict.outcome}. {result.verdict.outcome_reason}"
            ),
        )
        assert settings.mlflow_tracking_uri is not None  # client_for checked it
        return RegisteredModel(
            registry="mlflow",
            tracking_uri=settings.mlflow_tracking_uri,
            name=version.name,
            version=version.version,
            run_id=run_id,
        )


def run_data(job_id: str, spec: JobSpec, result: PipelineResult) -> RunData:
    """The run's metrics (the final model's, the original's as `original.*`, the
    verdict's ratios), params (the manifest flattened, the steps) and tags (job id,
    outcome, method, source)."""
    metrics: dict[str, float] = {}
    for prefix, measured in (("", result.final), ("original.", result.original)):
        metrics[f"{prefix}{measured.metric_name}"] = measured.metric_value
        metrics.update({f"{prefix}{key}": value for key, value in measured.metrics.items()})
        metrics[f"{prefix}size_bytes"] = float(measured.size_bytes)
        metrics[f"{prefix}parameters"] = float(measured.parameters)
        for latency in measured.latency:
            threads = f".threads{latency.threads}" if latency.threads is not None else ""
            metrics[f"{prefix}latency_ms.batch{latency.batch_size}{threads}"] = latency.median_ms
    verdict = result.verdict
    metrics.update(
        {
            "metric_change": verdict.metric_change,
            "size_ratio": verdict.size_ratio,
            "latency_ratio": verdict.latency_ratio,
            "targets_met": float(verdict.targets_met),
        }
    )
    method = "+".join(step.method for step in spec.steps)
    params = {
        "steps": json.dumps([step.model_dump(mode="json") for step in spec.steps]),
        "targets": json.dumps(spec.targets.model_dump(mode="json", exclude_none=True)),
        **dict(_flatten(result.manifest, "manifest")),
    }
    params = dict(list(params.items())[:MAX_PARAMS])
    tags = {
        "squeeze.job_id": job_id,
        "squeeze.outcome": verdict.outcome,
        "squeeze.outcome_reason": verdict.outcome_reason,
        "squeeze.method": method,
        "squeeze.targets_met": str(verdict.targets_met).lower(),
        "squeeze.source": spec.model_uri or f"upload {spec.model_id}",
    }
    return RunData(
        metrics={_key(key): value for key, value in metrics.items()},
        params={_key(key): value for key, value in params.items()},
        tags=tags,
    )


def mlmodel_text(model_file: str) -> str:
    """An MLmodel file for the `onnx` flavor, so `mlflow.onnx.load_model` and pyfunc
    read the registered version like one logged with `mlflow.onnx.log_model`."""
    import onnx

    python = platform.python_version()
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return (
        "artifact_path: model\n"
        "flavors:\n"
        "  onnx:\n"
        "    code: null\n"
        f"    data: {model_file}\n"
        f"    onnx_version: {onnx.__version__}\n"
        "    providers:\n"
        "    - CPUExecutionProvider\n"
        "  python_function:\n"
        f"    data: {model_file}\n"
        "    loader_module: mlflow.onnx\n"
        f"    python_version: {python}\n"
        f"model_uuid: {uuid.uuid4().hex}\n"
        f"utc_time_created: '{created}'\n"
    )


def _flatten(value: Any, prefix: str) -> Any:
    """(dotted key, string value) pairs of a JSON value's leaves."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}")
    elif isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}.{index}")
    else:
        yield prefix, value if isinstance(value, str) else json.dumps(value, default=str)


def _key(key: str) -> str:
    return "".join(char if char in _KEY_CHARS else "_" for char in key)[:250]
