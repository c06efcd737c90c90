"""Every private name of Optuna and optuna-dashboard this project uses, in one place.

Each is here because no public API does the job (said per name), and each has a test in
tests/test_optuna_private.py that fails loudly, naming the assumption, when a new release
changes it; pyproject bounds both packages below their next versions that may change them.
Elsewhere, code imports these names from here, never an underscore name from Optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

# Optuna: an artifact store's interface (`open_reader`, `write`, `remove`), for type hints;
# only a Protocol, never instantiated.
from optuna.artifacts._protocol import ArtifactStore as ArtifactStore

# Optuna: the prefix of the study/trial system attributes `upload_artifact` records; the
# dashboard lists a study's artifacts by it, and we write ours by it to keep one id per file.
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX as ARTIFACTS_ATTR_PREFIX

# Optuna: the ORM tables of RDBStorage. Reading a study's trials through them (six queries)
# instead of `get_all_trials` (an ORM object per row) is what makes results at 5,000 trials
# fast (search.study.trial_reader); tests compare both readers field by field.
from optuna.storages._rdb import models as rdb_models  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

# Optuna: the RDBStorage method `optuna.storages.fail_stale_trials` asks for the trials whose
# heartbeat is stale. PatientRDBStorage overrides it to judge nothing right after an outage
# (search.study.patient_storage); there is no public hook for that.
STALE_TRIALS_HOOK = "_get_stale_trial_ids"

# Optuna: the RDBStorage methods its cache wrapper (`_CachedStorage`, which every study's
# storage is wrapped in) calls instead of the public ones; PatientRDBStorage retries them like
# the public calls, or a trial's param written during an outage would escape the retry.
CACHED_BACKEND_CALLS = ("_create_new_trial", "_set_trial_param", "_get_best_trial_id",
                        "_get_trials")


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes through (Optuna's `Study` exposes none): for
    writes that go around the `Study` API (requeueing a trial, notes, system attributes)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's row id in its storage, which storage calls take."""
    return study._study_id


def trial_id(trial: FrozenTrial | optuna.Trial) -> int:
    """The trial's row id in its storage (storage calls take it; `number` is per study)."""
    return trial._trial_id


def rdb_backend(storage: BaseStorage) -> optuna.storages.RDBStorage:
    """The RDBStorage under Optuna's cache wrapper (`_CachedStorage`), or `storage` itself."""
    return getattr(storage, "_backend", storage)


# optuna-dashboard: how a note is stored (version key, chunked body keys, chunk length). The
# public `save_note` reads every trial of the study to write one note (search.results.
# note_store); tests read ours back with the public `get_note`. Loaded on first use:
# importing optuna_dashboard takes ~1 s, which read-only commands must not pay.
DASHBOARD_NOTE_NAMES = ("SYSTEM_ATTR_MAX_LENGTH", "note_str_key_prefix", "note_ver_key")


def __getattr__(name: str):
    if name in DASHBOARD_NOTE_NAMES:
        from optuna_dashboard import _note

        return getattr(_note, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
