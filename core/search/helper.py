"""A helper: another worker joining a running search's study to run its trials.

The helper reads the job's spec and data like the job's own runner, prepares the same
problem (same seed: same split), takes the weighted objective's reference and the
deadline from the study, and runs trials until the budget is taken, then returns. Its
trials are stored in the study; the job's runner reports and chooses among them.
"""

from __future__ import annotations

from pathlib import Path

from core.context import RunContext
from core.data import load_arrays
from core.formats import inspect_model
from core.registry import StepData
from core.search.objective import Goal
from core.search.session import Session, report_trial
from core.search.study import COST_REFERENCE, DEADLINE, load_study, run_trials, study_name
from core.spec import JobSpec, SearchStep

# how long a helper waits for the job's runner to create the study
STUDY_WAIT_S = 120.0


def search_step_of(spec: JobSpec, name: str, ctx: RunContext) -> SearchStep | None:
    """The job's search step whose study is `name` (None: no such step)."""
    for step in spec.steps:
        if isinstance(step, SearchStep) and study_name(ctx.search_store, step) == name:
            return step
    return None


def join_search(
    model_path: Path,
    datasets: dict[str, Path],
    spec: JobSpec,
    name: str,
    helper_index: int,
    ctx: RunContext,
) -> int:
    """Run trials of the study `name` of the job whose uploaded model is `model_path`
    and whose datasets are `datasets` (ids -> .npz); returns how many trials ran here.
    Returns 0 at once when the spec has no such search or the study is not stored."""
    config = search_step_of(spec, name, ctx)
    if config is None or ctx.search_store.url is None or spec.train_dataset_id is None:
        return 0
    info = inspect_model(model_path)
    eval_arrays = load_arrays(datasets[spec.eval_dataset_id])
    data = StepData(
        eval_arrays=eval_arrays,
        calibration_arrays=eval_arrays,
        inputs=info.inputs,
        task=spec.task,
        train_arrays=load_arrays(datasets[spec.train_dataset_id]),
        targets=spec.targets,
        batch_size=spec.batch_size,
        original_model_path=model_path,
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    session = Session.prepare(config, data, model_path, ctx, role=helper_index)
    assert session.storage is not None
    study = load_study(
        session.storage, name, session.sampler(0), session.pruner(), ctx, wait_s=STUDY_WAIT_S
    )
    if study is None:
        return 0
    study.sampler = session.sampler(len(study.get_trials(deepcopy=False)))
    goal = Goal(config.objective, study.user_attrs[COST_REFERENCE])
    ran: list[int] = []

    def on_trial(trial: object) -> None:
        ran.append(1)
        report_trial(ctx, trial, 0.0)  # type: ignore[arg-type]

    def deadline() -> float:
        return float(study.user_attrs.get(DEADLINE, 0.0))

    run_trials(
        study,
        session.trial_runner(goal, ctx, deadline),
        max_trials=config.max_trials,
        deadline=deadline,
        ctx=ctx,
        on_trial=on_trial,
        wait_for_others=False,
    )
    return len(ran)
