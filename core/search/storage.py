"""Optuna's RDB storage, with one gap of its heartbeat closed.

Optuna fails a running trial as stale only once it has a heartbeat older than the grace
period. A trial whose runner died after `study.ask()` made it RUNNING and before the
heartbeat thread's first beat has no heartbeat at all, so Optuna keeps it running for
ever: the search waits for it until its time budget runs out. The search's own test hit
it (a worker killed just as its third trial began; the job ran past 600 s). Such a trial
is stale here once it started longer ago than the grace period plus `silent_start_s`
(clocks of different machines disagree a little; the beat normally follows within
milliseconds).

Imported only where a stored study is opened: it imports Optuna and SQLAlchemy.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import TrialState

SILENT_START_S = 30.0


class HeartbeatStorage(RDBStorage):
    def __init__(self, *args: Any, silent_start_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.silent_start_s = SILENT_START_S if silent_start_s is None else silent_start_s

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        return stale + [i for i in self.never_beaten_trial_ids(study_id) if i not in stale]

    def never_beaten_trial_ids(self, study_id: int) -> list[int]:
        """Running trials with no heartbeat, started longer ago than the grace period
        plus `silent_start_s` (their start as Optuna's public API gives it: local time)."""
        grace_s = self.grace_period or 2 * (self.heartbeat_interval or 0)
        started_before = datetime.now() - timedelta(seconds=grace_s + self.silent_start_s)
        session = self.scoped_session()
        try:
            rows = (
                session.query(models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(~models.TrialModel.heartbeats.any())
                .all()
            )
        finally:
            self.scoped_session.remove()
        silent = []
        for (trial_id,) in rows:
            started = self.get_trial(trial_id).datetime_start
            if started is not None and started < started_before:
                silent.append(trial_id)
        return silent
