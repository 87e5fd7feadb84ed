"""The study: created or loaded by name on the storage the caller names, and the loop
that runs trials in it until the budget is spent.

The budget is counted in the study, not in the runner: a runner starts a trial only
while fewer than `max_trials` trials are finished (complete or pruned) or running, so a
resumed runner, or a second one joining, does only the trials that remain. Two runners
asking at once are ranked by trial number (the storage hands numbers out atomically);
the one ranked past the budget gives its trial up at once (marked abandoned, left out of
every report). A trial whose runner died stops beating; after the grace period it is
failed and queued again with the same parameters (Optuna's heartbeat and retry
callback), and the next runner to ask picks it up; one that died before its first beat
is caught too (core/search/storage.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.context import RunContext, SearchStore
from core.errors import EngineError, JobCancelled, StepFailed, short_reason
from core.search import records
from core.spec import SearchStep

if TYPE_CHECKING:
    import optuna
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

# study user attributes
DEADLINE = "deadline_unix"  # when runners stop starting trials (seconds since the epoch)
SPENT_S = "spent_s"  # search time spent by earlier attempts of the main runner
COST_REFERENCE = "cost_reference"
# retries of a trial whose runner died, before it is given up
MAX_RETRIES = 2
# a runner that saw this many of its trials fail in a row stops the search
MAX_CONSECUTIVE_FAILURES = 3


class _CaughtTrialError(Exception):
    """A trial ended without a result; the search goes on (Optuna records it as FAIL)."""


class BudgetReached(_CaughtTrialError):
    pass


class TrialFailed(_CaughtTrialError):
    pass


def study_name(store: SearchStore, config: SearchStep) -> str:
    """The prefix (the job) and a hash of the step's config: a helper that reads the
    same spec finds the same study, and two different searches never share one."""
    digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
    return f"{store.study_prefix}-{digest}"


def storage_of(store: SearchStore) -> BaseStorage | None:
    """The RDB storage at store.url with heartbeats, or None (in memory)."""
    if store.url is None:
        return None
    import optuna
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from core.search.storage import HeartbeatStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are reported as events
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return HeartbeatStorage(
            store.url,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=store.heartbeat_s,
            grace_period=store.grace_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
        )


def ensure_storage(url: str) -> None:
    """Create Optuna's tables at `url` (concurrent first runs would race to)."""
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    RDBStorage(url)


def open_study(
    storage: BaseStorage | None,
    name: str,
    directions: list[str],
    sampler: BaseSampler,
    pruner: BasePruner,
) -> optuna.Study:
    """Create the study, or load it when it exists (a resumed search)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are reported as events
    return optuna.create_study(
        storage=storage,
        study_name=name,
        directions=directions,  # type: ignore[arg-type]  # "maximize" / "minimize"
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def load_study(
    storage: BaseStorage,
    name: str,
    sampler: BaseSampler,
    pruner: BasePruner,
    ctx: RunContext,
    *,
    wait_s: float,
) -> optuna.Study | None:
    """The existing study, waiting up to `wait_s` for it and its cost reference; None
    when it never appears (a helper then has nothing to do)."""
    import optuna

    deadline = time.monotonic() + wait_s
    while True:
        ctx.check_cancelled()
        try:
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
            if COST_REFERENCE in study.user_attrs:
                return study
        except KeyError:
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


@dataclass(frozen=True)
class Counts:
    finished: int  # complete or pruned
    running: int


def counts(study: optuna.Study) -> Counts:
    from optuna.trial import TrialState

    trials = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    )
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    return Counts(finished=len(trials) - running, running=running)


def fail_stale(study: optuna.Study) -> None:
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import fail_stale_trials

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        fail_stale_trials(study)


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    max_trials: int,
    deadline: Callable[[], float],
    ctx: RunContext,
    on_trial: Callable[[FrozenTrial], None],
    wait_for_others: bool,
    poll_s: float = 1.0,
) -> str:
    """Run trials until the study has `max_trials` finished ones or `deadline()` (unix
    time) passed; returns why it stopped: "max_trials" or "time_budget".

    With `wait_for_others` the runner waits while the trials of others would fill the
    budget (one may yet fail and need doing again); without, it returns then. Raises
    JobCancelled when the job is cancelled, StepFailed after MAX_CONSECUTIVE_FAILURES
    failed trials in a row.
    """
    failures: list[str] = []
    guarded = _guarded(study, objective, max_trials)
    while True:
        ctx.check_cancelled()
        if time.time() >= deadline():
            return "time_budget"
        fail_stale(study)
        now = counts(study)
        if now.finished >= max_trials:
            return "max_trials"
        if now.finished + now.running >= max_trials:
            if not wait_for_others:
                return "max_trials"
            time.sleep(poll_s)
            continue
        finished = _run_one(study, guarded)
        for trial in finished:
            if records.is_abandoned(trial):
                continue
            on_trial(trial)
            if trial.state.name == "FAIL":
                failures.append(trial.user_attrs.get(records.NOTE, "failed"))
                if len(failures) >= MAX_CONSECUTIVE_FAILURES:
                    raise StepFailed(
                        f"{len(failures)} search trials failed in a row; the last: {failures[-1]}"
                    )
            else:
                failures.clear()


def _run_one(study: optuna.Study, objective: Callable[[optuna.Trial], Any]) -> list[FrozenTrial]:
    """One trial through Optuna's own loop (heartbeat, stale-trial recovery, state)."""
    finished: list[FrozenTrial] = []
    study.optimize(
        objective,
        n_trials=1,
        catch=(_CaughtTrialError,),
        callbacks=[lambda _, trial: finished.append(trial)],
        gc_after_trial=False,
    )
    return finished


def wait_for_running(
    study: optuna.Study, timeout_s: float, ctx: RunContext, poll_s: float = 1.0
) -> list[int]:
    """Wait up to `timeout_s` for the trials other runners are running; a dead runner's
    trial is failed once its heartbeat is older than the grace period. Returns the
    numbers of trials still running at the timeout."""
    from optuna.trial import TrialState

    end = time.monotonic() + timeout_s
    while True:
        ctx.check_cancelled()
        fail_stale(study)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if not running or time.monotonic() >= end:
            return running
        time.sleep(poll_s)


def _guarded(
    study: optuna.Study, objective: Callable[[optuna.Trial], Any], max_trials: int
) -> Callable[[optuna.Trial], Any]:
    from optuna import TrialPruned
    from optuna.trial import TrialState

    def run(trial: optuna.Trial) -> Any:
        counted = sorted(
            t.number
            for t in study.get_trials(
                deepcopy=False,
                states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING),
            )
        )
        if trial.number in counted and counted.index(trial.number) >= max_trials:
            trial.set_user_attr(records.ABANDONED, True)
            raise BudgetReached(f"trial {trial.number}: the other runners fill the budget")
        try:
            return objective(trial)
        except (TrialPruned, JobCancelled):
            raise
        except (EngineError, RuntimeError, ValueError) as exc:
            # one architecture that cannot be built, exported or trained fails its
            # trial; anything else (a time limit, a lost lease) stops the search
            trial.set_user_attr(records.NOTE, f"failed: {short_reason(exc, 300)}")
            log.warning("search trial %d failed", trial.number, exc_info=True)
            raise TrialFailed(str(exc)) from exc

    return run
