"""Jobs as the API sees them: submission with idempotency, listing, cancel, artifacts.

Submission writes the job row and its message (an outbox row, store.outbox) in the
request's transaction; the message is sent only after that commit (`enqueue`, run as a
background task), so a worker never receives an id it cannot find. A failed send loses
nothing and waits for no reaper: the message stays in the outbox, and the API's timer
and the workers' outbox pass send it as soon as the broker answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from api.errors import ForbiddenWebhook, InvalidSpec, UnknownReference
from api.quotas import check_job_slot
from api.worker_check import check_all, record_waiting, requirements_for
from core.data import DatasetInfo, check_compatible
from core.errors import IncompatibleData
from core.formats import ModelInfo
from core.spec import AutoStep, JobSpec, SearchStep
from service.settings import Settings
from service.webhook_destination import ForbiddenDestination, check_destination
from store import catalog, jobs, outbox, tenants, webhooks
from store.catalog import NotFound
from store.tables import ArtifactRow, JobEventRow, JobRow
from worker.enqueue import JobQueue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    job: JobRow
    # False when an Idempotency-Key replayed an earlier submission.
    created: bool


def spec_sha256(spec: JobSpec) -> str:
    """The hash of the validated spec's canonical JSON (defaults filled in, keys sorted).

    Two bodies that mean the same job hash alike, whatever their key order or omitted
    defaults, so an Idempotency-Key replay is recognised by meaning, not by bytes.
    """
    try:
        canonical = json.dumps(
            spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), allow_nan=False
        )
    except ValueError as exc:
        raise InvalidSpec(
            "the job spec holds a number that is not finite (NaN or Infinity)"
        ) from exc
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_job(
    session: Session,
    spec: JobSpec,
    *,
    tenant_id: str,
    idempotency_key: str | None,
    queue: JobQueue,
    settings: Settings,
    api_key_id: str | None = None,
    webhook_url: str | None = None,
) -> Submission:
    """Check the spec against the tenant's uploads and insert the job (or find its replay).

    Raises UnknownReference for a model or dataset the tenant never uploaded,
    IncompatibleData when a dataset cannot feed the model, ForbiddenWebhook for a webhook
    URL that leads to a non-public address, IdempotencyConflict when the
    key was used for a different spec, QuotaExceeded when the tenant has its quota of
    active jobs (a replay is answered even then), NoWorkerForTarget when no live worker
    serves the job's queue and device (settings.absent_worker_policy "refuse"; under
    "queue" the job is accepted and its events say so). The caller commits, then calls
    `enqueue` when `created`.
    """
    request_sha256 = request_hash(spec, webhook_url)
    check_time_budgets(spec, settings)
    check_webhook_destination(webhook_url, settings)
    check_registry(spec, settings)
    check_references(session, spec, tenant_id)
    replay = idempotency_key is not None and jobs.has_idempotency_key(
        session, tenant_id, idempotency_key
    )
    waiting = None
    if not replay:
        check_job_slot(session, tenant_id, settings, specs=[spec])
        waiting = check_all(
            session, requirements_for(spec, queue.queue_for(spec.device)), settings
        )
    job, created = jobs.create_job(
        session,
        tenant_id=tenant_id,
        spec=spec.model_dump(mode="json"),
        queue=queue.queue_for(spec.device),
        request_sha256=request_sha256,
        idempotency_key=idempotency_key,
        api_key_id=api_key_id,
        webhook_url=webhook_url,
        method=method_label(spec),
    )
    if created and webhook_url is not None:
        webhooks.watch_job(session, job.id, webhook_url)
    if created and waiting is not None:
        record_waiting(session, job.id, waiting, settings)
    return Submission(job=job, created=created)


def check_webhook_destination(webhook_url: str | None, settings: Settings) -> None:
    """Refuse (422) a webhook URL whose host is or resolves to a loopback, link-local or
    private address: it would be refused at every delivery attempt anyway. A name that
    does not resolve now is accepted (its receiver may not exist yet); each delivery
    checks the destination again and connects to the address it checked."""
    if webhook_url is None or settings.webhook_allow_private_hosts:
        return
    try:
        check_destination(webhook_url)
    except ForbiddenDestination as refused:
        raise ForbiddenWebhook(str(refused)) from None
    except OSError:
        pass


def request_hash(spec: JobSpec, webhook_url: str | None) -> str:
    """What an Idempotency-Key replay must match: the spec, and the webhook URL if any
    (without one the hash is the spec's own, as before webhooks existed)."""
    digest = spec_sha256(spec)
    if webhook_url is None:
        return digest
    return hashlib.sha256(f"{digest}\n{webhook_url}".encode()).hexdigest()


def method_label(spec: JobSpec) -> str:
    """The steps' methods in order, joined by "+": the job's label in the metrics."""
    return "+".join(step.method for step in spec.steps)[:200]


def check_time_budgets(spec: JobSpec, settings: Settings) -> None:
    """A search whose budget outlasts the job's soft time limit would be stopped with
    `time_limit_exceeded` hours into the job: refused at submission instead."""
    budgets = {
        index: step.time_budget_s
        for index, step in enumerate(spec.steps)
        if isinstance(step, SearchStep | AutoStep)
    }
    limit_s = settings.task_soft_time_limit_s
    if sum(budgets.values()) >= limit_s:
        fields = ", ".join(
            f"steps[{index}].time_budget_s = {budget:g}" for index, budget in budgets.items()
        )
        raise InvalidSpec(
            f"{fields}: the search or auto time must end before the job's time limit of "
            f"{limit_s} s (leave room for training and measuring the result)"
        )


def check_registry(spec: JobSpec, settings: Settings) -> None:
    """A job that reads from or registers in MLflow needs the service to know where the
    tracking server is: refused at submission, not hours later on the worker."""
    if settings.mlflow_tracking_uri is not None:
        return
    uses = [
        field
        for field, used in (("model_uri", spec.model_uri), ("registry", spec.registry))
        if used is not None
    ]
    if uses:
        raise InvalidSpec(
            f"{' and '.join(uses)} need an MLflow tracking server, and this service has "
            "none configured: its operator sets SQUEEZE_MLFLOW_TRACKING_URI (or upload the "
            "model and submit it by model_id)",
            code="mlflow_not_configured",
        )


def check_references(session: Session, spec: JobSpec, tenant_id: str) -> None:
    # The tenant's submission lock first: a delete of an input (store.lifecycle) takes it
    # too, so it either sees this job or this check sees the input gone.
    tenants.lock_for_submission(session, tenant_id)
    model: ModelInfo | None = None  # an MLflow model: the worker checks it once downloaded
    if spec.model_id is not None:
        try:
            model_row = catalog.get_model(session, spec.model_id, tenant_id=tenant_id)
        except NotFound:
            raise UnknownReference("model", spec.model_id) from None
        model = ModelInfo.model_validate(model_row.info)
    for student_id in spec.student_model_ids():  # uploaded students of distill steps
        try:
            catalog.get_model(session, student_id, tenant_id=tenant_id)
        except NotFound:
            raise UnknownReference("model", student_id) from None
    roles: dict[str, str] = {}
    for role in ("eval_dataset_id", "calibration_dataset_id", "train_dataset_id"):
        dataset_ref = getattr(spec, role)
        if dataset_ref:
            roles.setdefault(dataset_ref, role)
    digests: dict[str, str] = {}
    for dataset_id in spec.dataset_ids():
        try:
            dataset_row = catalog.get_dataset(session, dataset_id, tenant_id=tenant_id)
        except NotFound:
            raise UnknownReference("dataset", dataset_id) from None
        digests[dataset_id] = dataset_row.sha256
        dataset = DatasetInfo.model_validate(dataset_row.info)
        if model is None:
            continue
        try:
            # Labels are optional everywhere: without them the metric is agreement
            # with the original model; present labels are still checked.
            check_compatible(model, dataset, spec.task, need_labels=False)
        except IncompatibleData as exc:
            raise IncompatibleData(f"{roles[dataset_id]} {dataset_id!r}: {exc}") from exc
    check_no_leakage(spec, digests)


def check_no_leakage(spec: JobSpec, digests: dict[str, str]) -> None:
    """Training data that is the eval data under another id (the same bytes) would let a
    trained model score itself: refused, naming both fields."""
    if spec.train_dataset_id is None:
        return
    if digests.get(spec.train_dataset_id) == digests.get(spec.eval_dataset_id):
        raise InvalidSpec(
            f"train_dataset_id {spec.train_dataset_id!r} and eval_dataset_id "
            f"{spec.eval_dataset_id!r} hold the same file (sha256 "
            f"{digests[spec.eval_dataset_id][:12]}...): a model trained on its eval rows "
            "scores itself; upload separate training and eval splits",
            code="data_leakage",
        )


def enqueue(sessions: sessionmaker[Session], queue: JobQueue, job_id: str, queue_name: str) -> bool:
    """Send the committed job's message from the outbox at once; False when the broker
    did not take it (the message stays in the outbox: the API's timer and the workers'
    outbox pass send it as soon as the broker answers)."""
    try:
        result = outbox.drain(sessions, queue.send, job_ids=[job_id])
    except Exception:  # the database itself failed: the row stays for the next pass
        logger.warning("could not drain the outbox for job %s", job_id, exc_info=True)
        return False
    if result.error is not None:
        logger.warning(
            "could not send job %s to queue %s (%s); its message waits in the outbox",
            job_id,
            queue_name,
            result.error,
        )
        return False
    return True


def list_jobs(
    session: Session,
    *,
    tenant_id: str,
    state: str | None,
    limit: int,
    cursor: str | None,
    outcome: str | None = None,
    method: str | None = None,
) -> tuple[list[JobRow], str | None]:
    """Raises store.jobs.InvalidCursor for a cursor this service did not issue."""
    return jobs.list_jobs(
        session,
        tenant_id=tenant_id,
        state=state,
        outcome=outcome,
        method=method,
        limit=limit,
        cursor=cursor,
    )


def list_events(
    session: Session, job_id: str, *, tenant_id: str, after: int, limit: int
) -> list[JobEventRow]:
    # JobNotFound for an unknown (or another tenant's) job, not an empty list
    jobs.get_job(session, job_id, tenant_id=tenant_id)
    return jobs.list_events(session, job_id, after_id=after, limit=limit)


def list_artifacts(session: Session, job_id: str, *, tenant_id: str) -> list[ArtifactRow]:
    jobs.get_job(session, job_id, tenant_id=tenant_id)
    return jobs.list_artifacts(session, job_id)


def artifact_row(session: Session, job_id: str, name: str, *, tenant_id: str) -> ArtifactRow:
    """The artifact's row (its blob is named by its sha256); NotFound for unknown names."""
    jobs.get_job(session, job_id, tenant_id=tenant_id)
    artifact = jobs.get_artifact(session, job_id, name)
    if artifact is None:
        raise NotFound("artifact", name)
    return artifact
