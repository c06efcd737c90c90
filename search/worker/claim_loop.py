"""A worker: joins a study by storage URL and name, then runs queued trials until none is left.

Queued trials are the baseline, grid points (params fixed) and TPE trials (params drawn by
the study's sampler when the trial starts; see `search.study.tpe_search`). How trials are
claimed, put back and retried is in `search.worker.trial_queue`; heartbeats in
`search.worker.heartbeat`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from objectives.data import ImageSplits, load_splits
from objectives.spec import TrainSpec
from objectives.train import use_threads
from search.study.artifacts import artifact_store, artifacts_folder
from search.study.heartbeat_settings import HeartbeatSettings, stored_heartbeat
from search.study.open_study import open_study, stored_train_spec
from search.study.storage import open_storage
from search.study.study_spec import validate_train_spec
from search.worker.heartbeat import Heartbeat
from search.worker.sampler import searching_study
from search.worker.signals import StopSignals
from search.worker.trial_queue import MAX_POLL_SECONDS, next_trial
from search.worker.trial_run import run_claimed_trial


@dataclass
class WorkerReport:
    states: Counter = field(default_factory=Counter)
    stopped_by: str | None = None  # the signal that stopped the worker early
    exit_code: int = 0


def run_worker(storage_url: str, study_name: str, artifacts: str | None = None,
               position: int = 0, threads: int | None = None,
               local_overrides: dict[str, Any] | None = None,
               heartbeat_overrides: dict[str, int | None] | None = None) -> WorkerReport:
    """Run queued trials of the study until nothing is queued or running, or until SIGTERM /
    Ctrl-C (the trial in hand goes back to the queue).

    `local_overrides` replaces host-local spec fields (`LOCAL_FIELDS`: where the data lives,
    which device) that do not change what a trial computes; `heartbeat_overrides` this
    worker's heartbeat settings (interval, grace_period, max_retries).
    """
    if threads:
        use_threads(threads)
    plain = open_storage(storage_url, must_exist=True)  # to read the heartbeat settings
    heartbeat = stored_heartbeat(open_study(plain, study_name)).with_overrides(
        **(heartbeat_overrides or {}))
    plain.engine.dispose()  # its idle connection would count against the server's limit
    storage = open_storage(storage_url, must_exist=True, heartbeat=heartbeat)
    study = open_study(storage, study_name)
    spec = dataclasses.replace(stored_train_spec(study), **(local_overrides or {}))
    validate_train_spec(spec, f"study {study_name!r}")  # its files, on this host
    study = searching_study(storage, study, spec.epochs)
    store = artifact_store(artifacts_folder(study, storage_url, artifacts))
    data = load_splits(spec)
    if "classes" not in study.user_attrs:
        study.set_user_attr("classes", data.classes)
    report = WorkerReport()
    with StopSignals() as stop:
        while (trial := next_trial(storage, study, min(heartbeat.interval, MAX_POLL_SECONDS),
                                   lambda: stop.requested, announce_wait(heartbeat))) is not None:
            report.states[run_one(storage, study, trial, spec, data, store, position,
                                  heartbeat, stop).name] += 1
        if stop.requested:
            report.stopped_by, report.exit_code = stop.signal.name, stop.exit_code
    return report


def run_one(storage: optuna.storages.RDBStorage, study: optuna.Study, trial: FrozenTrial,
            spec: TrainSpec, data: ImageSplits, store: optuna.artifacts.FileSystemArtifactStore,
            position: int, heartbeat: HeartbeatSettings, stop: StopSignals) -> TrialState:
    """One claimed trial, with its heartbeat running until it is finished or put back."""
    try:
        with Heartbeat(storage, trial._trial_id, heartbeat.interval):
            return run_claimed_trial(study, trial, spec, data, store, position,
                                     check_stop=stop.raise_if_requested)
    except UpdateFinishedTrialError:
        # Our heartbeats stopped reaching the database for the grace period (a network cut,
        # a suspended process), so another worker failed the trial and queued its retry.
        print(f"worker: trial {trial.number} was failed by another worker meanwhile (no "
              f"heartbeat for {heartbeat.grace_period} s); its retry runs instead",
              file=sys.stderr, flush=True)
        return TrialState.FAIL


def announce_wait(heartbeat: HeartbeatSettings):
    def announce(running: int) -> None:
        print(f"worker: nothing queued; waiting for {running} running trial(s) of other workers "
              f"(a dead worker's trial comes back after {heartbeat.grace_period} s without "
              "heartbeat)", file=sys.stderr, flush=True)
    return announce


def describe_report(study_name: str, report: WorkerReport) -> str:
    done = ", ".join(f"{count} {state.lower()}" for state, count in report.states.items()
                     if state != "WAITING")
    if report.stopped_by is not None:
        return (f"worker: stopped by {report.stopped_by}; the trial in hand is back in the "
                f"queue of {study_name!r} ({done or 'finished none'})")
    return f"worker: no queued trial left in {study_name!r} ({done or 'ran none'})"
