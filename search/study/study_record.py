"""What a study stores about itself, typed: the one reader and writer of a study's user
attributes (a trial's own are read with its trials, `search.study.trials`).

A study carries everything a worker needs, so a worker elsewhere joins knowing only the
storage URL and the study name. Its keys, each read and written only through `StudyRecord`:

    train_spec       the `TrainSpec` (fixed when the study is created)
    space            the grid queued so far, a `GridSpace` that grows with wider grids (the
                     key is older than TPE's own space, hence its name)
    tpe              the `TpeSearch`, once `search optuna` ran (`search.study.tpe_search`)
    artifacts        the artifact folder chosen at creation (a host trusts it only as
                     `search.study.artifacts` says)
    artifacts_token  the token of that folder's marker file
    baselines        the no-LoRA reference trials (`search.study.baselines`)
    heartbeat        how workers tell a dead worker's trial (`search.study.heartbeat_settings`)
    seeds            how many replicates of each configuration (`search.study.replicates`)
    race             a race's settings, {"max_seeds": N, "margin": fraction}, when seeds are
                     raced (`--seeds auto`, `search.results.race`); absent or null: fixed seeds
    classes          the class names in label order, stored by the first worker
    leaderboard_chart, leaderboard_csv
                     artifact ids of the study note's chart and full leaderboard
                     (`search.results.dashboard_notes`)

Keys and value formats are those studies have always held, so a study made by an earlier
version reads as it did; a key it lacks (made before the key existed) reads as its default.
What a study stores about its LoRA params is `space` (what the grid queued) and `tpe` (what
TPE samples from); a queued point's own values are its trial's (Optuna's `fixed_params`). The
bounds every trial registers its params with are derived from those two by one function
(`searched_space`, for the worker's `param_bounds` and its pack probe's largest rank), never
stored apart.

Values come from the database: a typed reader refuses one this version cannot read with a
StudyError (HeartbeatError for the heartbeat) naming the study. The few readers marked "as
stored" skip that check, for results that must show on any host whatever the study holds.
Every read goes to the storage: workers on other hosts write the same study.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from objectives.spec import SpecError, TrainSpec
from search.study.baselines import DEFAULT_BASELINES, Baseline, baselines_from_dicts
from search.study.heartbeat_settings import HeartbeatError, HeartbeatSettings
from search.study.names import quoted
from search.study.replicates import MAX_SEEDS
from search.study.space import GridSpace, SearchedSpace, SpaceError, TpeSearch
from search.study.study_error import StudyError

if TYPE_CHECKING:
    import optuna

TRAIN_SPEC = "train_spec"
GRID = "space"
TPE = "tpe"
ARTIFACTS = "artifacts"
ARTIFACTS_TOKEN = "artifacts_token"
BASELINES = "baselines"
HEARTBEAT = "heartbeat"
SEEDS = "seeds"
RACE = "race"
CLASSES = "classes"
LEADERBOARD_CHART = "leaderboard_chart"
LEADERBOARD_CSV = "leaderboard_csv"
NOTE_ARTIFACTS = (LEADERBOARD_CHART, LEADERBOARD_CSV)


class StudyRecord:
    """The attributes of `study`: an `optuna.Study`, or for reading only, a `StudySummary`
    (which lists every study's attributes in one query)."""

    def __init__(self, study: optuna.Study | optuna.study.StudySummary) -> None:
        self._study = study

    @property
    def name(self) -> str:
        return self._study.study_name

    def _read(self) -> dict[str, Any]:
        return self._study.user_attrs

    def _write(self, key: str, value: Any) -> None:
        self._study.set_user_attr(key, value)

    def _unreadable(self, what: str, error: Exception) -> StudyError:
        return StudyError(f"study {quoted(self.name)} holds an unreadable {what}: {error}")

    # The spec

    @property
    def train_spec(self) -> TrainSpec:
        """The study's spec with its types checked. Its ranges, names and files were
        validated when the study was created; a worker validates them again on its own host
        (`validate_train_spec`), a read-only command need not (and so needs no timm)."""
        values = self._read().get(TRAIN_SPEC)
        if values is None:
            raise StudyError(f"study {quoted(self.name)} was not made by this tool (no "
                             "train_spec)")
        try:
            return TrainSpec.from_dict(values, f"study {quoted(self.name)}: train")
        except SpecError as error:
            raise StudyError(str(error)) from None

    def store_train_spec(self, spec: TrainSpec) -> None:
        self._write(TRAIN_SPEC, spec.to_dict())

    @property
    def spec_model(self) -> str | None:
        """The spec's model as stored (None without one): results show on any host."""
        return self._spec_field("model")

    @property
    def spec_epochs(self) -> int | None:
        """The spec's epochs as stored (None without any)."""
        return self._spec_field("epochs")

    @property
    def stored_spec(self) -> dict[str, Any]:
        """The spec's dict as stored, unchecked ({} without one): results show on any host."""
        values = self._read().get(TRAIN_SPEC)
        return values if isinstance(values, dict) else {}

    def _spec_field(self, name: str) -> Any:
        return self.stored_spec.get(name)

    # What is searched

    @property
    def grid(self) -> GridSpace | None:
        """Every rank, alpha and dropout a grid has queued in the study; None before any."""
        return self._grid(self._read())

    def _grid(self, attrs: dict[str, Any]) -> GridSpace | None:
        values = attrs.get(GRID)
        if values is None:
            return None
        try:
            return GridSpace.from_values(**values)
        except (SpaceError, TypeError) as error:
            raise self._unreadable("grid", error) from None

    def add_grid(self, grid: GridSpace) -> None:
        """Record that `grid` was queued: the stored grid grows to cover it (written only
        when it does)."""
        stored = self.grid
        merged = stored.union(grid) if stored is not None else grid
        if merged != stored:
            self._write(GRID, merged.to_dict())

    @property
    def tpe_search(self) -> TpeSearch | None:
        """The study's TPE search; None for a study `search optuna` never ran on."""
        return self._tpe_search(self._read())

    def _tpe_search(self, attrs: dict[str, Any]) -> TpeSearch | None:
        values = attrs.get(TPE)
        if values is None:
            return None
        try:
            return TpeSearch.from_dict(values)
        except (SpaceError, TypeError) as error:
            raise self._unreadable("TPE search", error) from None

    def store_tpe_search(self, search: TpeSearch) -> None:
        self._write(TPE, search.to_dict())

    @property
    def tpe_pruner(self) -> str | None:
        """The TPE search's pruner as stored (None without a search)."""
        values = self._read().get(TPE)
        return values.get("pruner") if isinstance(values, dict) else None

    @property
    def searched_space(self) -> SearchedSpace:
        """Every value of each LoRA param the study's grid and TPE search cover."""
        attrs = self._read()
        search = self._tpe_search(attrs)
        return SearchedSpace.of(self._grid(attrs), search.space if search else None)

    # Where artifacts go

    @property
    def artifacts_folder(self) -> object:
        """The folder named at creation, as stored: `search.study.artifacts` checks it before
        any host uses it (None: a study made before studies named one)."""
        return self._read().get(ARTIFACTS)

    def store_artifacts_folder(self, folder: str) -> None:
        self._write(ARTIFACTS, folder)

    @property
    def artifacts_token(self) -> str | None:
        token = self._read().get(ARTIFACTS_TOKEN)
        return token if isinstance(token, str) else None

    def store_artifacts_token(self, token: str) -> None:
        self._write(ARTIFACTS_TOKEN, token)

    def note_artifact(self, key: str) -> str | None:
        """The id of the note's artifact `key` (one of NOTE_ARTIFACTS); None before one."""
        known = self._read().get(self._note_key(key))
        return known if isinstance(known, str) else None

    def store_note_artifact(self, key: str, artifact_id: str) -> None:
        self._write(self._note_key(key), artifact_id)

    @staticmethod
    def _note_key(key: str) -> str:
        if key not in NOTE_ARTIFACTS:
            raise ValueError(f"{key!r} is not one of {NOTE_ARTIFACTS}")
        return key

    # Settings a command chooses. `replace`: this command chose them, so they replace the
    # stored ones; otherwise they go only into a study that holds none (it keeps its own).

    @property
    def baselines(self) -> tuple[Baseline, ...]:
        return baselines_from_dicts(self._read().get(BASELINES)
                                    or [b.to_dict() for b in DEFAULT_BASELINES])

    def store_baselines(self, baselines: tuple[Baseline, ...], replace: bool) -> None:
        self._store_setting(BASELINES, [b.to_dict() for b in baselines], replace)

    @property
    def heartbeat(self) -> HeartbeatSettings:
        """The study's settings; the defaults for a study made before it stored any."""
        try:
            return HeartbeatSettings.from_dict(self._read().get(HEARTBEAT, {}))
        except (HeartbeatError, TypeError) as error:
            raise HeartbeatError(f"study {quoted(self.name)} holds unusable heartbeat "
                                 f"settings: {error}") from None

    def store_heartbeat(self, settings: HeartbeatSettings, replace: bool) -> None:
        self._store_setting(HEARTBEAT, settings.to_dict(), replace)

    @property
    def seeds(self) -> int:
        """How many replicates of each configuration; 1 for a study made before replicates
        (or holding a count out of range)."""
        value = self._read().get(SEEDS, 1)
        return value if isinstance(value, int) and 1 <= value <= MAX_SEEDS else 1

    def store_seeds(self, seeds: int, replace: bool) -> None:
        self._store_setting(SEEDS, seeds, replace)

    @property
    def race(self) -> dict[str, Any] | None:
        """The race's settings as stored ({"max_seeds", "margin"}), None when the study's
        seeds are fixed; `search.results.race.race_settings` makes them typed."""
        value = self._read().get(RACE)
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) != {"max_seeds", "margin"}:
            raise self._unreadable("race", f"not max_seeds and margin: {value!r}")
        return dict(value)

    def store_race(self, settings: dict[str, Any] | None, replace: bool) -> None:
        """Race with `settings` (None: fixed seeds)."""
        self._store_setting(RACE, settings, replace)

    def _store_setting(self, key: str, value: Any, replace: bool) -> None:
        if replace or key not in self._read():
            self._write(key, value)

    # What the data holds

    @property
    def classes(self) -> list[str]:
        """The class names in label order; [] before a worker has loaded the data."""
        return list(self._read().get(CLASSES) or [])

    def store_classes(self, classes: list[str]) -> None:
        """Store the first worker's classes; every later worker loads the same data."""
        self._store_setting(CLASSES, list(classes), replace=False)
