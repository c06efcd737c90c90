"""TPE search: its settings as stored in a study, the sampler and pruner built from them, and
topping the study up to its trial budget.

The budget is kept with the queue rather than with the workers: `enqueue_tpe_budget` adds one
WAITING trial without params per missing LoRA trial, and a worker that claims such a trial
asks the sampler for its params when the trial starts. Claiming is the same compare-and-set as
for grid points, so any number of workers on any number of hosts run exactly the budget.

The study holds its search (`StudyRecord.tpe_search`); each sampled trial carries
`sampled = True` in its user attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study.enqueue import enqueue_baselines
from search.study.names import quoted
from search.study.replicates import replicate_of
from search.study.space import GridSpace, TpeSearch, space_disagreements
from search.study.study_error import StudyError
from search.study.study_record import StudyRecord
from search.study.trials import is_baseline

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PENDING = (TrialState.WAITING, TrialState.RUNNING)


def settle_search(study: optuna.Study, asked: TpeSearch, given: set[str]) -> TpeSearch:
    """The search to run on `study`: the one stored there with `trials` (and any setting the
    study does not fix yet) taken from `asked`.

    `given` names the settings the user typed; one that contradicts the stored search, or a
    space that disagrees with the study's grid, is an error naming the difference.
    """
    record = StudyRecord(study)
    stored = record.tpe_search
    if stored is None:
        problems = space_disagreements(record.grid, asked.space)
        if problems:
            raise StudyError(f"study {quoted(study.study_name)} holds a grid that this TPE "
                             f"space does not cover ({'; '.join(problems)}); give matching "
                             "--ranks / --alphas / --dropout-range or pick a new --study name")
        return asked
    old, new = stored.to_dict(), asked.to_dict()
    # A key a stored search lacks is its default (searches stored before it existed).
    default = TpeSearch().to_dict()
    conflicts = [f"{key}: {old.get(key, default.get(key))} (stored) vs "
                 f"{new.get(key, default.get(key))}"
                 for key in [*new, *(k for k in old if k not in new)]
                 if key != "trials" and key in given
                 and old.get(key, default.get(key)) != new.get(key, default.get(key))]
    if conflicts:
        raise StudyError(f"study {quoted(study.study_name)} already searches with other settings "
                         f"({'; '.join(conflicts)}); drop those flags or pick a new --study name")
    return TpeSearch.from_dict({**old, "trials": asked.trials})


def check_grid_fits(study: optuna.Study, grid: GridSpace) -> None:
    """A grid added to a study that also runs TPE must stay inside TPE's space."""
    search = StudyRecord(study).tpe_search
    if search is None:
        return
    problems = space_disagreements(grid, search.space)
    if problems:
        raise StudyError(f"study {quoted(study.study_name)} runs a TPE search this grid does "
                         f"not fit ({'; '.join(problems)}); match its space or pick a new "
                         "--study name")


def is_sampled(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("sampled", False))


@dataclass
class TopUpReport:
    baselines_added: int
    finished: int  # LoRA trials complete or pruned
    pending: int  # LoRA trials waiting or running
    added: int


def lora_trial_counts(study: optuna.Study) -> tuple[int, int]:
    """The LoRA trials the budget counts (replicate 0 of each configuration): how many are
    finished (complete or pruned) and how many waiting or running."""
    lora = [t for t in study.get_trials(deepcopy=False)
            if not is_baseline(t) and replicate_of(t) == 0]
    return sum(t.state in FINISHED for t in lora), sum(t.state in PENDING for t in lora)


def enqueue_tpe_budget(study: optuna.Study, search: TpeSearch) -> TopUpReport:
    """Store `search` in the study, queue its baselines if missing, and queue one sampled trial
    per LoRA trial missing from `search.trials` (failed trials do not count). With seeds,
    the budget counts configurations: replicate 0 of each (a completed sampled trial queues
    its other replicates, `search.study.enqueue.enqueue_replicates`)."""
    StudyRecord(study).store_tpe_search(search)
    baselines_added = enqueue_baselines(study)
    finished, pending = lora_trial_counts(study)
    missing = max(0, search.trials - finished - pending)
    for _ in range(missing):
        study.enqueue_trial({}, user_attrs={"baseline": False, "sampled": True})
    return TopUpReport(baselines_added, finished, pending, missing)
