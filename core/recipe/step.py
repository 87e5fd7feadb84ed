"""The registered `auto` step: compression across methods toward a goal.

The planner asks every candidate kind (core.recipe.kinds) what it would try here, then:

1. the cheap kinds (graph rewrites, quantization) on the original, and quantization of
   a rewritten graph;
2. the kinds that train (structured pruning recovered by distillation, a distilled
   student), each candidate `short_epochs` first; the best `keep` share of them (ranked
   by the metric target first, then by speed, or by size for a size goal) gets
   `long_epochs` more (successive halving: short fine-tunes decide which get long ones);
3. quantization of every trained survivor (`quantize_results`).

Every candidate is measured like quantize auto's (core.tune.measure.WorkerMeasure: the
metric on the job's selection rows against the original, size, latency at every
deployment batch size interleaved with the original by the verdict's timing rule) and
judged by the same rules (metric target, the goal as `targets.min_speedup` /
`max_latency_ms` / `max_size_bytes`, never slower than the original). The step's model is
the best candidate that meets everything (the fastest; the smallest for a size goal), or
the closest one when none does (the verdict then says what was missed); the original
itself when every candidate was slower. The time budget stops the planner between
candidates (and a training round between epochs is not split). Every candidate is a
row of the details, with why it was tried, what it measured and how long it took, and
the Pareto front (metric against latency and size) is in the details and `pareto.json`.

Every finished candidate (measured or failed) is recorded as soon as it is, with its
model file, in the context's candidate store (core.candidates; the worker keeps them in
the job's database and blob store). A new attempt of the job, after its worker died,
resumes the recipe: a candidate with the same key (its stage, its proposal, its base's
key) is taken as it was measured instead of being produced and measured again, its model
fetched only when it is chosen or is the base of a later stage; its row says which
attempt it was resumed from. The time budget counts from the recipe's first attempt.

Fan-out (`parallel_workers` > 1, the recipe being the job's first step): the recipe asks
for `parallel_workers - 1` helpers as it starts (RunContext.request_helpers, under its
recipe name; the worker sends them to the job's queue). A helper (core.recipe.helper)
prepares the job's data as the pipeline does, measures the original, and produces short
rounds the others have not claimed (CandidateStore.claim), recording each in the store.
The recipe's own runner does the same with every short round nobody holds, then waits
for the ones helpers hold and takes them as they were recorded (their rows say `by`),
taking over a claim that lapsed (its helper died). A helper's latency is timed
interleaved with the original on its own machine, so its ratios compare with the
runner's. The long rounds and the quantization of survivors run on the runner.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.candidates import FinishedCandidate, RecipeMemory, recipe_name
from core.context import RunContext
from core.errors import EngineError, JobCancelled, short_reason
from core.measure import file_size
from core.recipe.kinds import Kind, KindContext, Produced, Proposal, get_kind, kinds
from core.registry import StepData, StepOutput, register_step
from core.spec import AutoStep
from core.timing import SpeedComparison
from core.tune.choose import Decision, Named, Outcome, choose
from core.tune.front import Point, pareto_front
from core.tune.halving import survivors
from core.tune.judge import Criteria, Measurement, judge
from core.tune.measure import WorkerMeasure

log = logging.getLogger(__name__)

# the key of the recipe's input model as a base
ORIGINAL = "original"
# how often the runner looks for the short rounds that helpers hold
SHARED_POLL_S = 0.5


@dataclass
class Tried:
    number: int
    proposal: Proposal
    stage: str  # "once", "short", "long", "quantized"
    produced: Produced | None = None
    outcome: Outcome | None = None
    note: str | None = None
    seconds: float = 0.0
    # stage, proposal and base lineage: what a new attempt recognises it by
    key: str = ""
    # recorded by an earlier attempt and taken as it was (its model fetched on demand)
    resumed: FinishedCandidate | None = None

    @property
    def judged(self) -> bool:
        return self.outcome is not None and self.outcome.judgement is not None


@register_step("auto")
def auto(model_path: Path, config: AutoStep, data: StepData, ctx: RunContext) -> StepOutput:
    return recipe_for(model_path, config, data, ctx).run()


def recipe_for(model_path: Path, config: AutoStep, data: StepData, ctx: RunContext) -> Recipe:
    """The recipe the step runs (and a helper joins: the same seed, the same name)."""
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    if config.seed is not None:
        ctx = dataclasses.replace(ctx, seed=config.seed)
    return Recipe(model_path, config, data, ctx)


class Recipe:
    def __init__(self, model_path: Path, config: AutoStep, data: StepData, ctx: RunContext):
        self.original = model_path
        self.config = config
        self.ctx = ctx
        self.recipe = recipe_name(config.model_dump_json(), model_path)
        self.memory: RecipeMemory = ctx.candidate_store.begin(self.recipe)
        # the budget counts from the recipe's first attempt, on this process's clock
        before = min(max(time.time() - self.memory.started_unix, 0.0), config.time_budget_s)
        self.started = time.monotonic() - before
        self.deadline = self.started + config.time_budget_s
        self.stopped_by: str | None = None
        source, train_arrays, self.training_note = _training_source(data)
        self.kc = KindContext(
            original=model_path,
            config=config,
            data=dataclasses.replace(data, train_arrays=train_arrays),
            training_source=source,
            ctx=ctx,
            no_training_reason=self.training_note or "nothing to train on",
        )
        self.measure = WorkerMeasure(model_path, data, ctx)
        self.tried: list[Tried] = []
        self.skipped: dict[str, str] = {}
        # helpers can load only the job's uploaded model: fan out from the first step
        self.fan_out = config.parallel_workers > 1 and model_path == data.original_model_path
        self.fan_out_note = (
            None
            if self.fan_out or config.parallel_workers == 1
            else "parallel_workers was ignored: helpers join a recipe only when it is the "
            "job's first step (they load the uploaded model); every candidate ran here"
        )

    # --- the plan ----------------------------------------------------------------------------

    def run(self) -> StepOutput:
        if self.fan_out:
            self.ctx.request_helpers(self.recipe, self.config.parallel_workers - 1)
        self._measure_baseline()
        proposals = self._proposals()
        cheap = [(k, p) for k, p in proposals if not k.trains]
        training = [(k, p) for k, p in proposals if k.trains]

        for kind, proposal in cheap:
            self._try(kind, proposal, None, 0, "once")
        rewritten = [t for t in self.tried if t.proposal.kind == "graph" and t.judged]
        if rewritten and any(k.name == "quantize" for k, _ in proposals):
            for tried in rewritten:
                self._quantize(tried)

        shorts = self._short_rounds(training)
        lineages = [t for t in shorts if t is not None and t.judged]
        kept = survivors(lineages, self.config.keep, self._rank)
        finals = list(kept)
        if self.config.long_epochs:
            finals = []
            for tried in kept:
                longer = self._try(
                    get_kind(tried.proposal.kind),
                    tried.proposal,
                    tried,
                    self.config.long_epochs,
                    "long",
                )
                finals.append(longer if longer is not None and longer.judged else tried)
        if self.config.quantize_results and any(k.name == "quantize" for k in kinds()):
            for tried in finals:
                self._quantize(tried)

        return self._finish()

    def help(self) -> int:
        """A helper's share of the recipe: the short rounds nobody else holds, each
        claimed, produced, measured and recorded; returns how many it produced."""
        self._measure_baseline()
        training = [(k, p) for k, p in self._proposals() if k.trains]
        store = self.ctx.candidate_store
        produced = 0
        for kind, proposal in training:
            self.ctx.check_cancelled()
            if time.monotonic() >= self.deadline:
                break
            key = self._key("short", proposal, None)
            if not store.claim(self.recipe, key):  # recorded, or another holds it
                continue
            if self._try(kind, proposal, None, self.config.short_epochs, "short") is not None:
                produced += 1
        return produced

    def _short_rounds(self, training: list[tuple[Kind, Proposal]]) -> list[Tried | None]:
        """Every training candidate's short round: here one after another, or with
        fan-out each either produced here (claimed) or taken from its helper's record."""
        epochs = self.config.short_epochs
        if not self.fan_out:
            return [self._try(kind, proposal, None, epochs, "short") for kind, proposal in training]
        store = self.ctx.candidate_store
        done: dict[int, Tried | None] = {}
        while True:
            for index, (kind, proposal) in enumerate(training):
                if index in done:
                    continue
                key = self._key("short", proposal, None)
                if key in self.memory.finished or store.claim(self.recipe, key):
                    done[index] = self._try(kind, proposal, None, epochs, "short")
            if len(done) == len(training):
                break
            self.ctx.check_cancelled()
            if time.monotonic() >= self.deadline:
                held = [p.name for i, (_, p) in enumerate(training) if i not in done]
                self.stopped_by = self.stopped_by or (
                    f"the time budget of {self.config.time_budget_s:g} s was spent while "
                    f"helpers still produced {', '.join(held)} (short)"
                )
                break
            time.sleep(SHARED_POLL_S)
            self.memory = store.begin(self.recipe)  # what the helpers recorded since
        return [done.get(index) for index in range(len(training))]

    def _key(self, stage: str, proposal: Proposal, base: Tried | None) -> str:
        return f"{stage}:{proposal.name}<{base.key if base is not None else ORIGINAL}"

    def _measure_baseline(self) -> None:
        self.ctx.report_step(0.0, "auto: measuring the original")
        baseline = self.measure(self.original)
        self.metric_name = baseline.metric_name
        self.criteria = Criteria(
            targets=self.kc.data.targets,
            baseline_metric=(
                baseline.reference_metric
                if baseline.reference_metric is not None
                else baseline.metric_value
            ),
            input_size_bytes=file_size(self.original),
            batch_sizes=tuple(lat.batch_size for lat in baseline.latency),
            allow_slower=self.kc.data.targets.allow_slower,
            tolerance=max(lat.tolerance for lat in baseline.latency),
        )

    def _proposals(self) -> list[tuple[Kind, Proposal]]:
        allowed: set[str] = (
            set(self.config.kinds) if self.config.kinds else {kind.name for kind in kinds()}
        )
        chosen: list[tuple[Kind, Proposal]] = []
        for kind in kinds():
            if kind.name not in allowed:
                continue
            try:
                proposals, why_not = kind.propose(self.kc)
            except JobCancelled:
                raise
            except EngineError as exc:
                proposals, why_not = [], f"{exc.code}: {exc.message}"
            if why_not:
                self.skipped[kind.name] = why_not
            chosen += [(kind, proposal) for proposal in proposals]
        return chosen

    def _quantize(self, tried: Tried) -> Tried | None:
        kind = get_kind("quantize")
        proposal = Proposal(
            f"{tried.proposal.name}+int8",
            kind.name,
            f"quantization of {tried.proposal.name} (every trained or rewritten survivor is "
            "quantized too)",
            {"base": tried.proposal.name},
        )
        return self._try(kind, proposal, tried, 0, "quantized")

    def _try(
        self, kind: Kind, proposal: Proposal, base: Tried | None, epochs: int, stage: str
    ) -> Tried | None:
        """Produce, measure and judge one candidate from `base` (None: the original), or
        take it as an earlier attempt recorded it; None once the budget is spent."""
        self.ctx.check_cancelled()
        key = self._key(stage, proposal, base)
        recorded = self.memory.finished.get(key)
        if recorded is not None:
            return self._resume(proposal, stage, key, recorded)
        if time.monotonic() >= self.deadline:
            self.stopped_by = self.stopped_by or (
                f"the time budget of {self.config.time_budget_s:g} s was spent before "
                f"{proposal.name} ({stage})"
            )
            return None
        number = len(self.tried)
        tried = Tried(number, proposal, stage, key=key)
        self.tried.append(tried)
        self.ctx.report_step(
            min(0.95, (time.monotonic() - self.started) / self.config.time_budget_s),
            f"auto: {proposal.name} ({stage})",
        )
        folder = self.ctx.work_dir / "candidates" / f"{number:02d}-{proposal.name}-{stage}"
        started = time.perf_counter()
        try:
            base_path = self.original if base is None else self._produced(base).path
            tried.produced = kind.produce(proposal, base_path, epochs, self.kc, folder)
            measurement = self.measure(tried.produced.path)
            tried.outcome = Outcome(
                Named(f"{proposal.name} ({stage})" if stage != "once" else proposal.name),
                "measured",
                path=tried.produced.path,
                measurement=measurement,
                judgement=judge(measurement, self.criteria),
                mode_details=tried.produced.details,
            )
        except JobCancelled:
            raise
        except EngineError as exc:
            tried.note = f"{exc.code}: {exc.message}"
        except Exception as exc:
            tried.note = f"failed: {short_reason(exc)}"
        tried.seconds = time.perf_counter() - started
        self._record(tried)
        self.ctx.report_step(
            min(0.95, (time.monotonic() - self.started) / self.config.time_budget_s),
            f"auto: {proposal.name} ({stage}) {'measured' if tried.judged else 'failed'}",
            candidate=self._row(tried),
        )
        return tried

    def _resume(
        self, proposal: Proposal, stage: str, key: str, recorded: FinishedCandidate
    ) -> Tried:
        """The candidate an earlier attempt or a helper finished, as it was measured
        (judged again by this attempt's criteria); its model stays in the store until it
        is needed."""
        tried = Tried(
            len(self.tried),
            proposal,
            stage,
            note=recorded.note,
            seconds=recorded.seconds,
            key=key,
            resumed=recorded,
        )
        self.tried.append(tried)
        if recorded.measurement is not None:
            measurement = measurement_of(recorded.measurement)
            tried.outcome = Outcome(
                Named(f"{proposal.name} ({stage})" if stage != "once" else proposal.name),
                "measured",
                measurement=measurement,
                judgement=judge(measurement, self.criteria),
                mode_details=recorded.details,
            )
        self.ctx.report_step(
            min(0.95, (time.monotonic() - self.started) / self.config.time_budget_s),
            f"auto: {proposal.name} ({stage}) "
            + (
                f"resumed from attempt {recorded.attempt}"
                if recorded.attempt < self.memory.attempt
                else f"measured by {recorded.by}"
            ),
            candidate=self._row(tried),
        )
        return tried

    def _produced(self, tried: Tried) -> Produced:
        """The candidate's model files, fetched from the store for a resumed one."""
        if tried.produced is None:
            assert tried.resumed is not None and tried.resumed.has_model
            folder = (
                self.ctx.work_dir / "candidates" / f"{tried.number:02d}-{tried.proposal.name}"
                f"-{tried.stage}-resumed"
            )
            fetched = self.ctx.candidate_store.fetch(self.recipe, tried.key, folder)
            tried.produced = Produced(fetched.path, tried.resumed.details, fetched.float_path)
        return tried.produced

    def _record(self, tried: Tried) -> None:
        """Keep the finished candidate for a later attempt; a store that fails costs the
        resume, never the job."""
        measurement = tried.outcome.measurement if tried.outcome is not None else None
        produced = tried.produced if measurement is not None else None
        candidate = FinishedCandidate(
            key=tried.key,
            attempt=self.memory.attempt,
            seconds=tried.seconds,
            measurement=dataclasses.asdict(measurement) if measurement is not None else None,
            details=_json_safe(produced.details) if produced is not None else {},
            note=tried.note,
            has_model=produced is not None,
            has_float_model=produced is not None and produced.float_path is not None,
            by=self.ctx.candidate_store.holder(),
        )
        try:
            self.ctx.candidate_store.record(
                self.recipe,
                candidate,
                model=produced.path if produced is not None else None,
                float_model=produced.float_path if produced is not None else None,
            )
        except JobCancelled:
            raise
        except Exception:
            log.warning("candidate %s was not recorded for a resume", tried.key, exc_info=True)

    def _rank(self, tried: Tried) -> tuple[object, ...]:
        """Successive halving's order: the metric target first, then the goal (speed, or
        size for a size goal), then the metric."""
        assert tried.outcome is not None and tried.outcome.judgement is not None
        judgement = tried.outcome.judgement
        measurement = tried.outcome.measurement
        assert measurement is not None
        goal = measurement.size_bytes if self.config.goal.wants_size else judgement.latency_ratio
        return (not judgement.metric_ok, judgement.metric_excess, goal, -judgement.metric_change)

    # --- the result --------------------------------------------------------------------------

    def _decide(self) -> tuple[Tried | None, str]:
        judged = [t for t in self.tried if t.judged]
        if not judged:
            return None, "no candidate could be produced and measured"
        outcomes = [t.outcome for t in judged if t.outcome is not None]
        if self.config.goal.wants_size:
            meeting = [
                t
                for t in judged
                if t.outcome is not None
                and t.outcome.judgement is not None
                and t.outcome.judgement.targets_ok
                and (self.criteria.allow_slower or not t.outcome.judgement.slower)
            ]
            if meeting:
                best = min(meeting, key=_size)
                return best, (
                    f"{best.proposal.name} ({best.stage}) meets every target and is the smallest"
                )
        decision: Decision = choose(outcomes, self.criteria)
        if decision.chosen is None:
            return None, decision.reason
        chosen_outcome = outcomes[decision.chosen]
        return next(t for t in judged if t.outcome is chosen_outcome), decision.reason

    def _finish(self) -> StepOutput:
        chosen, reason = self._decide()
        output = self.ctx.work_dir / "model.onnx"
        if chosen is None or (chosen.produced is None and chosen.resumed is None):
            shutil.copyfile(self.original, output)
            float_path = self.original
        else:
            assert chosen.outcome is not None
            chosen.outcome.chosen = True
            produced = self._produced(chosen)
            shutil.copyfile(produced.path, output)
            float_path = produced.float_path or produced.path
        details = self._details(chosen, reason)
        pareto = self.ctx.work_dir / "pareto.json"
        pareto.write_text(json.dumps({"trials": details["trials"], "front": details["front"]}))
        unchanged = f"auto kept the original: {reason}" if chosen is None else None
        return StepOutput(
            model_path=output,
            details=details,
            artifacts={"pareto.json": pareto},
            unchanged_reason=unchanged,
            float_model_path=float_path,
        )

    def _details(self, chosen: Tried | None, reason: str) -> dict[str, Any]:
        judged = [t for t in self.tried if t.judged]
        points = [
            Point(
                str(t.number),
                t.outcome.measurement.metric_value,  # type: ignore[union-attr]
                {
                    "latency_ms": t.outcome.measurement.latency[-1].median_ms,  # type: ignore[union-attr]
                    "size_bytes": float(t.outcome.measurement.size_bytes),  # type: ignore[union-attr]
                },
            )
            for t in judged
        ]
        front = [int(name) for name in pareto_front(points)]
        spent = time.monotonic() - self.started
        details: dict[str, Any] = {
            "mode": "auto",
            "goal": self.config.goal.model_dump(exclude_defaults=True),
            "batch_sizes": list(self.criteria.batch_sizes),
            "metric_baseline": self.criteria.baseline_metric,
            "training_source": self.kc.training_source,
            "skipped_kinds": self.skipped,
            "candidates": [self._input_row()] + [self._row(t) for t in self.tried],
            "chosen": (
                chosen.outcome.candidate.name
                if chosen is not None and chosen.outcome is not None
                else "input"
            ),
            "chosen_reason": reason,
            "metric_name": self.metric_name,
            "objective": {"kind": "pareto", "costs": ["latency_ms", "size_bytes"]},
            "trials": [
                {
                    "number": int(point.name),
                    "state": "complete",
                    "metric": point.metric,
                    "costs": dict(point.costs),
                }
                for point in points
            ],
            "front": front,
            "resumed": [
                f"{self._row(t)['name']}: resumed from attempt {t.resumed.attempt}"
                for t in self.tried
                if t.resumed is not None and t.resumed.attempt < self.memory.attempt
            ],
            "fan_out": {
                "parallel_workers": self.config.parallel_workers if self.fan_out else 1,
                "by_helpers": [
                    self._row(t)["name"]
                    for t in self.tried
                    if t.resumed is not None and t.resumed.by is not None
                ],
                **({"note": self.fan_out_note} if self.fan_out_note else {}),
            },
            "budget": {
                "time_budget_s": self.config.time_budget_s,
                "spent_s": round(spent, 1),
                "candidates": len(self.tried),
                "stopped_by": self.stopped_by,
            },
        }
        if chosen is not None:
            details["chosen_trial"] = chosen.number
            details["chosen_details"] = chosen.produced.details if chosen.produced else {}
        if self.training_note:
            details["notes"] = [self.training_note]
        return details

    def _input_row(self) -> dict[str, Any]:
        return {"name": "input", "status": "measured", "kind": "original", "chosen": False}

    def _row(self, tried: Tried) -> dict[str, Any]:
        row: dict[str, Any] = {
            "number": tried.number,
            "name": tried.outcome.candidate.name if tried.outcome else tried.proposal.name,
            "kind": tried.proposal.kind,
            "stage": tried.stage,
            "why": tried.proposal.why,
            "seconds": round(tried.seconds, 2),
            "status": "measured" if tried.judged else "failed",
            "chosen": bool(tried.outcome and tried.outcome.chosen),
        }
        if tried.note:
            row["note"] = tried.note
        if tried.resumed is not None and tried.resumed.attempt < self.memory.attempt:
            row["resumed_from_attempt"] = tried.resumed.attempt
        by = tried.resumed.by if tried.resumed is not None else self.ctx.candidate_store.holder()
        if by is not None:
            row["by"] = by
        if tried.outcome is not None and tried.outcome.measurement is not None:
            m, j = tried.outcome.measurement, tried.outcome.judgement
            assert j is not None
            row |= {
                "size_bytes": m.size_bytes,
                "size_ratio": m.size_bytes / max(self.criteria.input_size_bytes, 1),
                "metric_name": m.metric_name,
                "metric_value": m.metric_value,
                "metric_drop": j.metric_drop,
                "latency_ratio": j.latency_ratio,
                "latency": [
                    {
                        "batch_size": lat.batch_size,
                        "median_ms": lat.median_ms,
                        "input_median_ms": lat.baseline_median_ms,
                        "ratio": lat.ratio,
                        "slower": lat.slower,
                    }
                    for lat in m.latency
                ],
                "met": dict(j.met),
            }
        return row


