"""Study specs: TOML files in `studies/` plus command-line overrides, validated up front.

A spec file has these tables:

    [study]   name = "...", baselines = [...], seeds = N    the default study name; extra no-LoRA
              reference trials, e.g. ["head", "resnet50:head"] (see `search.study.baselines`);
              how many seeds train every configuration (default 1; `search.study.replicates`),
              or seeds = "auto" with max_seeds = N, margin = PP: race them
              (`search.results.race`)
    [grid]    ranks = [...], alphas = [...], dropouts = [...], and optionally lrs = [...],
              target_sets = ["qkv", "all", ...], scalings = ["lora", "rslora", "dora"]
    [optuna]  trials, ranks, alphas, dropout_range = [lo, hi], seed, pruner, startup_trials,
              and optionally lr_range = [lo, hi], target_sets, scalings
    [heartbeat] interval, grace_period, max_retries (seconds, seconds, count; see
              `search.study.heartbeat_settings`)
    [train]   every field of `objectives.spec.TrainSpec`, with [train.augment] for augmentation

Every problem is reported as a `SpecError` whose message is one line naming the file and key,
before anything touches a database.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objectives.spec import VIT_TARGETS, SpecError, TrainSpec
from search.study.baselines import DEFAULT_BASELINES, Baseline, BaselineError, parse_baselines
from search.study.heartbeat_settings import HeartbeatError, HeartbeatSettings
from search.study.replicates import AUTO, MAX_MARGIN_PP, MAX_SEEDS
from search.study.space import GridSpace, SpaceError, TpeSearch

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"
DEFAULT_SPEC = STUDIES_DIR / "cifar100-vit-s.toml"
# Fields that say where this host finds things or how fast it computes, not what a trial
# computes: each command or worker may set its own without conflicting with the study's stored spec.
LOCAL_FIELDS = ("data_dir", "download", "device", "compile")


@dataclass(frozen=True)
class StudySpec:
    """A study spec file: the keys of its [study] table, and its other tables."""

    name: str = dataclasses.field(metadata={
        "help": "the default study name (--study overrides it)",
        "default": "the spec file's name without .toml"})
    train: TrainSpec = dataclasses.field(metadata={
        "help": "what each trial trains: data, model and optimisation; the defaults reproduce "
                "the public model card", "table": "train"})
    grid: GridSpace = dataclasses.field(metadata={
        "help": "the grid `search grid` queues: every rank x alpha x dropout (x learning rate "
                "x target set x variant, where given; values kept sorted and unique)",
        "table": "grid"})
    tpe: TpeSearch = dataclasses.field(default_factory=TpeSearch, metadata={
        "help": "the TPE search of `search optuna`: the model card's 10 trials, space and "
                "seed by default", "table": "optuna"})
    heartbeat: HeartbeatSettings = dataclasses.field(default_factory=HeartbeatSettings,
                                                     metadata={
        "help": "how a dead worker's trial is told from a slow one; stored in the study, so "
                "that every worker judges alike", "table": "heartbeat"})
    baselines: tuple[Baseline, ...] = dataclasses.field(default=DEFAULT_BASELINES, metadata={
        "help": "no-LoRA reference trials: \"head\" (the study's model), \"MODEL:head\" or a "
                "table with model, model_kwargs, weights, head_hidden; the study's own "
                "head-only baseline is always included",
        "default": '["head"]'})
    # None: not chosen (a study keeps its own; a new one has 1).
    seeds: int | str | None = dataclasses.field(default=None, metadata={
        "help": f"how many seeds train every configuration, 1 to {MAX_SEEDS}; \"auto\": race "
                "them, one seed a round for the configurations not yet told apart from the "
                "best (`search grid` only)",
        "default": "1 (a study keeps its own)"})
    max_seeds: int = dataclasses.field(default=10, metadata={
        "help": f"with seeds = \"auto\": the most seeds a configuration gets, 1 to "
                f"{MAX_SEEDS}"})
    margin: float = dataclasses.field(default=0.5, metadata={
        "help": "with seeds = \"auto\": the race ends when the survivors are equivalent "
                "within this many percentage points of validation accuracy, above 0 and at "
                f"most {MAX_MARGIN_PP:g}"})

    @property
    def races(self) -> bool:
        return self.seeds == AUTO

    @property
    def race_settings(self) -> dict[str, float | int] | None:
        """The race's settings as a study stores them (`StudyRecord.race`); None: fixed."""
        return {"max_seeds": self.max_seeds, "margin": self.margin / 100} if self.races \
            else None


