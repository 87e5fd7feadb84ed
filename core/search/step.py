"""The registered `search` step: run the study, choose a trial, return its model.

The job's own runner creates (or, on a resumed attempt, loads) the study, records the
original model's costs as the weighted objective's reference and the deadline, asks
for `parallel_workers - 1` helpers, and runs trials until the study holds `max_trials`
finished ones or the budget is spent. It then waits (bounded) for trials still running
elsewhere, chooses by the objective, and exports the chosen architecture with the
weights its trial trained (retrained from the same seed when the trial ran on another
worker or in an earlier attempt). The front is written as pareto.json and pareto.png,
published with the job's artifacts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.context import RunContext
from core.errors import EngineError, StepFailed, short_reason
from core.measure import count_parameters, file_size, measure_latency
from core.quantize.common import validate_runs
from core.registry import StepData, StepOutput, register_step
from core.search import pareto
from core.search.cost import onnx_macs, torch_macs
from core.search.objective import Chosen, Goal, choose, front_records
from core.search.records import TrialRecord
from core.search.session import MAIN_ROLE, Session, all_records, report_trial
from core.search.space import describe
from core.search.study import (
    COST_REFERENCE,
    DEADLINE,
    SPENT_S,
    counts,
    open_study,
    run_trials,
    wait_for_running,
)
from core.search.trial import (
    WEIGHTS_FILE,
    export_opset,
    load_weights,
    rebuild,
    train_module,
    trial_dir,
    worker_label,
)
from core.spec import SearchStep
from core.training import refuse_bound_inputs

if TYPE_CHECKING:
    import optuna
    from torch import nn

ARTIFACTS = {"json": "pareto.json", "png": "pareto.png"}
# the share of the step's progress the trials take (the rest: choosing and exporting)
_TRIALS_SHARE = 0.9


@register_step("search")
def search(model_path: Path, config: SearchStep, data: StepData, ctx: RunContext) -> StepOutput:
    """Search `config`'s space on the job's training data and return the chosen
    architecture as ONNX (the job's input and output names), with every trial, the
    front and the choice in the details and the front as artifacts."""
    refuse_bound_inputs(data.task, "search")
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    original = data.original_model_path or model_path
    session = Session.prepare(config, data, original, ctx, role=MAIN_ROLE)
    study = open_study(
        session.storage, session.name, session.directions, session.sampler(0), session.pruner()
    )
    stored_before = all_records(study)
    study.sampler = session.sampler(len(stored_before))
    if COST_REFERENCE not in study.user_attrs:  # kept from the first attempt on a resume
        study.set_user_attr(COST_REFERENCE, _cost_reference(session, data, ctx))
    goal = Goal(config.objective, study.user_attrs[COST_REFERENCE])

    spent_before = float(study.user_attrs.get(SPENT_S, 0.0))
    started = time.time()
    deadline = started + max(0.0, config.time_budget_s - spent_before)
    study.set_user_attr(DEADLINE, deadline)
    helpers = 0
    if session.storage is not None and config.parallel_workers > 1:
        helpers = config.parallel_workers - 1
        ctx.request_helpers(session.name, helpers)

    ran_here: list[int] = []

    def on_trial(trial: optuna.trial.FrozenTrial) -> None:
        ran_here.append(trial.number)
        finished = sum(1 for r in all_records(study) if r.finished)
        elapsed = (time.time() - started) / max(deadline - started, 1e-9)
        fraction = _TRIALS_SHARE * min(1.0, max(finished / config.max_trials, elapsed))
        report_trial(ctx, trial, fraction)
        study.set_user_attr(SPENT_S, spent_before + time.time() - started)

    stopped_by = run_trials(
        study,
        session.trial_runner(goal, ctx, lambda: deadline),
        max_trials=config.max_trials,
        deadline=lambda: deadline,
        ctx=ctx,
        on_trial=on_trial,
        wait_for_others=session.storage is not None,
    )
    study.set_user_attr(SPENT_S, spent_before + time.time() - started)
    still_running: list[int] = []
    if session.storage is not None and counts(study).running:
        ctx.report_step(_TRIALS_SHARE, "search: waiting for trials running on other workers")
        still_running = wait_for_running(study, _wait_bound(study, ctx), ctx)

    trials = sorted(all_records(study), key=lambda r: r.number)
    chosen = choose(goal, trials, data.targets)
    ctx.report_step(0.92, f"search: exporting trial {chosen.record.number}")
    output_path, weights = _export_chosen(session, chosen.record, ctx)
    validate_runs(output_path, data, ctx.device, what="the searched model")

    members = front_records(goal, trials)
    content = front_content(session, goal, trials, members, chosen)
    json_path = pareto.write_json(ctx.work_dir / ARTIFACTS["json"], content)
    png_path = pareto.plot(ctx.work_dir / ARTIFACTS["png"], content)
    finished = [r for r in trials if r.finished]
    details: dict[str, Any] = {
        "family": session.problem.family.model_fields["family"].default,
        "family_chosen_by": session.problem.family_chosen_by,
        "space": describe(session.problem.space),
        "objective": goal.describe(),
        "algorithm": config.algorithm,
        "sampler": type(study.sampler).__name__,
        "pruner": config.resolved_pruner(),
        "teacher": config.teacher,
        "validation": session.problem.validation.source,
        "metric_name": session.problem.validation.metric_name,
        "study": {
            "name": session.name,
            "storage": _storage_kind(ctx),
            "trials_stored_before": len([r for r in stored_before if r.finished]),
            "trials_run_here": len(ran_here),
            "helpers_requested": helpers,
            "workers": sorted({r.worker for r in trials if r.worker}),
        },
        "budget": {
            "max_trials": config.max_trials,
            "time_budget_s": config.time_budget_s,
            "spent_s": round(float(study.user_attrs.get(SPENT_S, 0.0)), 3),
            "stopped_by": stopped_by,
            "finished_trials": len(finished),
            "pruned_trials": sum(1 for r in trials if r.state == "pruned"),
            "still_running": still_running,
        },
        "trials": [record.as_dict() for record in trials],
        "front": [record.number for record in members],
        "chosen": {
            "trial": chosen.record.number,
            "reason": chosen.reason,
            "architecture": chosen.record.architecture,
            "metric": chosen.record.metric,
            "costs": chosen.record.costs,
            "weights": weights["weights"],
            "retrained_metric": weights.get("retrained_metric"),
            "exported_parameters": count_parameters(output_path),
        },
        "artifacts": sorted(ARTIFACTS.values()),
        "notes": _notes(config, session, helpers),
    }
    ctx.report_step(1.0, "search done")
    return StepOutput(
        model_path=output_path,
        details=details,
        artifacts={ARTIFACTS["json"]: json_path, ARTIFACTS["png"]: png_path},
    )


def front_content(
    session: Session,
    goal: Goal,
    trials: list[TrialRecord],
    members: list[TrialRecord],
    chosen: Chosen | None,
) -> dict[str, Any]:
    """pareto.json: every completed trial's metric and costs, the front's members
    (sorted by the first cost) and the chosen trial."""
    costs = goal.costs_shown
    complete = [r for r in trials if r.state == "complete" and r.metric is not None]
    rows = [
        {"number": r.number, "metric": r.metric, **(r.costs or {}), "architecture": r.architecture}
        for r in complete
    ]
    ordered = sorted(members, key=lambda r: (r.cost(costs[0]), r.number))
    return {
        "title": f"{session.config.algorithm} search: {session.problem.validation.metric_name} "
        f"vs {', '.join(costs)} ({len(complete)} completed trials)",
        "metric_name": session.problem.validation.metric_name,
        "costs": costs,
        "objective": goal.describe(),
        "trials": rows,
        "front": [r.number for r in ordered],
        "chosen": chosen.record.number if chosen is not None else None,
    }


def _cost_reference(session: Session, data: StepData, ctx: RunContext) -> dict[str, Any]:
    """The original model's costs, measured like a trial's (same rows, same settings)."""
    problem = session.problem
    latency = measure_latency(
        problem.original,
        problem.latency_feeds,
        problem.latency_batch_size,
        ctx.measure,
        ctx.device,
    )
    macs = onnx_macs(problem.original)
    macs_of = "the original model"
    if macs is None:  # shapes computed from data: the family's default stands in
        import torch

        torch.manual_seed(session.seed)
        default = problem.build(problem.family())
        example = torch.from_numpy(problem.latency_feeds[problem.input.name][:1])
        macs, macs_of = torch_macs(default, example), "the family's default architecture"
    return {
        "parameters": count_parameters(problem.original),
        "macs": macs,
        "macs_of": macs_of,
        "size_bytes": file_size(problem.original),
        "latency_ms": latency.median_ms,
        "latency_batch_size": problem.latency_batch_size,
    }


def _export_chosen(
    session: Session, record: TrialRecord, ctx: RunContext
) -> tuple[Path, dict[str, Any]]:
    """The chosen trial's model as ONNX: its own weights when this runner trained it,
    else retrained from the same architecture and seed."""
    from core.torch_bridge import torch_to_onnx

    problem = session.problem
    if record.architecture is None or record.seed is None:
        raise StepFailed(f"trial {record.number} stored no architecture to rebuild")
    module = rebuild(problem, record.architecture, record.seed)
    weights_path = trial_dir(ctx, record.number) / WEIGHTS_FILE
    how: dict[str, Any]
    if record.worker == worker_label() and weights_path.is_file():
        module = load_weights(module, weights_path)
        how = {"weights": "trained by the trial"}
    else:
        ctx.report_step(0.91, f"search: retraining trial {record.number} (ran elsewhere)")
        run = train_module(problem, session.config, module, record.seed, ctx)
        how = {
            "weights": "retrained from the trial's seed (the trial ran on another worker "
            "or in an earlier attempt)",
            "retrained_metric": run.best_metric,
        }
    output_path = ctx.work_dir / "model.onnx"
    example = {problem.input.name: problem.latency_feeds[problem.input.name][:2]}
    try:
        torch_to_onnx(
            _eval(module),
            example,
            output_path,
            inputs=[problem.input],
            outputs=[problem.output],
            opset=export_opset(problem),
        )
    except EngineError:
        raise
    except Exception as exc:
        raise StepFailed(f"exporting the chosen model failed: {short_reason(exc)}") from exc
    return output_path, how


def _eval(module: nn.Module) -> nn.Module:
    return module.eval()


def _wait_bound(study: optuna.Study, ctx: RunContext) -> float:
    """How long to wait for trials on other workers: twice the longest trial so far,
    and at least long enough for a dead worker's trial to be declared stale."""
    durations = [r.duration_s or 0.0 for r in all_records(study) if r.finished]
    store = ctx.search_store
    return max(2.0 * max(durations, default=0.0), store.grace_s + 2.0 * store.heartbeat_s)


def _storage_kind(ctx: RunContext) -> str:
    """The storage's dialect only: the URL may hold credentials."""
    url = ctx.search_store.url
    if url is None:
        return "in memory (not durable; no helpers)"
    return url.split(":", 1)[0].split("+", 1)[0]


def _notes(config: SearchStep, session: Session, helpers: int) -> list[str]:
    notes = [
        "trials are scored on validation rows held out from the training data; the "
        "pipeline measures the chosen model on the eval data, which no choice saw"
        if config.validation_fraction > 0
        else "validation_fraction 0: trials are scored on the eval data, which also "
        "scores the result (optimistic)",
        "trial costs are measured on a TorchScript export of the untrained architecture; "
        "the step's model is exported with the dynamo exporter and measured again",
        "a trial still training when the time budget runs out is stopped (pruned)",
    ]
    if config.parallel_workers > 1 and session.storage is None:
        notes.append("parallel_workers needs a stored study: the search ran on one worker")
    if helpers:
        notes.append(
            f"{helpers} helper(s) were asked for; trial latencies measured while several "
            "workers share the CPU are noisier"
        )
    return notes
