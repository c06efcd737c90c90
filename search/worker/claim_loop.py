"""A worker: joins a study by storage URL and name, then runs queued trials until none is left.

Queued trials are the baseline, grid points (params fixed) and TPE trials (params drawn by
the study's sampler when the trial starts; see `search.study.tpe_search`). How trials are
claimed, put back and retried is in `search.worker.trial_queue`; heartbeats in
`search.worker.heartbeat`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from objectives.data import load_splits
from objectives.train import use_threads
from objectives.user_error import first_line
from search.results.dashboard_notes import DashboardMemory, after_finishing, refresh_if_dirty
from search.results.verdict import VerdictCache
from search.study.artifacts import artifact_store, artifacts_folder
from search.study.enqueue_lock import enqueue_lock
from search.study.heartbeat_settings import HeartbeatSettings
from search.study.names import quoted
from search.study.open_study import open_study
from search.study.optuna_private import trial_id
from search.study.patient_storage import StorageOutage
from search.study.storage import open_storage
from search.study.study_record import StudyRecord
from search.study.study_spec import validate_train_spec
from search.study.trials import gave_up_points, is_baseline, trial_key, trial_point, tries
from search.worker.context import WorkerContext
from search.worker.faults import EXIT_ENVIRONMENT, WorkerEnvironmentError
from search.worker.heartbeat import Heartbeat
from search.worker.options import WorkerOptions
from search.worker.pack_plan import PackPlanner, describe_pack
from search.worker.pack_run import run_claimed_pack
from search.worker.race_rounds import queue_next_round
from search.worker.sampler import searching_study
from search.worker.signals import StopSignals
from search.worker.trial_queue import MAX_POLL_SECONDS, claim_waiting, next_trial
from search.worker.trial_run import describe_point, run_claimed_trial

LOG = logging.getLogger(__name__)

# Exit codes of a worker (and of the commands that run workers): 0 when every trial it ran
# finished without failing; EXIT_TRIALS_FAILED when one failed or the study gave up on a point
# (its last try failed) while it ran; EXIT_ENVIRONMENT (faults.py) when its environment
# stopped it; 128 + N after signal N (SIGTERM, Ctrl-C).
EXIT_TRIALS_FAILED = 1
# Gave-up points a summary names one by one; the rest are counted.
NAMED_POINTS = 3


@dataclass
class WorkerReport:
    states: Counter = field(default_factory=Counter)
    stopped_by: str | None = None  # the signal that stopped the worker early
    environment: str | None = None  # why the worker's environment stopped it (disk full, ...)
    storage_lost: str | None = None  # the database stayed away past --storage-timeout
    gave_up: dict[int, str] = field(default_factory=dict)  # trial number -> what gave up, how
    exit_code: int = 0

    @property
    def ran(self) -> int:
        """Trials this worker finished (complete, pruned or failed); not those put back."""
        return sum(count for state, count in self.states.items() if state != "WAITING")

    @property
    def failed(self) -> int:
        return self.states["FAIL"]

    def to_dict(self) -> dict[str, Any]:
        return {"states": dict(self.states), "stopped_by": self.stopped_by,
                "environment": self.environment, "storage_lost": self.storage_lost,
                "gave_up": self.gave_up,
                "exit_code": self.exit_code}


class Journal:
    """Appends one JSON object a line to `path` (nothing without a path), each written at
    once: what a worker killed with SIGKILL leaves tells which trial it had in hand."""

    def __init__(self, path: str | None) -> None:
        self._path = path

    def write(self, **entry: Any) -> None:
        if self._path is not None:
            with open(self._path, "a", encoding="utf-8") as file:
                file.write(json.dumps(entry) + "\n")


def given_up(study: optuna.Study, max_retries: int) -> dict[Any, FrozenTrial]:
    """The points the study gave up on, each with its last trial."""
    points: dict[Any, FrozenTrial] = {}
    for trial in gave_up_points(study, max_retries):
        points[trial_key(trial) or ("trial", trial.number)] = trial  # by number: the last wins
    return points


def describe_given_up(trial: FrozenTrial) -> str:
    count = tries(trial)
    point = trial_point(trial)
    what = ("(TPE, no params yet)" if point is None and not is_baseline(trial)
            else describe_point(point))  # as the trial's own lines name it
    return f"trial {trial.number} {what} after {count} {'try' if count == 1 else 'tries'}"


def run_worker(options: WorkerOptions) -> WorkerReport:
    """Run queued trials of the study until nothing is queued or running, or until SIGTERM /
    Ctrl-C or a fault of this worker's environment (the trial in hand goes back to the
    queue). The report counts the trials it ran and names the points the study gave up on
    meanwhile (`exit_code` says whether any failed; see EXIT_TRIALS_FAILED).

    With `options.journal`, it appends each trial it claims and finishes to that file, then
    its report (`Journal`).
    """
    stop = StopSignals()  # handles the signals once the worker has joined (`with stop`)
    worker = open_worker(options, stop)
    study, store, max_retries = worker.study, worker.store, worker.heartbeat.max_retries
    report = WorkerReport()
    journal = Journal(options.journal)
    before = {key: trial.number for key, trial in given_up(study, max_retries).items()}
    memory = DashboardMemory()  # one for the worker's life: refreshes redo only what changed
    race_cache = VerdictCache(threads=1)  # a race's outcomes, decoded once for the worker's life
    with stop:
        try:
            claim_and_run(worker, report, journal,
                          PackPlanner(options.pack_setting, worker.spec, worker.data, study,
                                      options.queue_share),
                          lambda: refresh_leaderboard(after_finishing, study, store,
                                                      options.storage_url, memory),
                          lambda: queue_next_round(study, lambda: enqueue_lock(
                              worker.storage, options.storage_url, study.study_name), race_cache))
            if not stop.requested and report.environment is None:  # the queue is empty
                refresh_leaderboard(refresh_if_dirty, study, store, options.storage_url, memory)
        except StorageOutage as error:  # nothing can be written: report and stop
            report.storage_lost, report.exit_code = first_line(error), EXIT_ENVIRONMENT
            journal.write(report=report.to_dict())
            return report
        if stop.requested and report.environment is None:
            report.stopped_by, report.exit_code = stop.signal.name, stop.exit_code
    report.gave_up = {trial.number: describe_given_up(trial)
                      for key, trial in given_up(study, max_retries).items()
                      if before.get(key) != trial.number}  # given up while it ran
    if report.exit_code == 0 and (report.failed or report.gave_up):
        report.exit_code = EXIT_TRIALS_FAILED
    journal.write(report=report.to_dict())
    return report


def open_worker(options: WorkerOptions, stop: StopSignals) -> WorkerContext:
    """Join the study: its storage with this worker's heartbeats (the study's settings, or
    the worker's own flags) and outage timeout, its spec with this host's local fields
    (checked against this host's files), its artifact store and its data."""
    if options.threads:
        use_threads(options.threads)
    plain = open_storage(options.storage_url, must_exist=True)  # to read the heartbeat settings
    heartbeat = StudyRecord(open_study(plain, options.study_name)).heartbeat.with_overrides(
        **options.heartbeat_overrides)
    plain.engine.dispose()  # its idle connection would count against the server's limit
    storage = open_storage(options.storage_url, must_exist=True, heartbeat=heartbeat,
                           outage_timeout=options.storage_timeout)
    study = open_study(storage, options.study_name)
    spec = dataclasses.replace(StudyRecord(study).train_spec, **options.local_overrides)
    validate_train_spec(spec, f"study {quoted(options.study_name)}")  # its files, on this host
    study = searching_study(storage, study, spec.epochs)
    store = artifact_store(artifacts_folder(study, options.storage_url, options.artifacts))
    data = load_splits(spec)
    StudyRecord(study).store_classes(data.classes)
    return WorkerContext(storage, study, spec, data, store, heartbeat, stop, options.position)


def claim_and_run(worker: WorkerContext, report: WorkerReport, journal: Journal,
                  planner: PackPlanner, after_finishing: Callable[[], None] = lambda: None,
                  next_round: Callable[[], int] = lambda: 0) -> None:
    """Claim and run trials (one, or a pack of those that can share it) until none is left,
    a stop is asked or the environment fails; `after_finishing` runs after each trial or
    pack that finished. `next_round` queues a race's next round when it is due (how many
    trials it queued): before each claim, and once more when nothing is left, since the
    worker that finished a round may have died before queueing its successor."""
    storage, study, heartbeat = worker.storage, worker.study, worker.heartbeat
    while True:
        next_round()
        trial = next_trial(storage, study, min(heartbeat.interval, MAX_POLL_SECONDS),
                           lambda: worker.stop.requested, announce_wait(heartbeat),
                           store=worker.store)
        if trial is None:
            if worker.stop.requested or not next_round():
                return
            continue
        trials = [trial]
        limit, cap = planner.limit_and_cap(trial)
        if cap is not None:
            LOG.info(cap)
        if limit > 1:
            trials += claim_waiting(storage, study, limit - 1, planner.companions(trial))
        for claimed in trials:
            journal.write(claimed=claimed.number)
        try:
            states = run_claimed(worker, trials)
        except WorkerEnvironmentError as error:  # the unfinished trials are back in the queue
            states = {t.number: storage.get_trial(trial_id(t)).state for t in trials}
            count(report, journal, states)
            report.environment, report.exit_code = first_line(error), EXIT_ENVIRONMENT
            return
        count(report, journal, states)
        after_finishing()


def refresh_leaderboard(refresh: Callable[..., int], study: optuna.Study,
                        store: optuna.artifacts.FileSystemArtifactStore, url: str,
                        memory: DashboardMemory) -> None:
    """The dashboard's leaderboard and notes, now that trials finished: `after_finishing`
    (mark the board dirty, refresh only if no other worker is refreshing: never waits) or,
    the queue empty, `refresh_if_dirty` (`search.results.dashboard_notes`). No trial depends
    on them: a failure to write them (a full disk for the chart, a database error) is said in
    one line and the worker goes on; a database away past --storage-timeout stops it as any
    other call would."""
    try:
        refresh(study, store, url, memory)
    except (OSError, sqlalchemy.exc.SQLAlchemyError, StorageInternalError) as error:
        LOG.warning(f"worker: the dashboard's leaderboard was not refreshed "
                    f"({type(error).__name__}: {first_line(error)}); the next finished trial "
                    "refreshes it")


def count(report: WorkerReport, journal: Journal, states: dict[int, TrialState]) -> None:
    for number, state in states.items():
        report.states[state.name] += 1
        journal.write(finished=number, state=state.name)


def run_claimed(worker: WorkerContext, trials: list[FrozenTrial]) -> dict[int, TrialState]:
    """Claimed trials, alone or as one pack, each with its heartbeat running until it is
    finished or put back; their end states by trial number."""
    storage = worker.storage
    try:
        with Heartbeat(storage, [trial_id(trial) for trial in trials], worker.heartbeat.interval):
            if len(trials) == 1:
                return {trials[0].number: run_claimed_trial(worker, trials[0])}
            LOG.info(describe_pack(trials))
            return run_claimed_pack(worker, trials)
    except UpdateFinishedTrialError:
        # Our heartbeats stopped reaching the database for the grace period (a network cut,
        # a suspended process), so another worker failed the trial and queued its retry.
        LOG.warning(f"worker: trial {trials[0].number} was failed by another worker meanwhile (no "
                    f"heartbeat for {worker.heartbeat.grace_period} s); its retry runs instead")
        return {t.number: storage.get_trial(trial_id(t)).state for t in trials}


def announce_wait(heartbeat: HeartbeatSettings):
    def announce(running: int) -> None:
        LOG.info(f"worker: nothing queued; waiting for {running} running trial(s) of other workers "
                 f"(a dead worker's trial comes back after {heartbeat.grace_period} s without "
                 "heartbeat)")
    return announce


def describe_report(study_name: str, report: WorkerReport) -> str:
    """The worker's one summary line: why it ended, what it ran, what failed."""
    done = ", ".join(f"{count} {'failed' if state == 'FAIL' else state.lower()}"
                     for state, count in report.states.items() if state != "WAITING")
    if report.storage_lost is not None:
        line = (f"worker: stopped: {report.storage_lost}; the trial in hand stays RUNNING "
                f"until its heartbeat is stale, then a worker retries it "
                f"({done or 'finished none'})")
    elif report.environment is not None:
        line = (f"worker: stopped: {report.environment}; the trial in hand is back in the "
                f"queue of {quoted(study_name)} ({done or 'finished none'})")
    elif report.stopped_by is not None:
        line = (f"worker: stopped by {report.stopped_by}; the trial in hand is back in the "
                f"queue of {quoted(study_name)} ({done or 'finished none'})")
    else:
        line = f"worker: no queued trial left in {quoted(study_name)} ({done or 'ran none'})"
    return "; ".join([line, *describe_failures(report.failed, report.ran, report.gave_up)])


def describe_failures(failed: int, ran: int, gave_up: dict[int, str]) -> list[str]:
    """What failed, e.g. `2 of 7 trials failed` and `gave up on 1 point: trial 4 r=2 alpha=8
    dropout=0.1 after 3 tries`."""
    parts = [f"{failed} of {ran} trial{'' if ran == 1 else 's'} failed"] if failed else []
    if gave_up:
        named = [gave_up[number] for number in sorted(gave_up)]
        more = len(named) - NAMED_POINTS
        listed = ", ".join(named[:NAMED_POINTS]) + (f" and {more} more" if more > 0 else "")
        parts.append(f"gave up on {len(named)} point{'' if len(named) == 1 else 's'}: {listed}")
    return parts