def load_spec(path: str | Path | None = None) -> StudySpec:
    """Read and validate a study spec; `None` means the model-card default."""
    path = Path(path) if path is not None else DEFAULT_SPEC
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read spec file {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"spec file {path} is not valid TOML: {error}") from None
    weights = document.get("train", {}).get("weights")
    if isinstance(weights, str):
        # A checkpoint named in a spec file is found relative to that file, not to the shell.
        document["train"]["weights"] = str((path.parent / weights).resolve())
    return parse_spec(document, source=str(path), default_name=path.stem)


def parse_spec(document: dict[str, Any], source: str, default_name: str) -> StudySpec:
    unknown = set(document) - {"study", "grid", "optuna", "heartbeat", "train"}
    if unknown:
        raise SpecError(f"{source}: unknown table(s) {sorted(unknown)}; "
                        "expected study, grid, optuna, heartbeat, train")
    study = dict(document.get("study", {}))
    name = study.pop("name", default_name)
    listed_baselines = study.pop("baselines", ["head"])
    seeds = study.pop("seeds", None)
    max_seeds = study.pop("max_seeds", 10)
    margin = study.pop("margin", 0.5)
    if study:
        raise SpecError(f"{source}: unknown key(s) in [study]: {sorted(study)}")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"{source}: study.name must be a non-empty string")
    if seeds is not None and seeds != AUTO and (
            isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS):
        raise SpecError(f"{source}: study.seeds must be an integer from 1 to {MAX_SEEDS} or "
                        f"\"auto\", got {seeds!r}")
    check_race(max_seeds, margin, source)
    train = train_spec_from_dict(document.get("train", {}), source)
    spec_folder = Path(source).parent if Path(source).is_file() else None
    try:
        baselines = parse_baselines(listed_baselines, train, spec_folder)
    except BaselineError as error:
        raise SpecError(f"{source}: study.{error}") from None
    grid_values = dict(document.get("grid", {}))
    unknown = set(grid_values) - {"ranks", "alphas", "dropouts", "lrs", "target_sets",
                                  "scalings"}
    if unknown:
        raise SpecError(f"{source}: unknown key(s) in [grid]: {sorted(unknown)}")
    try:
        grid = GridSpace.from_values(**grid_values)
    except SpaceError as error:
        raise SpecError(f"{source}: grid: {error}") from None
    try:
        tpe = TpeSearch.from_dict(document.get("optuna", {}))
    except (SpaceError, TypeError) as error:
        raise SpecError(f"{source}: optuna: {error}") from None
    try:
        heartbeat = HeartbeatSettings.from_dict(document.get("heartbeat", {}))
    except HeartbeatError as error:
        raise SpecError(f"{source}: {error}") from None
    return StudySpec(name=name, train=train, grid=grid, tpe=tpe, heartbeat=heartbeat,
                     baselines=baselines, seeds=seeds, max_seeds=max_seeds,
                     margin=float(margin))


def check_race(max_seeds: Any, margin: Any, source: str) -> None:
    if isinstance(max_seeds, bool) or not isinstance(max_seeds, int) \
            or not 1 <= max_seeds <= MAX_SEEDS:
        raise SpecError(f"{source}: study.max_seeds must be an integer from 1 to {MAX_SEEDS}, "
                        f"got {max_seeds!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) \
            or not 0 < margin <= MAX_MARGIN_PP:
        raise SpecError(f"{source}: study.margin must be a number of percentage points above "
                        f"0 and at most {MAX_MARGIN_PP:g}, got {margin!r}")


def train_spec_from_dict(values: dict[str, Any], source: str) -> TrainSpec:
    """A validated `TrainSpec` from plain values (a TOML table or a study's stored dict)."""
    spec = TrainSpec.from_dict(values, f"{source}: train")
    validate_train_spec(spec, source)
    return spec


def validate_train_spec(spec: TrainSpec, source: str) -> None:
    """Range checks that the type checks above cannot express."""
    def require(condition: bool, message: str) -> None:
        if not condition:
            raise SpecError(f"{source}: train.{message}")

    require(re.fullmatch(r"[\w.]+(,[\w.]+)*", spec.targets.replace(" ", "")) is not None,
            f"targets must be comma-separated layer names ({', '.join(VIT_TARGETS)} for a ViT; "
            f"e.g. conv2 or conv1,conv2 for a ResNet), got {spec.targets!r}")
    require(spec.head_hidden >= 0, f"head_hidden must be >= 0, got {spec.head_hidden}")
    require(spec.epochs >= 1, f"epochs must be >= 1, got {spec.epochs}")
    require(spec.batch_size >= 1, f"batch_size must be >= 1, got {spec.batch_size}")
    require(spec.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {spec.eval_batch_size}")
    require(spec.image_size >= 1, f"image_size must be >= 1, got {spec.image_size}")
    require(spec.lr > 0, f"lr must be > 0, got {spec.lr}")
    require(spec.weight_decay >= 0, f"weight_decay must be >= 0, got {spec.weight_decay}")
    require(0 < spec.val_fraction < 1, f"val_fraction must be in (0, 1), got {spec.val_fraction}")
    require(0 < spec.test_fraction < 1,
            f"test_fraction must be in (0, 1), got {spec.test_fraction}")
    require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec.device) is not None,
            f"device must be auto, cpu, cuda or cuda:N, got {spec.device!r}")
    require(spec.weights is None or Path(spec.weights).exists(),
            f"weights: no such file or folder {spec.weights!r}")
    augment = spec.augment
    require(0 <= augment.hflip <= 1, f"augment.hflip must be in [0, 1], got {augment.hflip}")
    require(augment.crop_padding >= 0,
            f"augment.crop_padding must be >= 0, got {augment.crop_padding}")
    require(0 <= augment.affine_degrees <= 180,
            f"augment.affine_degrees must be in [0, 180], got {augment.affine_degrees}")
    require(0 <= augment.affine_translate < 1,
            f"augment.affine_translate must be in [0, 1), got {augment.affine_translate}")
    low, high = augment.affine_scale
    require(0 < low <= high, f"augment.affine_scale must be [low, high] with 0 < low <= high, "
                             f"got {list(augment.affine_scale)}")
    require(all(x >= 0 for x in augment.color_jitter) and augment.color_jitter[3] <= 0.5,
            f"augment.color_jitter must be >= 0 with hue <= 0.5, got {augment.color_jitter}")
    require(all(s > 0 for s in augment.std), f"augment.std must be > 0, got {augment.std}")
    check_names(spec, source)
    check_weights_folder(spec, source)


