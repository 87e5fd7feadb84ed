"""The auto recipe's candidate store for a job (core.candidates.CandidateStore): rows in
the job's database (store.recipe_candidates), model files in its blob store.

It runs in the pool process; the engine's child reaches it over its pipe
(worker.engine_process), so the child holds no database connection nor blob store
credentials. A model with external data is kept as a zip of its files (the upload
layout) and unpacked when fetched.

A fanned-out recipe's runner and helpers each have one, under their holder name (None:
the job's runner): their claims are renewed by `renew_claims`, which the pool process
calls while it supervises its engine child, so a claim lapses `lease_s` after its
holder's worker died.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from core.archive import ArchiveLimits, materialise_model, pack_model
from core.candidates import FetchedModel, FinishedCandidate, RecipeMemory
from core.formats import model_files
from store import blob_refs, recipe_candidates
from store.blobs import BlobStore
from store.db import transaction
from store.recipe_candidates import CandidateRecord


class JobCandidates:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        job_id: str,
        attempt: int,
        limits: ArchiveLimits,
        holder: str | None = None,
        lease_s: float = 30.0,
    ) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.job_id = job_id
        self.attempt = attempt
        self.limits = limits
        self._holder = holder
        self.lease_s = lease_s
        self._claimed = False
        self._renewed_at = 0.0

    def holder(self) -> str | None:
        return self._holder

    def _claimant(self) -> str:
        # the job's runner claims under a name of its attempt: a dead attempt's claims
        # lapse like a dead helper's
        return self._holder or f"runner:attempt-{self.attempt}"

    def claim(self, recipe: str, key: str) -> bool:
        with transaction(self.sessions) as session:
            claimed = recipe_candidates.claim(
                session, self.job_id, recipe, key, self._claimant(), self.lease_s
            )
        self._claimed = self._claimed or claimed
        if claimed:
            self._renewed_at = time.monotonic()
        return claimed

    def renew_claims(self) -> None:
        """Keep this holder's claims alive: at most every third of the lease."""
        if not self._claimed or time.monotonic() - self._renewed_at < self.lease_s / 3:
            return
        self._renewed_at = time.monotonic()
        with transaction(self.sessions) as session:
            recipe_candidates.renew(session, self.job_id, self._claimant(), self.lease_s)

    def begin(self, recipe: str) -> RecipeMemory:
        with transaction(self.sessions) as session:
            start = recipe_candidates.begin(session, self.job_id, recipe, self.attempt)
            records = recipe_candidates.finished(session, self.job_id, recipe)
        return RecipeMemory(
            started_unix=start.started_at.timestamp(),
            attempt=self.attempt,
            finished={record.key: _finished(record) for record in records},
        )

    def record(
        self,
        recipe: str,
        candidate: FinishedCandidate,
        model: Path | None = None,
        float_model: Path | None = None,
    ) -> None:
        with tempfile.TemporaryDirectory(prefix="candidate-") as scratch:
            kept = {
                role: self._file_of(path, Path(scratch) / role)
                for role, path in (("model", model), ("float", float_model))
                if path is not None
            }
            stored = {role: self.blobs.put_file(path) for role, path in kept.items()}
            with transaction(self.sessions) as session:
                # under each blob's lock until the row commits: a garbage collection that
                # ran since the bytes were written is undone here, a later one sees the row
                for role, blob in sorted(stored.items(), key=lambda item: item[1].sha256):
                    blob_refs.lock(session, blob.sha256)
                    if not self.blobs.exists(blob.sha256):
                        self.blobs.put_file(kept[role])
                recipe_candidates.record(
                    session,
                    self.job_id,
                    recipe,
                    CandidateRecord(
                        key=candidate.key,
                        attempt=candidate.attempt,
                        seconds=candidate.seconds,
                        measurement=candidate.measurement,
                        details=candidate.details,
                        note=candidate.note,
                        model_file=kept["model"].name if "model" in kept else None,
                        sha256=stored["model"].sha256 if "model" in stored else None,
                        float_model_file=kept["float"].name if "float" in kept else None,
                        float_sha256=stored["float"].sha256 if "float" in stored else None,
                        measured_by=candidate.by,
                    ),
                )

    def fetch(self, recipe: str, key: str, folder: Path) -> FetchedModel:
        with transaction(self.sessions) as session:
            record = recipe_candidates.get(session, self.job_id, recipe, key)
        if record is None or record.sha256 is None or record.model_file is None:
            raise KeyError(key)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        path = self._model_of(record.sha256, record.model_file, folder / "model")
        float_path = (
            self._model_of(record.float_sha256, record.float_model_file, folder / "float")
            if record.float_sha256 is not None and record.float_model_file is not None
            else None
        )
        return FetchedModel(path, float_path)

    def _file_of(self, model: Path, scratch: Path) -> Path:
        """The model as one file: itself, or a zip of it and its external data."""
        if len(model_files(model)) == 1:
            return model
        return pack_model(model, scratch / "model.zip")

    def _model_of(self, sha256: str, name: str, folder: Path) -> Path:
        download = folder.parent / f"{folder.name}-blob{Path(name).suffix}"
        self.blobs.materialise(sha256, download)
        return materialise_model(download, folder, self.limits)


def _finished(record: CandidateRecord) -> FinishedCandidate:
    return FinishedCandidate(
        key=record.key,
        attempt=record.attempt,
        seconds=record.seconds,
        measurement=record.measurement,
        details=record.details,
        note=record.note,
        has_model=record.sha256 is not None,
        has_float_model=record.float_sha256 is not None,
        by=record.measured_by,
    )
