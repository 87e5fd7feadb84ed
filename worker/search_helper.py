"""A search or recipe helper: the service function behind the `squeeze.search_trials` task.

The job's own runner sends `parallel_workers - 1` of these to the job's queue when its
search (or its fanned-out auto recipe) starts. A helper never claims the job nor touches
its lease or attempt: it loads the job's inputs and, while the job is running, either
joins the search's study and runs trials, writing one `search_trial` event per trial, or
(a name starting "auto-": core.recipe.helper) produces the recipe's unclaimed short
rounds into the job's candidate store, writing one `recipe_candidate` event per
candidate. It stops when the work is done, the budget is spent, or the job is no longer
running (ended, requeued after its worker died, or cancelled).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import pipeline
from core.archive import materialise_model
from core.candidates import RECIPE_PREFIX
from core.errors import JobCancelled
from service.settings import Settings
from store import jobs
from store.blobs import BlobStore
from store.db import transaction
from store.tables import JobRow
from worker.engine_process import (
    EngineRequest,
    MemoryLimitExceeded,
    TimeLimitExceeded,
    run_engine,
)
from worker.limits import SHUTDOWN
from worker.recipe_candidates import JobCandidates
from worker.runner import JobRunner, archive_limits, job_memory_allowance, measure_settings
from worker.search_storage import search_store

log = logging.getLogger(__name__)

TRIAL_EVENT = "search_trial"
CANDIDATE_EVENT = "recipe_candidate"
# how often a helper looks at the job's row (state and cancel flag)
WATCH_INTERVAL_S = 1.0


class JobWatch:
    """`watch()` is true once the job stopped running or was asked to cancel, or this
    worker is shutting down; the row is read at most every `interval_s` (the engine asks
    every few batches)."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, interval_s: float) -> None:
        self._sessions = sessions
        self._job_id = job_id
        self._interval_s = interval_s
        self._checked_at = float("-inf")
        self._stopped = False

    def __call__(self) -> bool:
        if SHUTDOWN.is_set():  # the worker is shutting down: leave the trials to others
            return True
        now = time.monotonic()
        if not self._stopped and now - self._checked_at >= self._interval_s:
            self._checked_at = now
            state, _, cancel = job_state(self._sessions, self._job_id)
            self._stopped = state != "running" or cancel
        return self._stopped


def job_state(sessions: sessionmaker[Session], job_id: str) -> tuple[str | None, int, bool]:
    """(state, attempt, cancel requested); state None when the job does not exist."""
    with transaction(sessions) as session:
        row = session.execute(
            select(JobRow.state, JobRow.attempt, JobRow.cancel_requested).where(JobRow.id == job_id)
        ).first()
    if row is None:
        return None, 0, False
    return str(row[0]), int(row[1]), bool(row[2])


class SearchHelper:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], blobs: BlobStore
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.runner = JobRunner(settings, sessions, blobs)

    def run(self, job_id: str, study_name: str, helper_index: int) -> str:
        """Returns what happened: "skipped" (the job is not running), "ran N trials",
        "stopped" (the job stopped meanwhile) or "failed"."""
        state, attempt, cancel = job_state(self.sessions, job_id)
        if state != "running" or cancel:
            log.info("search helper for %s: the job is %s; nothing to do", job_id, state)
            return "skipped"
        work_dir = self.settings.work_dir / job_id / f"helper-{helper_index}-{uuid.uuid4().hex[:8]}"
        try:
            work_dir.mkdir(parents=True)
            inputs = self.runner.load_inputs(job_id, work_dir)
            model_path = materialise_model(
                inputs.model_path, work_dir / "input", archive_limits(self.settings)
            )
            recipe = study_name.startswith(RECIPE_PREFIX)
            request = EngineRequest(
                kind="recipe" if recipe else "search",
                work_dir=work_dir / "search",
                model_path=model_path,
                dataset_paths=inputs.dataset_paths,
                spec=inputs.spec.model_dump(mode="json"),
                device=pipeline.resolve_device(inputs.spec.device),
                seed=inputs.spec.seed,
                measure=measure_settings(self.settings),
                search_store=search_store(self.settings, job_id),
                study_name=study_name,
                helper_index=helper_index,
                memory_allowance_bytes=job_memory_allowance(self.settings, inputs.spec),
                keep_candidates=recipe,
            )
            candidates = (
                JobCandidates(
                    self.sessions,
                    self.runner.blobs,
                    job_id,
                    attempt,
                    archive_limits(self.settings),
                    holder=f"helper-{helper_index}@{socket.gethostname()}:{os.getpid()}",
                    lease_s=self.settings.lease_s,
                )
                if recipe
                else None
            )
            # In a child, as the job's own engine: killed when the job stops, past the
            # time limit or past the job's memory ceiling.
            payload = run_engine(
                request,
                on_progress=self._trial_writer(job_id, attempt),
                should_stop=JobWatch(self.sessions, job_id, WATCH_INTERVAL_S),
                time_limit_s=self.settings.task_soft_time_limit_s,
                memory_limit_bytes=request.memory_allowance_bytes,
                fork_server=self.settings.engine_fork_server,
                candidate_store=candidates,
                on_tick=candidates.renew_claims if candidates is not None else None,
            )
            ran = int(payload["trials"])
            what = "candidates" if recipe else "trials"
            log.info("%s helper %d for %s ran %d %s", request.kind, helper_index, job_id, ran, what)
            return f"ran {ran} {what}"
        except JobCancelled:
            return "stopped"
        except (MemoryLimitExceeded, TimeLimitExceeded) as error:
            # the job's own runner goes on; its log says why this helper stopped
            memory_record = error.record() if isinstance(error, MemoryLimitExceeded) else {}
            with transaction(self.sessions) as session:
                jobs.add_event(
                    session,
                    job_id,
                    attempt,
                    "search_helper_stopped",
                    f"search helper {helper_index} stopped: {error.message}",
                    {"code": error.code, **memory_record},
                )
            log.warning("search helper %d for %s: %s", helper_index, job_id, error.message)
            return error.code
        except Exception:  # a helper's failure must not fail the job: its runner goes on
            log.exception("search helper %d for %s failed", helper_index, job_id)
            return "failed"
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _trial_writer(self, job_id: str, attempt: int) -> Any:
        """Trial reports become events of the job; other progress stays local."""

        def write(progress: float, message: str, data: dict[str, Any]) -> None:
            kind = (
                TRIAL_EVENT
                if "trial" in data
                else CANDIDATE_EVENT
                if "stage" in data.get("candidate", {})
                else None
            )
            if kind is None:
                return
            safe = json.loads(json.dumps(data, default=str))
            with transaction(self.sessions) as session:
                jobs.add_event(session, job_id, attempt, kind, message, safe)

        return write