def check_names(spec: TrainSpec, source: str) -> None:
    # Imported here: timm and the dataset table are only needed once a spec is checked.
    import timm

    from objectives.data import DatasetError, check_dataset_name

    if not timm.is_model(spec.model):
        raise SpecError(f"{source}: unknown timm model {spec.model!r} (see timm.list_models())")
    try:
        check_dataset_name(spec.dataset)
    except DatasetError as error:
        raise SpecError(f"{source}: {error}") from None
    check_layers(spec, source)


def check_layers(spec: TrainSpec, source: str) -> None:
    """LoRA's target layers must exist in the model and the head must be replaceable."""
    from objectives.model import ModelError, check_targets

    try:
        check_targets(spec, num_classes=2)  # any class count: the head is not a target
    except ModelError as error:
        raise SpecError(f"{source}: train.{error}") from None


def check_weights_folder(spec: TrainSpec, source: str) -> None:
    """A `weights` folder (an earlier study's export) must hold merged weights that fit the
    model, checked now so that a misfit stops the command before it creates a study."""
    if spec.weights is None or not Path(spec.weights).is_dir():
        return
    from objectives.model import ModelError, check_export_folder

    try:
        check_export_folder(spec)
    except ModelError as error:
        raise SpecError(f"{source}: train.weights: {error}") from None


def with_overrides(spec: StudySpec, name: str | None = None, grid: GridSpace | None = None,
                   heartbeat: dict[str, int | None] | None = None,
                   seeds: int | str | None = None, max_seeds: int | None = None,
                   margin: float | None = None,
                   **train_overrides: Any) -> StudySpec:
    """The spec with single fields replaced by command-line values (None = not given)."""
    given = {key: value for key, value in train_overrides.items() if value is not None}
    train = spec.train
    if given:
        merged = {**train.to_dict(), **given}
        train = train_spec_from_dict(merged, "command line")
    try:
        beats = spec.heartbeat.with_overrides(**(heartbeat or {}))
    except HeartbeatError as error:
        raise SpecError(f"command line: {error}") from None
    return StudySpec(name=name or spec.name, train=train, grid=grid or spec.grid, tpe=spec.tpe,
                     heartbeat=beats, baselines=spec.baselines, seeds=seeds or spec.seeds,
                     max_seeds=max_seeds or spec.max_seeds, margin=margin or spec.margin)


def describe_differences(stored: TrainSpec, asked: TrainSpec) -> list[str]:
    """`field: stored -> asked` for every field that differs (augment fields flattened),
    host-local fields excepted."""
    def flat(spec: TrainSpec) -> dict[str, Any]:
        values = spec.to_dict()
        augment = values.pop("augment")
        return {**values, **{f"augment.{k}": v for k, v in augment.items()}}

    old, new = flat(stored), flat(asked)
    return [f"{key}: {old[key]!r} -> {new[key]!r}" for key in old
            if old[key] != new[key] and key not in LOCAL_FIELDS]
