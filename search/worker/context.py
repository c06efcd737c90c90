"""What a worker runs its trials with, opened once per worker process
(`search.worker.claim_loop.open_worker`) and handed down to the claim loop, each trial and
each pack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna

from objectives.data import ImageSplits
from objectives.spec import TrainSpec
from search.study.heartbeat_settings import HeartbeatSettings
from search.worker.signals import StopSignals

if TYPE_CHECKING:
    from search.study.optuna_private import ArtifactStore


@dataclass(frozen=True)
class WorkerContext:
    storage: optuna.storages.RDBStorage  # with this worker's heartbeats and outage timeout
    study: optuna.Study  # with the study's sampler and pruner (`search.worker.sampler`)
    spec: TrainSpec  # the study's, with this host's local fields (data folder, device)
    data: ImageSplits
    store: ArtifactStore
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    # Asked to stop (SIGTERM, Ctrl-C)? The training loop checks it after every step. Never,
    # unless entered (`with StopSignals()`).
    stop: StopSignals = field(default_factory=StopSignals)
    position: int = 0  # this worker's progress-bar row among the host's workers
