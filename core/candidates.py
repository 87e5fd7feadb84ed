"""Where the auto recipe keeps its finished candidates, so that a new attempt of a job
whose worker died resumes the recipe instead of starting it again.

The same store lets helpers on other workers share a recipe's candidates that train
(AutoStep.parallel_workers): whoever `claim`s a candidate produces it, the claim lasts
while its holder's process lives (the worker renews it) and lapses when it dies, and
everyone reads the others' results from the store.

The engine only sees this interface (RunContext.candidate_store); the worker gives it one
backed by the job's database and blob store (worker.recipe_candidates), direct engine use
gets `NoCandidateStore` (nothing kept) and tests `MemoryCandidateStore`. A recipe is named
by a digest of its step's config and its input model (`recipe_name`): an attempt whose
earlier steps produced another input starts afresh.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class FinishedCandidate:
    """A candidate as it was recorded once measured (or once it failed).

    `key` is its stage, its proposal's name and its base's key (the lineage: a long
    round's base is its short round). `measurement` is core.tune.judge.Measurement as
    JSON (None when it failed, with `note` saying why); `details` what producing it did.
    """

    key: str
    attempt: int
    seconds: float
    measurement: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    # a model file was kept (and a float model, for a quantized one)
    has_model: bool = False
    has_float_model: bool = False
    # who produced it: None for the recipe's own runner, else a helper's name
    by: str | None = None


@dataclass(frozen=True)
class RecipeMemory:
    """What a recipe starts from: when its first attempt began (its time budget counts
    from then), which attempt this is, and the candidates earlier attempts finished."""

    started_unix: float
    attempt: int
    finished: dict[str, FinishedCandidate] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    float_path: Path | None = None


class CandidateStore(Protocol):
    def begin(self, recipe: str) -> RecipeMemory:
        """The recipe's memory; the first call for a recipe records its start."""
        ...

    def record(
        self,
        recipe: str,
        candidate: FinishedCandidate,
        model: Path | None = None,
        float_model: Path | None = None,
    ) -> None:
        """Keep the candidate (and its model files) durably before returning."""
        ...

    def fetch(self, recipe: str, key: str, folder: Path) -> FetchedModel:
        """A recorded candidate's model (and float model) as files under `folder`."""
        ...

    def claim(self, recipe: str, key: str) -> bool:
        """True when this holder may produce the candidate now: nobody recorded it and
        nobody else holds a live claim on it (one that lapsed is taken over)."""
        ...

    def holder(self) -> str | None:
        """This store's holder name for `FinishedCandidate.by` (None: the job's runner)."""
        ...


class NoCandidateStore:
    """Nothing is kept: every run of a recipe starts afresh (direct engine use)."""

    def begin(self, recipe: str) -> RecipeMemory:
        return RecipeMemory(started_unix=time.time(), attempt=1)

    def record(
        self,
        recipe: str,
        candidate: FinishedCandidate,
        model: Path | None = None,
        float_model: Path | None = None,
    ) -> None:
        return None

    def fetch(self, recipe: str, key: str, folder: Path) -> FetchedModel:
        raise KeyError(key)

    def claim(self, recipe: str, key: str) -> bool:
        return True  # nobody else can see the recipe

    def holder(self) -> str | None:
        return None


class MemoryCandidateStore:
    """Candidates kept in this process, their models copied under `root`: the same
    behaviour as the worker's store, for tests and for several runs in one process.
    `attempt` is what the next `begin` reports (raise it to play a new attempt);
    `sharing(name)` is another holder's handle on the same candidates (a helper), whose
    claims are taken over by others once `drop_claims` plays its death."""

    def __init__(self, root: Path, attempt: int = 1, name: str | None = None) -> None:
        self.root = root
        self.attempt = attempt
        self.name = name
        self.started: dict[str, float] = {}
        self.finished: dict[str, dict[str, FinishedCandidate]] = {}
        self.fetched: list[str] = []
        self.claims: dict[tuple[str, str], str | None] = {}
        self.lock = threading.Lock()

    def sharing(self, name: str) -> MemoryCandidateStore:
        other = copy.copy(self)
        other.name = name
        other.fetched = []
        return other

    def begin(self, recipe: str) -> RecipeMemory:
        with self.lock:
            started = self.started.setdefault(recipe, time.time())
            return RecipeMemory(started, self.attempt, dict(self.finished.get(recipe, {})))

    def claim(self, recipe: str, key: str) -> bool:
        with self.lock:
            if key in self.finished.get(recipe, {}):
                return False
            holder = self.claims.setdefault((recipe, key), self.name)
            return holder == self.name

    def drop_claims(self, name: str | None) -> None:
        """`name`'s claims lapse (its process died)."""
        with self.lock:
            for claim in [c for c, holder in self.claims.items() if holder == name]:
                del self.claims[claim]

    def holder(self) -> str | None:
        return self.name

    def record(
        self,
        recipe: str,
        candidate: FinishedCandidate,
        model: Path | None = None,
        float_model: Path | None = None,
    ) -> None:
        folder = self._folder(recipe, candidate.key)
        with self.lock:
            if candidate.key in self.finished.get(recipe, {}):
                return  # the first to finish it wins, as in the worker's store
            for name, source in (("model.onnx", model), ("float.onnx", float_model)):
                if source is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, folder / name)
            self.finished.setdefault(recipe, {})[candidate.key] = candidate

    def fetch(self, recipe: str, key: str, folder: Path) -> FetchedModel:
        candidate = self.finished[recipe][key]
        self.fetched.append(key)
        kept = self._folder(recipe, key)
        folder.mkdir(parents=True, exist_ok=True)
        path = Path(shutil.copyfile(kept / "model.onnx", folder / "model.onnx"))
        float_path = (
            Path(shutil.copyfile(kept / "float.onnx", folder / "float.onnx"))
            if candidate.has_float_model
            else None
        )
        return FetchedModel(path, float_path)

    def _folder(self, recipe: str, key: str) -> Path:
        return self.root / recipe / hashlib.sha256(key.encode()).hexdigest()[:16]


# A recipe's name starts so: how a helper task tells a recipe's helpers from a search's.
RECIPE_PREFIX = "auto-"


def recipe_name(config_json: str, model_path: Path) -> str:
    """A recipe's name: its config and the bytes of its input model."""
    from core.formats import files_digest  # onnx, only where a recipe runs

    digest = hashlib.sha256(config_json.encode())
    digest.update(files_digest(model_path).encode())
    return f"{RECIPE_PREFIX}{digest.hexdigest()[:24]}"
