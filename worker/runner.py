"""Runs one job: claim the row, run the engine, publish artifacts and the outcome.

This is the service function behind the Celery task; it holds the job's rules so the task
stays thin and tests can call it directly.

The job's input blobs are first materialised in the attempt's work dir (hard links to the
local blob files, or to the worker's cache of the object store), so nothing the job reads
can disappear under it; the model (a plain .onnx or an archive of a model and its
external data) then gets a folder of its own, so the engine reads external data from
nowhere else. Results are written back to the blob store. The final model is published
as `model.onnx` when it fits in one protobuf file, else as `model.zip` (the .onnx and its
external data, in the layout uploads take); report.json says which.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from core import pipeline
from core.archive import ArchiveLimits, materialise_model, pack_model
from core.context import MeasureSettings
from core.errors import EngineError, JobCancelled
from core.formats import SINGLE_FILE_LIMIT_BYTES, load_model, model_files, save_model
from core.results import Note, PipelineResult
from core.spec import JobSpec
from service.settings import Settings
from store import blob_refs, catalog, jobs, recipe_candidates
from store.blobs import BlobMissing, BlobStore, StagedBlob
from store.db import transaction
from worker import mlflow_jobs
from worker.engine_process import (
    EngineRequest,
    MemoryLimitExceeded,
    TimeLimitExceeded,
    run_engine,
)
from worker.enqueue import JobQueue
from worker.lease import LeaseKeeper
from worker.limits import SHUTDOWN, causes, is_allocation_failure, job_memory_limit
from worker.recipe_candidates import JobCandidates
from worker.report_page import report_html
from worker.search_storage import search_store

log = logging.getLogger(__name__)

ONNX_MEDIA_TYPE = "application/octet-stream"
ZIP_MEDIA_TYPE = "application/zip"
MEDIA_TYPES = {
    ".json": "application/json",
    ".png": "image/png",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".xml": "application/xml",
    ".onnx": ONNX_MEDIA_TYPE,
}


class LeaseLost(Exception):
    """Another attempt owns the job now: stop without writing anything."""


@dataclass(frozen=True)
class JobInputs:
    spec: JobSpec
    model_path: Path
    dataset_paths: dict[str, Path]
    # the other models the spec names (uploaded students), by model id
    other_model_paths: dict[str, Path] = field(default_factory=dict)
    # the broker queue the job was sent to (search helpers are sent there too)
    queue: str | None = None
    # the uploaded model's file name, for the report
    model_filename: str | None = None


@dataclass(frozen=True)
class ModelArtifact:
    """The final model as the one file a client downloads."""

    name: str  # "model.onnx" or "model.zip"
    path: Path
    media_type: str
    # The model's files: "model.onnx", then its external data files inside the zip.
    files: list[str] = field(default_factory=lambda: ["model.onnx"])

    def describe(self) -> dict[str, Any]:
        external = self.name == "model.zip"
        return {
            "name": self.name,
            "media_type": self.media_type,
            "external_data": external,
            "files": self.files,
            "note": (
                "the model is too big for one .onnx file (2 GB protobuf limit): model.zip "
                "holds model.onnx and its external data files; unpack it and load "
                "model.onnx from that folder (it can be uploaded again as it is)"
                if external
                else "one self-contained .onnx file"
            ),
        }


def package_model(
    final_model: Path,
    out_dir: Path,
    *,
    single_file_limit_bytes: int = SINGLE_FILE_LIMIT_BYTES,
) -> ModelArtifact:
    """The final model as one file: itself when self-contained; rewritten as one file
    when its external data fits under `single_file_limit_bytes`; else a zip of the .onnx
    and its external data files, written under `out_dir`."""
    files = model_files(final_model)
    if len(files) == 1:
        return ModelArtifact("model.onnx", final_model, ONNX_MEDIA_TYPE)
    if sum(file.stat().st_size for file in files) < single_file_limit_bytes:
        final_model = save_model(
            load_model(final_model),
            out_dir / "single" / "model.onnx",
            single_file_limit_bytes=single_file_limit_bytes,
        )
        files = model_files(final_model)
        if len(files) == 1:
            return ModelArtifact("model.onnx", final_model, ONNX_MEDIA_TYPE)
    archive = pack_model(final_model, out_dir / "model.zip")
    names = [file.relative_to(final_model.parent).as_posix() for file in files]
    return ModelArtifact("model.zip", archive, ZIP_MEDIA_TYPE, names)


def media_type_of(path: Path) -> str:
    """The media type a step's extra file is served with (by its suffix)."""
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_members=settings.max_model_archive_members,
        max_uncompressed_bytes=settings.max_model_uncompressed_bytes,
        max_compression_ratio=settings.max_model_archive_compression_ratio,
    )


