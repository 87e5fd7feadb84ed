"""An auto recipe fanned out (`parallel_workers`): helpers produce the short rounds that
nobody else claimed, the runner produces the rest and takes the helpers' as they were
recorded, each short round is produced once, and a helper that dies holding a claim
leaves its candidate to whoever takes the lapsed claim over."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import core.recipe.kinds as recipe_kinds
from core.candidates import MemoryCandidateStore
from core.context import RunContext
from core.pipeline import run
from core.recipe.helper import join_recipe
from core.spec import JobSpec
from tests.core.test_recipe_resume import FAST, FakeKind, WorkerDied, recipe_job

SHORTS = ["prune-30", "prune-50", "prune-70"]


class ProducedBy(FakeKind):
    """A fake kind that also says which thread (runner or helper) produced what."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.by: Counter[tuple[str, str]] = Counter()
        self.die_in: str | None = None  # the thread whose first produce dies

    def produce(self, proposal: Any, base: Path, epochs: int, kc: Any, work_dir: Path) -> Any:
        thread = threading.current_thread().name
        if thread == self.die_in:
            self.die_in = None
            raise WorkerDied()
        produced = super().produce(proposal, base, epochs, kc, work_dir)
        self.by[(proposal.name, thread)] += 1
        return produced


@pytest.fixture
def prune(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProducedBy]:
    recipe_kinds.kinds()
    counter: Counter[str] = Counter()
    fake = ProducedBy("prune_distill", 2, SHORTS, counter)
    monkeypatch.setitem(recipe_kinds._KINDS, "graph", FakeKind("graph", 0, ["graph-fold"], counter))
    monkeypatch.setitem(
        recipe_kinds._KINDS, "quantize", FakeKind("quantize", 1, ["quantize-auto"], counter)
    )
    monkeypatch.setitem(recipe_kinds._KINDS, "prune_distill", fake)
    yield fake


class RunnerAfterHelper(MemoryCandidateStore):
    """The runner's handle: it claims nothing before the helper claimed its first short
    round, so that the helper's share does not depend on who started faster."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.helper_claimed = threading.Event()

    def claim(self, recipe: str, key: str) -> bool:
        if key.startswith("short:") and self.name is None:
            assert self.helper_claimed.wait(120), "the helper never claimed"
        claimed = super().claim(recipe, key)
        if self.name is not None and claimed:
            self.helper_claimed.set()
        return claimed


def fanned_out_run(
    model: Path, data: dict[str, Path], spec: JobSpec, tmp_path: Path
) -> tuple[dict[str, Any], list[tuple[str, int]], RunnerAfterHelper]:
    store = RunnerAfterHelper(tmp_path / "kept")
    helper_store = store.sharing("helper-1")
    asked: list[tuple[str, int]] = []
    threads: list[threading.Thread] = []

    def helper(name: str) -> None:
        ctx = RunContext(work_dir=tmp_path / "helper", measure=FAST, candidate_store=helper_store)
        try:
            join_recipe(model, data, spec, name, ctx)
        except WorkerDied:
            helper_store.drop_claims("helper-1")  # its lease lapses: the claim is free

    def request_helpers(name: str, count: int) -> None:
        asked.append((name, count))
        thread = threading.Thread(target=helper, args=(name,), name="helper")
        thread.start()
        threads.append(thread)

    ctx = RunContext(
        work_dir=tmp_path / "runner",
        measure=FAST,
        candidate_store=store,
        request_helpers=request_helpers,
    )
    result, _ = run(model, data, spec, ctx)
    for thread in threads:
        thread.join(120)
    return result.steps[0].details, asked, store


def test_helpers_produce_the_short_rounds_nobody_claimed_and_the_runner_takes_them(
    prune: ProducedBy, cnn_onnx: Path, digits_test_npz: Path, digits_train_npz: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    data = {"eval": digits_test_npz, "train": digits_train_npz}
    spec = recipe_job(parallel_workers=2, long_epochs=0, quantize_results=False)

    details, asked, store = fanned_out_run(cnn_onnx, data, spec, tmp_path)

    [(name, count)] = asked
    assert name.startswith("auto-") and count == 1
    # every short round produced exactly once, by one of the two
    assert Counter(name for name, _ in prune.by.elements()) == Counter(SHORTS)
    by_helper = sorted(name for (name, thread) in prune.by if thread == "helper")
    assert by_helper and by_helper[0] == "prune-30"  # the helper's first claim
    rows = {row["name"]: row for row in details["candidates"] if row.get("stage") == "short"}
    assert sorted(rows) == sorted(f"{name} (short)" for name in SHORTS)
    assert (
        sorted(
            name.removesuffix(" (short)")
            for name, row in rows.items()
            if row.get("by") == "helper-1"
        )
        == by_helper
    )
    assert all(row["status"] == "measured" and "metric_value" in row for row in rows.values())
    assert sorted(details["fan_out"]["by_helpers"]) == sorted(f"{n} (short)" for n in by_helper)
    assert details["fan_out"]["parallel_workers"] == 2
    assert details["resumed"] == []  # the same attempt: nothing was resumed
    [recipe] = store.finished
    assert {c.by for c in store.finished[recipe].values()} == {None, "helper-1"}


def test_a_helper_that_dies_holding_a_claim_leaves_it_to_the_runner(
    prune: ProducedBy, cnn_onnx: Path, digits_test_npz: Path, digits_train_npz: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    data = {"eval": digits_test_npz, "train": digits_train_npz}
    spec = recipe_job(parallel_workers=2, long_epochs=0, quantize_results=False)
    prune.die_in = "helper"  # dies producing the round it claimed first

    details, _, _ = fanned_out_run(cnn_onnx, data, spec, tmp_path)

    assert Counter(name for name, _ in prune.by.elements()) == Counter(SHORTS)
    assert all(thread == "MainThread" for _, thread in prune.by)
    rows = [row for row in details["candidates"] if row.get("stage") == "short"]
    assert len(rows) == len(SHORTS) and all(row["status"] == "measured" for row in rows)
    assert details["fan_out"]["by_helpers"] == []


def test_a_recipe_that_is_not_the_first_step_runs_alone_and_says_so(
    prune: ProducedBy, cnn_onnx: Path, digits_test_npz: Path, digits_train_npz: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    data = {"eval": digits_test_npz, "train": digits_train_npz}
    spec = recipe_job(parallel_workers=2, long_epochs=0, quantize_results=False)
    spec = spec.model_copy(
        update={"steps": [JobSpec.model_validate({**spec.model_dump(), "steps": [
            {"method": "quantize", "mode": "fp16"}]}).steps[0], *spec.steps]}
    )  # fmt: skip
    asked: list[tuple[str, int]] = []
    ctx = RunContext(
        work_dir=tmp_path / "runner",
        measure=FAST,
        candidate_store=MemoryCandidateStore(tmp_path / "kept"),
        request_helpers=lambda name, count: asked.append((name, count)),
    )
    result, _ = run(cnn_onnx, data, spec, ctx)
    details = result.steps[1].details
    assert asked == []
    assert details["fan_out"]["parallel_workers"] == 1
    assert "first step" in details["fan_out"]["note"]
    assert Counter(name for name, _ in prune.by.elements()) == Counter(SHORTS)
