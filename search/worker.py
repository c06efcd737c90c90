"""A worker: joins a study by storage URL and name, then runs queued trials until none is left.

Queued trials are the baseline, grid points (params fixed) and TPE trials (params drawn by
the study's sampler when the trial starts; see `search.tpe`).

Claiming is Optuna's own compare-and-set (`set_trial_state_values(RUNNING)` succeeds for one
process only), done here rather than through `study.ask()` because `ask()` invents a new
sampled trial when the queue is empty, and a grid worker must never do that.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from objectives.data import load_splits
from objectives.train import use_threads
from search.storage import default_artifacts_dir, open_storage
from search.studies import find_study, stored_train_spec
from search.tpe import load_searching_study
from search.trial_run import run_claimed_trial


@dataclass
class WorkerReport:
    states: Counter = field(default_factory=Counter)


def claim_next_trial(storage: optuna.storages.BaseStorage, study: optuna.Study
                     ) -> FrozenTrial | None:
    """Move the oldest WAITING trial to RUNNING for this process; None when none is left.

    The queue is read through the study (which registers the trials in Optuna's storage
    cache, needed to set their params later); the claim goes to the database itself.
    """
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return storage.get_trial(trial._trial_id)
        except UpdateFinishedTrialError:
            continue  # another process finished it between our read and our claim
    return None


def artifact_store(folder: str | Path) -> optuna.artifacts.FileSystemArtifactStore:
    Path(folder).mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(folder))


def artifacts_folder(study: optuna.Study, storage_url: str, override: str | None) -> str:
    return override or study.user_attrs.get("artifacts") or str(default_artifacts_dir(storage_url))


def run_worker(storage_url: str, study_name: str, artifacts: str | None = None,
               position: int = 0, threads: int | None = None,
               local_overrides: dict[str, Any] | None = None) -> WorkerReport:
    """Run queued trials of the study until the queue is empty.

    `local_overrides` replaces host-local spec fields (`LOCAL_FIELDS`: where the data lives,
    which device) that do not change what a trial computes.
    """
    if threads:
        use_threads(threads)
    storage = open_storage(storage_url, must_exist=True)
    study = find_study(storage, study_name)
    spec = dataclasses.replace(stored_train_spec(study), **(local_overrides or {}))
    study = load_searching_study(storage, study, spec.epochs)
    store = artifact_store(artifacts_folder(study, storage_url, artifacts))
    data = load_splits(spec)
    if "classes" not in study.user_attrs:
        study.set_user_attr("classes", data.classes)
    report = WorkerReport()
    while (trial := claim_next_trial(storage, study)) is not None:
        report.states[run_claimed_trial(study, trial, spec, data, store, position).name] += 1
    return report


def worker_environment(index: int, gpus: int) -> dict[str, str]:
    """One GPU per worker process, round robin, when there are GPUs."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    return env