def measurement_of(data: dict[str, Any]) -> Measurement:
    """A Measurement from its JSON (dataclasses.asdict of one)."""
    return Measurement(
        size_bytes=int(data["size_bytes"]),
        metric_name=data["metric_name"],
        metric_value=float(data["metric_value"]),
        latency=tuple(SpeedComparison(**latency) for latency in data["latency"]),
        reference_metric=data.get("reference_metric"),
    )


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result


def _size(tried: Tried) -> int:
    assert tried.outcome is not None and tried.outcome.measurement is not None
    return tried.outcome.measurement.size_bytes


def _training_source(
    data: StepData,
) -> tuple[str | None, Any, str | None]:
    """What the kinds that train use: the training data, else the calibration data (the
    teacher needs no labels); and a note when that means the eval data's selection rows."""
    task = data.task
    if (
        any(
            not task.binding(name).splits_samples or task.binding(name).sample_axis
            for name in task.inputs
        )
        or task.output_sample_axis
    ):
        return (
            None,
            None,
            (
                "the kinds that train were skipped: PyTorch steps do not yet take inputs with "
                "other sample axes, arrays fed whole or constants (task.inputs), nor outputs "
                "read on another axis"
            ),
        )
    if data.train_arrays is not None:
        return "training data", data.train_arrays, None
    if data.calibration_arrays is data.eval_arrays:
        return (
            "calibration data (the eval data's selection rows)",
            data.calibration_arrays,
            "no training or calibration data was given: the kinds that train learned from "
            "the eval data's selection rows, which also chose among them (the held-out "
            "verdict is not affected); give training data for an independent choice",
        )
    return "calibration data", data.calibration_arrays, None
