"""The search step on digits with tiny spaces: each algorithm, limits, the teacher,
resuming a stored study, and a trial whose worker died."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch

from core.context import MeasureSettings, RunContext, SearchStore
from core.errors import JobCancelled, StepFailed
from core.families import MlpFamily
from core.formats import inspect_model
from core.registry import StepData, StepOutput, get_step
from core.search import storage as search_storage
from core.search.cost import onnx_macs
from core.search.session import Session
from core.search.space import distributions, narrow
from core.search.study import open_study, storage_of, study_name
from core.spec import SearchStep, TaskSpec
from tests.factories import digits_arrays

TRAIN_IMAGES, TRAIN_LABELS = (a[:240] for a in digits_arrays("train"))
EVAL_IMAGES, EVAL_LABELS = (a[:96] for a in digits_arrays("test"))
# one hidden layer of 16..32 units: trials of a fraction of a second
TINY_MLP: dict[str, Any] = {
    "family": "mlp",
    "space": {"layers": 1, "units": {"low": 16, "high": 32}, "activation": ["relu", "tanh"]},
    "epochs": 1,
    "learning_rate": 0.01,
    "batch_size": 32,
}
Events = list[tuple[float, str, dict[str, Any]]]
FAST = MeasureSettings(threads=1, warmup_runs=1, runs=5)


def digits_data(model: Path) -> StepData:
    return StepData(
        eval_arrays={"input": EVAL_IMAGES, "label": EVAL_LABELS},
        calibration_arrays={"input": EVAL_IMAGES},
        inputs=inspect_model(model).inputs,
        task=TaskSpec(),
        train_arrays={"input": TRAIN_IMAGES, "label": TRAIN_LABELS},
        original_model_path=model,
    )


def context(work_dir: Path, events: Events, **fields: Any) -> RunContext:
    return RunContext(
        work_dir=work_dir,
        measure=FAST,
        on_progress=lambda p, m, d: events.append((p, m, d)),
        **fields,
    )


def sqlite_store(tmp_path: Path) -> SearchStore:
    return SearchStore(
        url=f"sqlite:///{tmp_path / 'search.db'}", study_prefix="job", heartbeat_s=1, grace_s=1
    )


def run_search(model: Path, ctx: RunContext, **fields: Any) -> StepOutput:
    config = SearchStep.model_validate({"method": "search", **fields})
    return get_step("search")(model, config, digits_data(model), ctx)


def trial_events(events: Events) -> list[dict[str, Any]]:
    return [data["trial"] for _, _, data in events if "trial" in data]


@pytest.mark.parametrize(
    ("algorithm", "sampler"),
    [
        ("random", "RandomSampler"),
        ("evolution", "RegularizedEvolutionSampler"),
        ("tpe", "TPESampler"),
        ("nsga2", "NSGAIISampler"),
    ],
)
def test_each_algorithm_runs_its_trials_and_returns_the_chosen_model(
    algorithm: str, sampler: str, cnn_onnx: Path, tmp_path: Path
) -> None:
    events: Events = []
    # evolution with a population of 2: the third trial is a mutant of the best two
    extra = {"population_size": 2} if algorithm == "evolution" else {}
    output = run_search(
        cnn_onnx,
        context(tmp_path, events),
        **TINY_MLP,
        algorithm=algorithm,
        max_trials=3,
        pruner="none",
        **extra,
    )

    details = output.details
    assert details["sampler"] == sampler
    assert details["budget"]["finished_trials"] == 3
    reported = trial_events(events)
    assert [t["number"] for t in reported] == [0, 1, 2]
    for entry in reported:
        assert entry["state"] == "complete"
        assert set(entry["params"]) == {"layers", "units", "activation", "dropout"}
        assert 0.0 <= entry["metric"] <= 1.0 and entry["train_s"] > 0 and entry["duration_s"] > 0
        assert entry["costs"]["latency_ms"] > 0 and entry["costs"]["parameters"] > 0
        assert entry["worker"]
    if algorithm == "evolution":
        parents = reported[:2]
        child = reported[2]["params"]
        changed = [sum(p["params"][k] != child[k] for k in child) for p in parents]
        assert 1 in changed  # one parameter of a parent drawn again

    chosen = details["chosen"]
    assert chosen["trial"] in details["front"] or details["objective"]["kind"] != "pareto"
    assert chosen["weights"] == "trained by the trial"
    session = ort.InferenceSession(str(output.model_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": EVAL_IMAGES[:5]})
    assert logits.shape == (5, 10)
    assert sorted(output.artifacts) == ["pareto.json", "pareto.png"]
    assert output.artifacts["pareto.png"].read_bytes()[:4] == b"\x89PNG"


def test_a_trial_over_a_hard_limit_is_pruned_without_training(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    events: Events = []
    with pytest.raises(StepFailed, match="no search trial completed"):
        run_search(
            cnn_onnx,
            context(tmp_path, events),
            **TINY_MLP,
            algorithm="random",
            max_trials=2,
            objective={"kind": "constrained", "max_params": 10},
        )
    reported = trial_events(events)
    assert [t["state"] for t in reported] == ["pruned", "pruned"]
    for entry in reported:
        assert entry["note"].startswith("infeasible, not trained: parameters")
        assert entry["train_s"] is None and entry["metric"] is None


def test_a_teacher_guided_cnn_search_normalises_its_cost_by_the_original(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    events: Events = []
    output = run_search(
        cnn_onnx,
        context(tmp_path, events),
        family="cnn",
        space={"blocks": 1, "width": {"low": 4, "high": 8}, "kernel_size": [3]},
        epochs=1,
        max_trials=2,
        algorithm="random",
        teacher=True,
        objective={"kind": "weighted", "beta": 0.5, "cost": "macs"},
    )
    details = output.details
    assert details["teacher"] is True and details["family"] == "cnn"
    reference = details["objective"]["cost_reference"]
    assert reference["macs"] == onnx_macs(cnn_onnx) and reference["macs_of"] == "the original model"
    for entry in trial_events(events):
        expected = entry["metric"] - 0.5 * entry["costs"]["macs"] / reference["macs"]
        assert entry["objective_values"] == [pytest.approx(expected)]
        assert entry["architecture"]["family"] == "cnn" and entry["architecture"]["blocks"] == 1


def test_a_resumed_search_runs_only_the_trials_that_remain(cnn_onnx: Path, tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    fields = {**TINY_MLP, "algorithm": "random", "max_trials": 3, "pruner": "none"}
    first: Events = []

    def killed_after_two_trials() -> bool:
        return len(trial_events(first)) >= 2

    with pytest.raises(JobCancelled):
        run_search(
            cnn_onnx,
            context(
                tmp_path / "attempt-1",
                first,
                search_store=store,
                is_cancelled=killed_after_two_trials,
            ),
            **fields,
        )
    second: Events = []
    output = run_search(
        cnn_onnx, context(tmp_path / "attempt-2", second, search_store=store), **fields
    )

    study = output.details["study"]
    assert study["trials_stored_before"] == 2 and study["trials_run_here"] == 1
    assert output.details["budget"]["finished_trials"] == 3
    done_before = {t["number"]: t["params"] for t in trial_events(first)}
    rerun = [t["number"] for t in trial_events(second)]
    assert not set(rerun) & set(done_before)
    stored = {
        t["number"]: t["params"] for t in output.details["trials"] if t["state"] == "complete"
    }
    assert all(stored[number] == params for number, params in done_before.items())


ORPHAN_SEARCH = {**TINY_MLP, "algorithm": "random", "max_trials": 2, "pruner": "none"}


def orphan_trial(cnn_onnx: Path, tmp_path: Path, *, beaten: bool) -> tuple[SearchStore, Any]:
    """A trial left RUNNING in a stored study by a worker that "died" a grace period ago,
    after one heartbeat (`beaten`) or before its first."""
    store = sqlite_store(tmp_path)
    config = SearchStep.model_validate({"method": "search", **ORPHAN_SEARCH})
    space = distributions(narrow(MlpFamily, config.space))
    storage = storage_of(store)
    assert storage is not None
    probe = Session.prepare(
        config, digits_data(cnn_onnx), cnn_onnx, RunContext(tmp_path / "probe"), role=0
    )
    study = open_study(
        storage, study_name(store, config), probe.directions, probe.sampler(0), probe.pruner()
    )
    with warnings.catch_warnings():  # Optuna wants heartbeats used through optimize()
        warnings.simplefilter("ignore", UserWarning)
        orphan = study.ask(fixed_distributions=space)
    if beaten:
        storage.record_heartbeat(orphan._trial_id)  # type: ignore[attr-defined]
    time.sleep(store.grace_s + 1.0)  # its worker "died": no heartbeat since
    return store, orphan


def assert_run_again(output: StepOutput, orphan: Any) -> None:
    trials = {t["number"]: t for t in output.details["trials"]}
    assert trials[orphan.number]["state"] == "fail"
    retried = [
        t for t in trials.values() if t["state"] == "complete" and t["params"] == orphan.params
    ]
    assert retried, (orphan.params, trials)
    assert output.details["budget"]["finished_trials"] == 2


def test_a_trial_left_running_by_a_dead_worker_is_run_again_with_its_architecture(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    store, orphan = orphan_trial(cnn_onnx, tmp_path, beaten=True)

    events: Events = []
    ctx = context(tmp_path / "run", events, search_store=store)
    assert_run_again(run_search(cnn_onnx, ctx, **ORPHAN_SEARCH), orphan)


def test_trial_events_carry_what_the_issue_asks_for(cnn_onnx: Path, tmp_path: Path) -> None:
    events: Events = []
    run_search(cnn_onnx, context(tmp_path, events), **TINY_MLP, algorithm="random", max_trials=1)
    [entry] = trial_events(events)
    for key in (
        "number",
        "params",
        "architecture",
        "metric",
        "costs",
        "train_s",
        "duration_s",
        "state",
    ):
        assert entry[key] is not None, key
    assert np.isfinite(entry["metric"])


def test_a_trial_past_its_time_limit_is_stopped_and_counted_as_pruned(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    events: Events = []
    fields = {**TINY_MLP, "epochs": 50, "max_trial_s": 0.01}
    with pytest.raises(StepFailed, match="no search trial completed"):
        run_search(cnn_onnx, context(tmp_path, events), **fields, algorithm="random", max_trials=2)
    reported = trial_events(events)
    assert [t["state"] for t in reported] == ["pruned", "pruned"]
    assert all(t["note"].startswith("stopped at its time limit after") for t in reported)
    assert all(len(t["epoch_metrics"]) < 50 for t in reported)


def test_auto_picks_the_transformer_family_for_sequences_and_its_trials_export(
    tmp_path: Path,
) -> None:
    from service.examples import TransformerEncoderClassifier, digits_sequences, export_onnx

    x_train, y_train = (a[:160] for a in digits_sequences("train"))
    x_test, y_test = (a[:64] for a in digits_sequences("test"))
    torch.manual_seed(0)
    original = TransformerEncoderClassifier(d_model=16, heads=2, layers=1, ff=32).eval()
    model = export_onnx(original, x_test[:1], tmp_path / "encoder.onnx")
    data = StepData(
        eval_arrays={"input": x_test, "label": y_test},
        calibration_arrays={"input": x_test},
        inputs=inspect_model(model).inputs,
        task=TaskSpec(),
        train_arrays={"input": x_train, "label": y_train},
        original_model_path=model,
    )
    config = SearchStep.model_validate(
        {"method": "search", "max_trials": 1, "epochs": 1, "algorithm": "random"}
    )
    events: Events = []
    output = get_step("search")(model, config, data, context(tmp_path / "search", events))

    assert output.details["family"] == "transformer"
    assert output.details["family_chosen_by"] == "input rank"
    [entry] = trial_events(events)
    architecture = entry["architecture"]
    assert architecture["hidden"] % architecture["heads"] == 0
    assert entry["costs"]["macs"] > 0
    session = ort.InferenceSession(str(output.model_path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": x_test[:3]})[0].shape == (3, 10)


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_run_again(
    cnn_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Optuna alone never fails a running trial without a heartbeat: the search waited
    # for it until its time budget ran out
    monkeypatch.setattr(search_storage, "SILENT_START_S", 0.5)
    store, orphan = orphan_trial(cnn_onnx, tmp_path, beaten=False)

    events: Events = []
    ctx = context(tmp_path / "run", events, search_store=store)
    assert_run_again(run_search(cnn_onnx, ctx, **ORPHAN_SEARCH), orphan)


def test_a_just_asked_trial_without_a_heartbeat_yet_is_not_stale(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    storage = storage_of(store)
    assert isinstance(storage, search_storage.HeartbeatStorage)
    study = optuna.create_study(storage=storage, study_name="fresh")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fresh = study.ask()

    assert storage.never_beaten_trial_ids(study._study_id) == []  # within grace + slack
    storage.silent_start_s = -float(store.grace_s) - 60  # as if it started a minute ago
    assert storage.never_beaten_trial_ids(study._study_id) == [fresh._trial_id]
    storage.record_heartbeat(fresh._trial_id)  # beaten: Optuna's own rule applies
    assert storage.never_beaten_trial_ids(study._study_id) == []
