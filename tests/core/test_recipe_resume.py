"""The auto recipe resumes: every finished candidate is recorded in the context's
candidate store as soon as it is measured, and a new attempt takes the recorded ones as
they were (never producing or measuring them again), fetches a recorded model only when
it is chosen or the base of a later stage, says which candidates it resumed, and counts
its time budget from the first attempt."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import core.recipe.kinds as recipe_kinds
from core.candidates import MemoryCandidateStore
from core.context import MeasureSettings, RunContext
from core.pipeline import run
from core.recipe.kinds import KindContext, Produced, Proposal
from core.spec import JobSpec

FAST = MeasureSettings(threads=1, warmup_runs=1, runs=3)


class WorkerDied(BaseException):
    """Stands for the worker's death: nothing in the recipe catches it."""


class FakeKind:
    """A kind whose candidates are copies of their base; it counts what it produced and
    can die on a given call (the attempt's worker is gone)."""

    def __init__(self, name: str, cost: int, proposals: list[str], calls: Counter[str]) -> None:
        self.name = name
        self.cost = cost
        self.trains = cost == 2
        self.proposals = proposals
        self.calls = calls
        self.die_at: int | None = None  # the recipe's produce call (all kinds) to die on

    def propose(self, kc: KindContext) -> tuple[list[Proposal], str | None]:
        return [Proposal(name, self.name, "a fake") for name in self.proposals], None

    def produce(
        self, proposal: Proposal, base: Path, epochs: int, kc: KindContext, work_dir: Path
    ) -> Produced:
        if self.die_at is not None and sum(self.calls.values()) + 1 == self.die_at:
            raise WorkerDied()
        self.calls[f"{proposal.name}/{epochs}"] += 1
        work_dir.mkdir(parents=True, exist_ok=True)
        path = Path(shutil.copyfile(base, work_dir / "model.onnx"))
        return Produced(
            path,
            {"base_bytes": base.stat().st_size},
            float_path=base if self.name == "quantize" else None,
        )


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Fake graph, quantize and prune_distill kinds in the registry for the test."""
    recipe_kinds.kinds()  # the real ones are registered first, then replaced
    counter: Counter[str] = Counter()
    fakes = {
        "graph": FakeKind("graph", 0, ["graph-fold"], counter),
        "quantize": FakeKind("quantize", 1, ["quantize-auto"], counter),
        "prune_distill": FakeKind("prune_distill", 2, ["prune-30", "prune-60"], counter),
    }
    for name, fake in fakes.items():
        monkeypatch.setitem(recipe_kinds._KINDS, name, fake)
    yield counter


def recipe_job(**step: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model_id": "m",
            "eval_dataset_id": "eval",
            "train_dataset_id": "train",
            "steps": [
                {
                    "method": "auto",
                    "kinds": ["graph", "quantize", "prune_distill"],
                    "short_epochs": 1,
                    "long_epochs": 3,
                    "keep": 0.5,
                    **step,
                }
            ],
            "batch_size": 8,
            "targets": {"max_metric_drop": 0.03, "allow_slower": True},
        }
    )


def run_attempt(
    model: Path, data: dict[str, Path], spec: JobSpec, store: MemoryCandidateStore, work: Path
) -> dict[str, Any]:
    result, _ = run(
        model, data, spec, RunContext(work_dir=work, measure=FAST, candidate_store=store)
    )
    details: dict[str, Any] = result.steps[0].details
    return details


# graph, quantize, graph+int8, two short rounds, the survivor's long round, its int8
EVERY_CANDIDATE = 7


def test_a_new_attempt_takes_the_finished_candidates_and_produces_only_the_rest(
    calls: Counter[str],
    cnn_onnx: Path,
    digits_test_npz: Path,
    digits_train_npz: Path,
    tmp_path: Path,
) -> None:
    data = {"eval": digits_test_npz, "train": digits_train_npz}
    spec = recipe_job()
    store = MemoryCandidateStore(tmp_path / "kept")
    prune = recipe_kinds._KINDS["prune_distill"]
    assert isinstance(prune, FakeKind)
    prune.die_at = 5  # the second short round: four candidates finished
    with pytest.raises(WorkerDied):
        run_attempt(cnn_onnx, data, spec, store, tmp_path / "attempt-1")
    [recipe] = store.finished
    recorded = store.finished[recipe]
    assert len(recorded) == 4 and all(c.attempt == 1 for c in recorded.values())
    assert calls == Counter(
        {"graph-fold/0": 1, "quantize-auto/0": 1, "graph-fold+int8/0": 1, "prune-30/1": 1}
    )

    prune.die_at = None
    calls.clear()
    store.attempt = 2
    details = run_attempt(cnn_onnx, data, spec, store, tmp_path / "attempt-2")

    rows = [row for row in details["candidates"] if row["name"] != "input"]
    assert len(rows) == EVERY_CANDIDATE
    # only what attempt 1 did not finish was produced: the second short round, the long
    # round and its quantization
    assert sum(calls.values()) == EVERY_CANDIDATE - 4
    assert calls["graph-fold/0"] == 0 and calls["prune-30/1"] == 0
    resumed = [row for row in rows if row.get("resumed_from_attempt") == 1]
    assert [(row["kind"], row["stage"]) for row in resumed] == [
        ("graph", "once"),
        ("quantize", "once"),
        ("quantize", "quantized"),
        ("prune_distill", "short"),
    ]
    assert all(row["status"] == "measured" and "metric_value" in row for row in resumed)
    assert len(details["resumed"]) == 4
    assert all(line.endswith("resumed from attempt 1") for line in details["resumed"])
    # the new candidates are recorded too, by attempt 2
    assert len(store.finished[recipe]) == EVERY_CANDIDATE
    assert {c.attempt for c in store.finished[recipe].values()} == {1, 2}


def test_a_resumed_model_is_fetched_only_when_it_is_the_result(
    calls: Counter[str],
    cnn_onnx: Path,
    digits_test_npz: Path,
    digits_train_npz: Path,
    tmp_path: Path,
) -> None:
    data = {"eval": digits_test_npz, "train": digits_train_npz}
    spec = recipe_job(long_epochs=0, quantize_results=False)
    store = MemoryCandidateStore(tmp_path / "kept")
    run_attempt(cnn_onnx, data, spec, store, tmp_path / "attempt-1")
    first = sum(calls.values())
    store.attempt = 2
    details = run_attempt(cnn_onnx, data, spec, store, tmp_path / "attempt-2")
    assert sum(calls.values()) == first  # nothing produced again
    rows = [row for row in details["candidates"] if row["name"] != "input"]
    assert all(row["resumed_from_attempt"] == 1 for row in rows)
    [chosen] = [row for row in rows if row["chosen"]]
    # every candidate was resumed, so no base is needed: only the chosen candidate's
    # model is fetched, for the step's output
    [fetched] = store.fetched
    assert fetched.startswith(f"{chosen['stage']}:{chosen['name'].split(' ')[0]}<")


def test_the_time_budget_counts_from_the_first_attempt(
    calls: Counter[str],
    cnn_onnx: Path,
    digits_test_npz: Path,
    digits_train_npz: Path,
    tmp_path: Path,
) -> None:
    data = {"eval": digits_test_npz, "train": digits_train_npz}
    spec = recipe_job(time_budget_s=600)
    store = MemoryCandidateStore(tmp_path / "kept")
    [step] = spec.steps
    from core.candidates import recipe_name

    # the first attempt began 601 s ago and finished nothing
    store.started[recipe_name(step.model_dump_json(), cnn_onnx)] = time.time() - 601
    store.attempt = 2
    details = run_attempt(cnn_onnx, data, spec, store, tmp_path / "attempt-2")
    assert sum(calls.values()) == 0
    assert "time budget of 600 s" in details["budget"]["stopped_by"]
    assert details["budget"]["spent_s"] >= 600
