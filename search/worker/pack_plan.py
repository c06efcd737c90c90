"""How many trials a worker claims at once, and which may share a pack (`--pack K|auto`).

Trials share a pack when they train the same spec (model, data, epochs, batch, optimiser,
augmentation, seed: everything but their LoRA params) and resume after the same epoch. A spec
that cannot pack (`objectives.packed_model.pack_refusal`: batch statistics, a stochastic
frozen layer, ...) runs one trial at a time, and the worker says why once.

`auto` takes the pack size from a measured probe of this device (`objectives.pack_capacity`),
then caps it:
- by this host's share of the queue, when the local launcher says how many workers share it
  (`queue_share`): of the compatible trials waiting or running (held by any worker, this
  claim's first included), 1 / queue_share, so that two workers started together split a
  grid evenly instead of the first taking it all;
- for TPE trials, by `tpe_pack_limit`: K trials sampled together never see each other's
  results, so packing trades the sampler's learning for throughput.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial

from objectives.data import ImageSplits
from objectives.pack_capacity import measure_capacity
from objectives.packed_model import members_refusal, pack_refusal, point_pack_refusal
from objectives.spec import LoraParams, TrainSpec
from objectives.user_error import first_line
from search.study.study_record import StudyRecord
from search.study.tpe_search import FINISHED, is_sampled
from search.study.trials import is_baseline, trial_point, trial_train_spec
from search.worker.trial_queue import pending_count

LOG = logging.getLogger(__name__)

AUTO = "auto"
PackSetting = int | str  # a pack size >= 1, or AUTO


def tpe_pack_limit(study: optuna.Study) -> int:
    """The most TPE trials `auto` samples together: while the sampler is still in its random
    start-up phase, the start-up trials left (they never learn from each other anyway);
    after it, a quarter of the budget, so that a 10-trial study still takes several rounds of
    sampling after its start-up trials."""
    search = StudyRecord(study).tpe_search
    if search is None:
        return 1
    finished = sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED)
                   if not is_baseline(t))
    startup_left = search.startup_trials - finished
    return max(1, startup_left, math.ceil(search.trials / 4))


def checkpoint_epoch(trial: FrozenTrial) -> int:
    """The epoch the trial's checkpoint pointer says it resumes after (0: none)."""
    pointer = trial.user_attrs.get("checkpoint")
    epoch = pointer.get("epoch") if isinstance(pointer, dict) else None
    return epoch if isinstance(epoch, int) else 0


@dataclass
class PackPlanner:
    """The pack each claim makes: `limit(first)` trials that `fits(first)`."""

    pack_setting: PackSetting  # the user's --pack
    spec: TrainSpec
    data: ImageSplits
    study: optuna.Study
    queue_share: int = 1  # local workers sharing this queue (1: unknown, or alone)
    _refusals: dict[str, str | None] = field(default_factory=dict, init=False)
    _capacity: dict[str, int] = field(default_factory=dict, init=False)

    def fits(self, first: FrozenTrial):
        """Whether a waiting trial may join `first`'s pack: same spec, same start epoch,
        and points that may share a backbone (`members_refusal`; a sampled trial's point is
        not known yet, and the pack splits at run time if it must, `pack_run.shareable_groups`)."""
        spec, epoch = trial_train_spec(self.spec, first), checkpoint_epoch(first)
        point = trial_point(first)

        def fits_first(trial: FrozenTrial) -> bool:
            if trial_train_spec(self.spec, trial) != spec or checkpoint_epoch(trial) != epoch:
                return False
            other = trial_point(trial)
            return point is None or other is None or members_refusal(spec, [point, other]) is None
        return fits_first

    def companions(self, first: FrozenTrial):
        """`fits`, and with `auto` at most `tpe_pack_limit` TPE trials in the pack (a grid
        point or baseline first may bring that many sampled companions)."""
        fits = self.fits(first)
        if self.pack_setting != AUTO:
            return fits
        sampled_left = tpe_pack_limit(self.study) - is_sampled(first)

        def fits_and_within_limit(trial: FrozenTrial) -> bool:
            nonlocal sampled_left
            if not fits(trial):
                return False
            if is_sampled(trial):
                if sampled_left <= 0:
                    return False
                sampled_left -= 1
            return True
        return fits_and_within_limit

    def limit(self, first: FrozenTrial) -> int:
        """The most trials to claim together with (and including) `first`."""
        return self.limit_and_cap(first)[0]

    def limit_and_cap(self, first: FrozenTrial) -> tuple[int, str | None]:
        """`limit(first)`, and when it is below what `auto` measured, why (said before the
        pack, which would otherwise read as contradicting "pack: auto chose N")."""
        if self.pack_setting == 1:
            return 1, None
        spec = trial_train_spec(self.spec, first)
        if self.refusal(spec) is not None or point_pack_refusal(trial_point(first)) is not None:
            return 1, None
        if self.pack_setting != AUTO:
            return int(self.pack_setting), None
        measured = size = self.capacity(spec)
        cap = None
        if self.queue_share > 1:  # waiting or held by any worker: what the workers share
            pending = pending_count(self.study, self.fits(first))
            if math.ceil(pending / self.queue_share) < size:
                size = max(1, math.ceil(pending / self.queue_share))
                cap = (f"this host's share of the queue ({pending} trials waiting or running "
                       f"for {self.queue_share} local workers)")
        sampled_limit = tpe_pack_limit(self.study) if is_sampled(first) else size
        if sampled_limit < size:
            size = sampled_limit
            cap = ("TPE's limit (trials sampled together do not learn from each other's "
                   "results)")
        if cap is None:
            return size, None
        return size, f"pack: auto's {measured} capped at {size} by {cap}"

    def refusal(self, spec: TrainSpec) -> str | None:
        key = repr(spec)
        if key not in self._refusals:
            self._refusals[key] = why = pack_refusal(spec, self.data.num_classes)
            if why is not None:
                LOG.info(f"pack: trials of {spec.model} run one at a time: {why}")
        return self._refusals[key]

    def capacity(self, spec: TrainSpec) -> int:
        key = repr(spec)
        if key not in self._capacity:
            searched = StudyRecord(self.study).searched_space
            rank = searched.largest_rank or 8
            probe = LoraParams(rank, rank, 0.1, targets=searched.widest_targets)
            try:
                capacity = measure_capacity(spec, self.data, probe)
            except Exception as error:  # the trials meet it too, each fails with it alone
                self._capacity[key] = 1
                LOG.warning(f"pack: auto: the probe failed ({type(error).__name__}: "
                            f"{first_line(error)}); one trial at a time")
                return 1
            self._capacity[key] = capacity.members
            LOG.info(f"pack: auto chose {capacity.describe()}")
        return self._capacity[key]


def describe_pack(trials: list[FrozenTrial]) -> str:
    return f"pack of {len(trials)}: trials {', '.join(str(t.number) for t in trials)}"