def measure_settings(settings: Settings) -> MeasureSettings:
    return MeasureSettings(
        threads=settings.measure_threads,
        warmup_runs=settings.measure_warmup_runs,
        runs=settings.measure_runs,
    )


def job_memory_allowance(settings: Settings, spec: JobSpec) -> int:
    """The job's memory ceiling: the worker's, or lower where the spec asks for less."""
    ceiling = job_memory_limit(settings)
    return ceiling if spec.max_memory_bytes is None else min(ceiling, spec.max_memory_bytes)


class MemoryRecorder:
    """Writes the attempt's memory to the job's log each time the engine's growth crosses
    one of store.jobs.MEMORY_SAMPLE_SHARES of its limit: should the kernel kill this pool
    process (taking the engine with it), the reaper reads the last one and fails the job
    `memory_limit_exceeded` instead of retrying it as a lost worker."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: str, attempt: int, limit_bytes: int | None
    ) -> None:
        self._sessions = sessions
        self._job_id = job_id
        self._attempt = attempt
        self._limit_bytes = limit_bytes
        self._recorded = 0  # how many of the shares were written

    def __call__(self, peak_rss_bytes: int, growth_bytes: int) -> None:
        if self._limit_bytes is None:
            return
        shares = jobs.MEMORY_SAMPLE_SHARES
        crossed = sum(1 for share in shares if growth_bytes >= share * self._limit_bytes)
        if crossed <= self._recorded:
            return
        self._recorded = crossed
        with transaction(self._sessions) as session:
            jobs.record_memory_sample(
                session,
                self._job_id,
                self._attempt,
                peak_rss_bytes=peak_rss_bytes,
                growth_bytes=growth_bytes,
                limit_bytes=self._limit_bytes,
            )


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        queue: JobQueue | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.blobs = blobs
        # sends search helpers to other workers; None (in-process tests): searches run alone
        self.queue = queue

    def run(self, job_id: str) -> str:
        """Returns the state the job ended in, "skipped" for a duplicate message,
        "declined" when the worker is shutting down (the job is left queued) and
        "released" when it shut down while running the job (the job is queued again)."""
        if SHUTDOWN.is_set():
            return "declined"
        with transaction(self.sessions) as session:
            attempt = jobs.claim(
                session, job_id, worker=worker_name(), lease_s=self.settings.lease_s
            )
        if attempt is None:
            log.info("job %s: not claimable (duplicate message, ended or cancelled)", job_id)
            return "skipped"
        work_dir = self.settings.work_dir / job_id / f"attempt-{attempt}"
        keeper = LeaseKeeper(
            self.sessions,
            job_id,
            attempt,
            lease_s=self.settings.lease_s,
            heartbeat_s=self.settings.heartbeat_s,
        )
        outcome = "lost"
        try:
            with keeper:
                outcome = self._run_attempt(job_id, attempt, work_dir, keeper)
                return outcome
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
            if outcome in jobs.FINAL_STATES:
                # the job's own folder too, once empty (its helpers remove theirs; the
                # cleanup pass sweeps what a killed attempt or helper left)
                with contextlib.suppress(OSError):
                    work_dir.parent.rmdir()

    def _run_attempt(self, job_id: str, attempt: int, work_dir: Path, keeper: LeaseKeeper) -> str:
        allowance: int | None = None  # the job's memory ceiling, once its spec is read
        started = time.monotonic()
        try:
            shutil.rmtree(work_dir, ignore_errors=True)
            work_dir.mkdir(parents=True)
            self._fetch_registry_model(job_id, attempt, work_dir)
            inputs = self.load_inputs(job_id, work_dir)
            allowance = self._memory_allowance(inputs.spec)
            # A folder of its own: the engine follows external data only beside the .onnx.
            model_path = materialise_model(
                inputs.model_path, work_dir / "input", archive_limits(self.settings)
            )
            other_models = {
                model_id: materialise_model(
                    blob, work_dir / "models" / model_id, archive_limits(self.settings)
                )
                for model_id, blob in inputs.other_model_paths.items()
            }
            request = EngineRequest(
                kind="pipeline",
                work_dir=work_dir,
                model_path=model_path,
                dataset_paths=inputs.dataset_paths,
                spec=inputs.spec.model_dump(mode="json"),
                device=pipeline.resolve_device(inputs.spec.device),
                seed=inputs.spec.seed,
                measure=measure_settings(self.settings),
                models=other_models,
                memory_allowance_bytes=allowance,
            )
            if any(step.method == "search" for step in inputs.spec.steps):
                request = dataclasses.replace(
                    request, search_store=search_store(self.settings, job_id)
                )
            candidates = None
            if any(step.method == "auto" for step in inputs.spec.steps):
                # finished candidates outlive the attempt: the next one resumes the recipe
                request = dataclasses.replace(request, keep_candidates=True)
                candidates = JobCandidates(
                    self.sessions,
                    self.blobs,
                    job_id,
                    attempt,
                    archive_limits(self.settings),
                    lease_s=self.settings.lease_s,
                )
            # The engine runs in a child this process kills on a cancel, a lost lease, a
            # shutdown or the time limit: native code cannot be interrupted otherwise.
            payload = run_engine(
                request,
                on_progress=self._progress_writer(job_id, attempt),
                request_helpers=self._helper_sender(job_id, inputs.queue),
                candidate_store=candidates,
                should_stop=keeper.should_stop,
                time_limit_s=self.settings.task_soft_time_limit_s - (time.monotonic() - started),
                memory_limit_bytes=allowance,
                on_memory=MemoryRecorder(self.sessions, job_id, attempt, allowance),
                fork_server=self.settings.engine_fork_server,
                on_tick=candidates.renew_claims if candidates is not None else None,
            )
            result = PipelineResult.model_validate(payload["result"])
            final_model = Path(payload["final_model"])
            if keeper.lost:
                raise LeaseLost(job_id)
            artifacts, files = self._publish_artifacts(
                final_model,
                result.model_dump(mode="json"),
                report_html(job_id, inputs.spec, result, inputs.model_filename),
            )
            if inputs.spec.registry is not None:
                result = self._register(job_id, attempt, inputs, result, final_model)
            return self._finish(
                job_id,
                attempt,
                state="succeeded",
                result=result.model_dump(mode="json"),
                artifacts=artifacts,
                artifact_files=files,
            )
        except LeaseLost:
            log.warning("job %s attempt %d lost its lease; stopping", job_id, attempt)
            return "lost"
        except JobCancelled:
            if keeper.lost and not keeper.cancelled:
                return "lost"
            if keeper.shutting_down:
                return self._release(job_id, attempt)
            return self._finish(
                job_id,
                attempt,
                state="cancelled",
                error_code="cancelled",
                error_message="cancelled by request",
            )
        except MemoryLimitExceeded as error:
            return self._memory_exceeded(job_id, attempt, error)
        except TimeLimitExceeded:
            return self._time_limit_exceeded(job_id, attempt)
        except EngineError as error:
            if allowance is not None and is_allocation_failure(error):
                return self._memory_exceeded(
                    job_id, attempt, MemoryLimitExceeded.of(error, allowance)
                )
            if any(isinstance(seen, SoftTimeLimitExceeded) for seen in causes(error)):
                return self._time_limit_exceeded(job_id, attempt)
            return self._finish(
                job_id, attempt, state="failed", error_code=error.code, error_message=error.message
            )
        except ValidationError as error:
            return self._finish(
                job_id, attempt, state="failed", error_code="invalid_spec", error_message=str(error)
            )
        except (catalog.NotFound, BlobMissing) as error:
            return self._finish(
                job_id,
                attempt,
                state="failed",
                error_code="input_missing",
                error_message=f"an input of the job is no longer stored: {error}",
            )
        except SoftTimeLimitExceeded:
            return self._time_limit_exceeded(job_id, attempt)
        except Exception as error:  # the record must say why, whatever went wrong
            if allowance is not None and is_allocation_failure(error):
                return self._memory_exceeded(
                    job_id, attempt, MemoryLimitExceeded.of(error, allowance)
                )
            log.exception("job %s attempt %d crashed", job_id, attempt)
            return self._finish(
                job_id,
                attempt,
                state="failed",
                error_code="internal_error",
                error_message=f"{type(error).__name__}: {error}",
            )

    def _time_limit_exceeded(self, job_id: str, attempt: int) -> str:
        return self._finish(
            job_id,
            attempt,
            state="failed",
            error_code="time_limit_exceeded",
            error_message=f"the job ran past its time limit "
            f"({self.settings.task_soft_time_limit_s} s)",
        )

    def _memory_exceeded(self, job_id: str, attempt: int, error: MemoryLimitExceeded) -> str:
        """Failed, never retried: the same job on the same limit would fail the same way."""
        return self._finish(
            job_id,
            attempt,
            state="failed",
            error_code="memory_limit_exceeded",
            error_message=error.message,
            event_data=error.record(),
        )

    def _memory_allowance(self, spec: JobSpec) -> int:
        return job_memory_allowance(self.settings, spec)

    def _release(self, job_id: str, attempt: int) -> str:
        """The worker is shutting down: the job goes back to the queue for another. The
        task hands its message back to the broker (worker.main); the reaper covers a
        message that is lost on the way."""
        with transaction(self.sessions) as session:
            released = jobs.release(session, job_id, attempt, "worker shutting down")
        if not released:
            return "lost"
        log.info("job %s attempt %d released for another worker", job_id, attempt)
        return "released"

    def _fetch_registry_model(self, job_id: str, attempt: int, work_dir: Path) -> None:
        """A job whose model is an MLflow model version (spec model_uri) and that has no
        stored copy of it yet: download it, validate it as an upload, store it as a model
        of the job's tenant and name it in the job's spec (an earlier attempt's copy is
        used as it is)."""
        with transaction(self.sessions) as session:
            job = jobs.get_job(session, job_id, tenant_id=None)
            spec = JobSpec.model_validate(job.spec)
            tenant_id = job.tenant_id
        ref = spec.registry_model()
        if ref is None or spec.model_id is not None:
            return
        fetched = mlflow_jobs.fetch_model(
            self.settings, ref, work_dir, archive_limits(self.settings)
        )
        stored = self.blobs.put_file(fetched.path)
        with transaction(self.sessions) as session:
            # under the blob's lock, as an upload: a delete of the same bytes that ran
            # since they were written is undone here, a later one sees the row
            blob_refs.lock(session, stored.sha256)
            if not self.blobs.exists(stored.sha256):
                self.blobs.put_file(fetched.path)
            row = catalog.add_model(
                session,
                tenant_id=tenant_id,
                filename=fetched.filename,
                sha256=stored.sha256,
                size_bytes=stored.size_bytes,
                info=fetched.info.model_dump(mode="json"),
            )
            if not jobs.set_model(session, job_id, attempt, row.id):
                raise LeaseLost(job_id)
            jobs.add_event(
                session,
                job_id,
                attempt,
                "registry",
                f"{ref.uri} fetched from MLflow as {fetched.uri}: stored as model {row.id}",
                {"model_uri": fetched.uri, "model_id": row.id, "sha256": stored.sha256},
            )

    def _register(
        self,
        job_id: str,
        attempt: int,
        inputs: JobInputs,
        result: PipelineResult,
        final_model: Path,
    ) -> PipelineResult:
        """The result with where it was registered in MLflow, or, when registering
        failed, with a `registry_failed` note: the job's result is never lost to it."""
        try:
            registered = mlflow_jobs.register_result(
                self.settings,
                job_id=job_id,
                spec=inputs.spec,
                result=result,
                model_filename=inputs.model_filename,
                final_model=final_model,
                run_files=[
                    final_model.parent / name
                    for name in ("report.json", "manifest.json", "report.html")
                ],
            )
        except Exception as error:  # whatever failed, the compressed model is kept
            code = error.code if isinstance(error, EngineError) else "registry_failed"
            message = f"the model was not registered in MLflow ({code}): {error}"
            log.warning("job %s: %s", job_id, message)
            with transaction(self.sessions) as session:
                jobs.add_event(session, job_id, attempt, "registry", message, {"error_code": code})
            note = Note(code="registry_failed", message=message[:2000])
            return result.model_copy(update={"notes": [*result.notes, note]})
        with transaction(self.sessions) as session:
            jobs.add_event(
                session,
                job_id,
                attempt,
                "registry",
                f"registered as {registered.uri} in MLflow ({registered.tracking_uri})",
                registered.model_dump(mode="json"),
            )
        return result.model_copy(update={"registered": registered})

    def load_inputs(self, job_id: str, work_dir: Path) -> JobInputs:
        """The job's spec, and its model and datasets as local files under `work_dir`
        (search helpers load a job's inputs the same way). NotFound for a model or
        dataset deleted since the job was submitted, BlobMissing for lost bytes."""
        with transaction(self.sessions) as session:
            job = jobs.get_job(session, job_id, tenant_id=None)
            spec = JobSpec.model_validate(job.spec)
            if spec.model_id is None:  # an MLflow model no attempt has fetched
                raise catalog.NotFound("model", spec.model_uri or "")
            # Scoped to the job's tenant again: a job only ever reads its own tenant's data.
            model = catalog.get_model(session, spec.model_id, tenant_id=job.tenant_id)
            dataset_shas = {
                dataset_id: catalog.get_dataset(session, dataset_id, tenant_id=job.tenant_id).sha256
                for dataset_id in spec.dataset_ids()
            }
            other_model_shas = {
                model_id: catalog.get_model(session, model_id, tenant_id=job.tenant_id).sha256
                for model_id in spec.student_model_ids()
            }
            queue, model_sha, model_filename = job.queue, model.sha256, model.filename
        # Outside the transaction: fetching from the object store can take a while.
        folder = work_dir / "blobs"
        folder.mkdir(parents=True, exist_ok=True)

        def local(sha256: str) -> Path:
            target = folder / sha256
            return target if target.exists() else self.blobs.materialise(sha256, target)

        return JobInputs(
            spec,
            local(model_sha),
            {dataset_id: local(sha) for dataset_id, sha in dataset_shas.items()},
            {model_id: local(sha) for model_id, sha in other_model_shas.items()},
            queue=queue,
            model_filename=model_filename,
        )

    def _helper_sender(self, job_id: str, queue: str | None) -> Callable[[str, int], None]:
        def send(study_name: str, count: int) -> None:
            if self.queue is None or queue is None:
                log.info("job %s: no queue to send %d search helpers to", job_id, count)
                return
            self.queue.send_search_helpers(job_id, study_name, count, queue)

        return send

    def _progress_writer(self, job_id: str, attempt: int) -> Any:
        def write(progress: float, message: str, data: dict[str, Any]) -> None:
            step = data.get("method")
            current = f"{data['step'] + 1}: {step}" if step and "step" in data else message
            with transaction(self.sessions) as session:
                owned = jobs.record_progress(
                    session,
                    job_id,
                    attempt,
                    progress=progress,
                    current_step=current[:200],
                    message=message,
                    data=_json_safe(data),
                )
            if not owned:
                raise LeaseLost(job_id)

        return write

    def _publish_artifacts(
        self, final_model: Path, report: dict[str, Any], report_page: str | None = None
    ) -> tuple[list[jobs.ArtifactRecord], dict[str, Path]]:
        """Write the results back to the blob store; their records, and the local file
        of each sha256 (to store again should a concurrent delete have taken it)."""
        model = package_model(final_model, final_model.parent / "publish")
        report = {**report, "model_artifact": model.describe()}
        report_path = final_model.parent / "report.json"
        report_path.write_text(json.dumps(report, indent=2, sort_keys=True))
        manifest_path = final_model.parent / "manifest.json"
        manifest_path.write_text(json.dumps(report["manifest"], indent=2, sort_keys=True))
        step_files = sorted((final_model.parent / pipeline.STEP_ARTIFACTS_DIR).glob("*"))
        pages = []
        if report_page is not None:
            page_path = final_model.parent / "report.html"
            page_path.write_text(report_page, encoding="utf-8")
            pages.append(("report.html", page_path, "text/html; charset=utf-8"))
        records = []
        files: dict[str, Path] = {}
        for name, path, media_type in (
            (model.name, model.path, model.media_type),
            ("report.json", report_path, "application/json"),
            ("manifest.json", manifest_path, "application/json"),
            *pages,
            *((path.name, path, media_type_of(path)) for path in step_files),
        ):
            stored: StagedBlob = self.blobs.put_file(path)
            records.append(jobs.ArtifactRecord(name, media_type, stored.sha256, stored.size_bytes))
            files[stored.sha256] = path
        return records, files

    def _finish(
        self,
        job_id: str,
        attempt: int,
        *,
        state: str,
        artifact_files: dict[str, Path] | None = None,
        **fields: Any,
    ) -> str:
        with transaction(self.sessions) as session:
            # Under each blob's lock until the artifact rows commit: a delete of the same
            # bytes that ran since they were written is undone here, a later one waits.
            for sha256, path in sorted((artifact_files or {}).items()):
                blob_refs.lock(session, sha256)
                if not self.blobs.exists(sha256):
                    self.blobs.put_file(path)
            owned = jobs.finish(session, job_id, attempt, state=state, **fields)
            # the job's recipes ended with it: no attempt resumes them any more
            kept = recipe_candidates.forget_job(session, job_id) if owned else []
        if not owned:
            log.warning(
                "job %s attempt %d no longer owns the job; outcome dropped", job_id, attempt
            )
            return "lost"
        blob_refs.release(self.sessions, self.blobs, kept)
        return state


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))
