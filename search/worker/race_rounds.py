"""Racing's next round, queued by whichever worker finds it due (`search grid --seeds auto`).

A round is due when the race (`search.results.race.study_race`, replayed from the study's
trials) has decided the round before it and some configuration that races on lacks its trial
for the new seed. Any worker may find that: the one that finished the round's last trial, or
any other later (a worker that died between finishing a round and queueing the next leaves
the round finished and its successor missing, and the next worker to look queues it). So
queueing is idempotent and serialised:

- under the study's enqueue lock (`search.study.enqueue_lock`), the same one `search grid`
  holds, the race is replayed from trials read inside the lock;
- a configuration's seed is queued only if no trial holds it (waiting, running, complete or
  pruned: `held_keys`), so two workers finishing a round's last trials at the same moment
  queue it once: the second finds the first one's trials.

A new seed copies its configuration's replicate-0 trial: the same fixed params (a LoRA
point) or baseline attributes, with its replicate index (`search.study.replicates`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import optuna
from optuna.trial import FrozenTrial

from search.results.race import race_settings, study_race
from search.results.verdict import VerdictCache
from search.study.enqueue import held_keys
from search.study.replicates import replicate_attrs, with_replicate

LOG = logging.getLogger(__name__)

# The user attributes a queued configuration carries (`search.study.enqueue`); the rest of a
# finished trial's attributes are its results.
QUEUED_ATTRS = ("baseline", "method", "model", "train_overrides")


def queue_next_round(study: optuna.Study, lock: Callable[[], AbstractContextManager],
                     cache: VerdictCache | None = None) -> int:
    """Queue the race's next round if it is due; how many trials were queued (0 for a study
    that does not race, a round under way or a race that has ended)."""
    if race_settings(study) is None:  # one read, no lock: most studies do not race
        return 0
    with lock():
        trials = study.get_trials(deepcopy=False)
        race = study_race(study, trials, cache)
        if race is None:
            return 0
        state, inputs = race
        if state.finished or not state.rounds:  # round 1 is the grid's own
            return 0
        held, added = held_keys(study), 0
        for key, depth in sorted(state.waiting.items(), key=lambda item: repr(item[0])):
            if with_replicate(key, depth - 1) in held or key not in inputs.first:
                continue
            queue_seed(study, inputs.first[key], depth - 1)
            added += 1
    if added:
        LOG.info(f"race: round {state.next_round} queued: {added} trial(s) "
                 f"({len(state.racing)} configurations race on)")
    return added


def queue_seed(study: optuna.Study, first: FrozenTrial, replicate: int) -> None:
    """Queue replicate `replicate` of the configuration `first` (its replicate 0) trains."""
    params = dict(first.system_attrs.get("fixed_params") or first.params)
    attrs = {name: first.user_attrs[name] for name in QUEUED_ATTRS if name in first.user_attrs}
    study.enqueue_trial(params, user_attrs={**attrs, **replicate_attrs(replicate)})
