"""Heartbeats: how a study tells a dead worker's trial from a slow one.

While a worker runs a trial, a thread records a heartbeat in the storage every `interval`
seconds. A RUNNING trial whose last heartbeat is older than `grace_period` belongs to a worker
that was killed or cut off: the next worker that looks for work marks it FAIL and queues a
copy with the same params and user attributes (so also its checkpoint), at most
`max_retries` times per original trial (Optuna's `RetryHeartbeatStaleTrialCallback`).

The settings are stored in the study (`StudyRecord.heartbeat`), so that every worker judges
staleness alike; a worker's own flags override them for that worker only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from optuna.storages import RetryHeartbeatStaleTrialCallback

from objectives.user_error import UserError

# Each setting's command-line flag (grid, optuna, worker), also used to pass a worker's own
# settings on to the worker processes it starts.
HEARTBEAT_FLAGS = {"interval": "--heartbeat-interval", "grace_period": "--grace-period",
                   "max_retries": "--max-retries"}


class HeartbeatError(UserError):
    """Heartbeat settings that cannot work; one line for the user."""


@dataclass(frozen=True)
class HeartbeatSettings:
    interval: int = field(default=60, metadata={
        "help": "seconds between two heartbeats of a running trial"})
    grace_period: int = field(default=180, metadata={
        "help": "seconds without a heartbeat before a trial counts as dead and is retried; "
                "longer than the interval"})
    max_retries: int = field(default=2, metadata={
        "help": "re-runs of a dead worker's trial, not counting the first run"})

    def __post_init__(self) -> None:
        for name in ("interval", "grace_period", "max_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise HeartbeatError(f"heartbeat {name} must be an integer, got {value!r}")
        if self.interval < 1:
            raise HeartbeatError(f"heartbeat interval must be >= 1 s, got {self.interval}")
        # A grace period of one interval or less fails live trials whose heartbeat is late.
        if self.grace_period <= self.interval:
            raise HeartbeatError(f"grace period ({self.grace_period} s) must be longer than "
                                 f"the heartbeat interval ({self.interval} s)")
        if self.max_retries < 0:
            raise HeartbeatError(f"max_retries must be >= 0, got {self.max_retries}")

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HeartbeatSettings:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise HeartbeatError(f"unknown heartbeat setting(s) {sorted(unknown)}; known: "
                                 "interval, grace_period, max_retries")
        return cls(**values)

    def with_overrides(self, **values: int | None) -> HeartbeatSettings:
        given = {key: value for key, value in values.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self

    def storage_kwargs(self) -> dict[str, Any]:
        """`RDBStorage` arguments that turn heartbeats and retries on."""
        return {"heartbeat_interval": self.interval, "grace_period": self.grace_period,
                "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                    max_retry=self.max_retries, inherit_intermediate_values=True)}

