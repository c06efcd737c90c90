"""Synthetic studies stored as workers store them, without training: for measuring the results
code (verdict, leaderboard, report, dashboard notes) at 1,000-5,000 trials and 10,000 images.

    study = make_study("sqlite:///big.db", "synthetic", trials=1000, val_images=10_000,
                       seeds=3, artifacts_dir="big-artifacts")

The study is created by the real `search optuna` command (in this process, its data check
stubbed: the demo spec's 216 images are not what the outcomes hold, and checking them would
import torch and timm). The trials it queues (the baseline once per seed, one sampled TPE
trial) are claimed with `ask`, given their params the way a worker registers them, and
finished with `tell`; the first sampled trial's other seeds are queued by the worker's own
`enqueue_replicates`. Every further trial is stored COMPLETE with the rows `add_trials` would
write (`insert_trials`, 40x faster): the attributes a worker records
(`search.worker.trial_run`), its artifact records (as `optuna.artifacts.upload_artifact`
writes them; tiny real files when `artifacts_dir` is given), one intermediate value per epoch,
and per-example outcomes. The command runs again at the end with the final `--trials`, so the
study's TPE settings count every configuration. Dashboard notes: only the baselines' (a
worker writes them when a baseline starts); the leaderboard's are left to the code measured.

Outcomes are correlated as real ones are: a configuration has a true accuracy (0.80-0.92,
better with rank, noisy), an image has a difficulty shared by all trials (trials agree on
easy images), and the seeds of a configuration share most of its per-image noise. Each
trial is decided by a Gaussian copula: correct when `sqrt(RHO) e_i + sqrt(1-RHO) (sqrt(SEED_SHARE)
v_ci + sqrt(1-SEED_SHARE) w_cis) < Phi^-1(accuracy)`. Everything is a function of `seed`.

`layout` says where the outcomes and the per-epoch history live: "system" (trial system
attributes `outcomes` and `history`, where the dashboard does not ship them with every trial)
or "user" (user attributes of those names, as studies made before that change hold them).

`cached_study` builds a study once per set of parameters under `benchmarks/.cache/`
(git-ignored) for `benchmarks/results_scale.py`; copy it before a run that writes to it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import sys
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any
from unittest import mock

import numpy as np
import optuna
import sqlalchemy
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX, ArtifactMeta
from optuna.trial import FrozenTrial, TrialState

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEMO = ROOT / "studies" / "demo.toml"
CACHE = Path(__file__).resolve().parent / ".cache" / "results_scale"
# Bump when the generated studies change, so that cached ones are built again.
VERSION = 2  # 2: the history beside the outcomes (system attributes)
LAYOUTS = ("system", "user")
OUTCOMES = "outcomes"
HISTORY = "history"
CLASSES = [str(digit) for digit in range(10)]  # the demo's digits, as a worker stores them
TRAIN_IMAGES = 1222  # the demo's training split, for images_per_second
RHO = 0.6  # share of an image's difficulty in every trial's per-image noise
SEED_SHARE = 0.7  # share of a configuration's per-image noise its seeds have in common
BASELINE_ACCURACY = 0.80
START = datetime(2026, 12, 1, 9, 0, 0)
# The demo model's parameter counts (objectives.model.planned_parameters on
# studies/demo.toml, 10 classes): a LoRA rank adds 2,304 to the head's 970.
HEAD_PARAMS, PARAMS_PER_RANK, FROZEN_PARAMS = 970, 2304, 467_808
# What a finished trial leaves in the artifact store, in upload order, with its MIME type.
WEIGHTS_FILE = "trained_weights.safetensors"
ARTIFACT_FILES = {"confusion_matrix.png": "image/png", "learning_curves.png": "image/png",
                  "roc_curves.png": "image/png", "classification_report.csv": "text/csv",
                  "top_confusions.csv": "text/csv"}


@dataclass(frozen=True)
class Slot:
    """One trial to make: its configuration (-1: the baseline) and its replicate."""
    configuration: int
    replicate: int

    @property
    def baseline(self) -> bool:
        return self.configuration < 0


@dataclass
class Record:
    """What a worker leaves on a finished trial, ready for `ask`/`tell` or `add_trials`."""
    value: float
    user_attrs: dict[str, Any]
    system_attrs: dict[str, Any]
    intermediate: dict[int, float]
    seconds: float
    files: dict[str, str] = field(default_factory=dict)  # artifact id -> file name


# ---------------------------------------------------------------------------- the plan


def plan_slots(trials: int, seeds: int, baselines: int = 1) -> list[Slot]:
    """The trials of the study in the order a worker-run study numbers them: the baselines'
    replicates, the first sampled configuration and its replicates (queued when it completed),
    every other configuration's replicate 0 (queued up front by `search optuna`), then their
    replicates. `trials` counts them all; the last configurations may miss replicates."""
    first = (baselines + 1) * seeds
    if trials < first:
        raise ValueError(f"trials must be at least {first}: the baselines' and the first LoRA "
                         f"configuration's {seeds} seed(s)")
    configurations = math.ceil((trials - baselines * seeds) / seeds)
    slots = [Slot(-1 - b, r) for r in range(seeds) for b in range(baselines)]
    slots += [Slot(0, r) for r in range(seeds)]
    slots += [Slot(c, 0) for c in range(1, configurations)]
    slots += [Slot(c, r) for c in range(1, configurations) for r in range(1, seeds)]
    return slots[:trials]


# ---------------------------------------------------------------------------- outcomes


@dataclass
class Split:
    """One evaluation split: its labels' fingerprint and each image's difficulty."""
    name: str
    size: int
    order: str
    difficulty: np.ndarray

    @classmethod
    def make(cls, name: str, size: int, seed: int) -> Split:
        labels = np.arange(size, dtype=np.int64) % len(CLASSES)
        rng = rng_for(seed, "difficulty", name)
        return cls(name, size, f"{zlib.crc32(labels.tobytes()):08x}",
                   rng.standard_normal(size, dtype=np.float32))


def rng_for(seed: int, *keys: Any) -> np.random.Generator:
    """A generator for one purpose: the same draws whatever else was drawn before it."""
    words = [int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:4], "little")
             for k in keys]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def correct(split: Split, accuracy: float, seed: int, slot: Slot) -> np.ndarray:
    """Which images of `split` the trial `slot` classifies correctly."""
    shared = rng_for(seed, "configuration", slot.configuration, split.name)
    own = rng_for(seed, "trial", slot.configuration, slot.replicate, split.name)
    noise = (math.sqrt(SEED_SHARE) * shared.standard_normal(split.size, dtype=np.float32)
             + math.sqrt(1 - SEED_SHARE) * own.standard_normal(split.size, dtype=np.float32))
    latent = math.sqrt(RHO) * split.difficulty + math.sqrt(1 - RHO) * noise
    return latent < NormalDist().inv_cdf(accuracy)


def encode(bits: np.ndarray) -> str:
    """As `search.study.outcomes.encode_bits` stores a bool vector."""
    return base64.b64encode(np.packbits(bits).tobytes()).decode()


def outcomes_value(val: tuple[Split, np.ndarray], test: tuple[Split, np.ndarray]
                   ) -> dict[str, Any]:
    """The `outcomes` document of `search.study.outcomes.outcomes_attr`."""
    (val_split, val_bits), (test_split, test_bits) = val, test
    return {"val": encode(val_bits), "n_val": val_split.size, "val_order": val_split.order,
            "test": encode(test_bits), "n_test": test_split.size,
            "test_order": test_split.order}


def float32_mean(bits: np.ndarray) -> float:
    """An accuracy as the trainer computes it (`correct.float().mean().item()`)."""
    return float(np.float32(np.count_nonzero(bits)) / np.float32(bits.size))


def true_accuracy(seed: int, slot: Slot, params: dict[str, Any] | None) -> float:
    """A configuration's accuracy: better with rank, a little with alpha, worse with a large
    dropout; noisy; 0.80-0.92. A seed moves it by a few tenths of a point."""
    if params is None:
        base = BASELINE_ACCURACY
    else:
        rng = rng_for(seed, "accuracy", slot.configuration)
        base = (0.845 + 0.012 * math.log2(params["rank"] / 2)
                + 0.004 * math.log2(params["alpha"] / 2) - 0.08 * (params["dropout"] - 0.15) ** 2
                + 0.02 * rng.standard_normal())
    jitter = 0.003 * rng_for(seed, "seed accuracy", slot.configuration,
                             slot.replicate).standard_normal()
    return float(np.clip(base + jitter, 0.80, 0.92))


# ---------------------------------------------------------------------------- one trial


def parameter_counts(rank: int | None) -> dict[str, Any]:
    trainable = HEAD_PARAMS + PARAMS_PER_RANK * (rank or 0)
    total = FROZEN_PARAMS + trainable
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": 100 * trainable / total}


def history(final: float, epochs: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The per-epoch stats of a trial that ends at validation accuracy `final` (unrounded
    val_acc: what the trial reports; `record_history` rounds what it stores)."""
    rows = []
    for epoch in range(1, epochs + 1):
        behind = (epochs - epoch) * 0.03 * float(rng.uniform(0.5, 1.5))
        val_acc = final if epoch == epochs else max(0.05, final - behind)
        train_acc = min(1.0, val_acc + float(rng.uniform(-0.02, 0.04)))
        rows.append({"epoch": epoch, "train_loss": 1.6 * (1 - train_acc) + 0.05,
                     "train_acc": train_acc, "val_loss": 1.8 * (1 - val_acc) + 0.08,
                     "val_acc": val_acc})
    return rows


def stored_history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`search.worker.trial_run.record_history`'s rounding."""
    return [{key: value if key == "epoch" else round(value, 5) for key, value in row.items()}
            for row in rows]


def artifact_records(rng: np.random.Generator) -> tuple[dict[str, str], dict[str, str], str]:
    """(system attrs `artifacts:<id>`, artifact id -> file name, weights id) for a finished
    trial: the weights, then the five pictures and tables, as `upload_artifact` records them."""
    system, files = {}, {}
    for name, mimetype in {WEIGHTS_FILE: "application/octet-stream", **ARTIFACT_FILES}.items():
        artifact_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        meta = ArtifactMeta(artifact_id=artifact_id, filename=name, mimetype=mimetype,
                            encoding=None)
        system[ARTIFACTS_ATTR_PREFIX + artifact_id] = json.dumps(asdict(meta))
        files[artifact_id] = name
    weights = next(iter(files))
    return system, files, weights


@dataclass
class Generator:
    """Makes the records of a study's trials from `seed`."""
    seed: int
    val: Split
    test: Split
    epochs: int
    model: str
    base_seed: int
    layout: str

    @classmethod
    def for_study(cls, study: optuna.Study, seed: int, val_images: int,
                  test_images: int | None, layout: str) -> Generator:
        """The generator of a study `make_study` made with these arguments."""
        spec = study.user_attrs["train_spec"]
        return cls(seed, Split.make("val", val_images, seed),
                   Split.make("test", test_images or val_images, seed), spec["epochs"],
                   spec["model"], spec["seed"], layout)

    def record(self, slot: Slot, params: dict[str, Any] | None, enqueued: dict[str, Any]
               ) -> Record:
        """The finished trial `slot` with `params` (None: the baseline); `enqueued`: the user
        attributes it was queued with."""
        rng = rng_for(self.seed, "record", slot.configuration, slot.replicate)
        accuracy = true_accuracy(self.seed, slot, params)
        val_bits = correct(self.val, accuracy, self.seed, slot)
        test_bits = correct(self.test, accuracy, self.seed, slot)
        value, test_acc = float32_mean(val_bits), float32_mean(test_bits)
        rows = history(value, self.epochs, rng)
        seconds = float(rng.uniform(1.8, 2.4) if params is None else rng.uniform(4.5, 5.8))
        system, files, weights = artifact_records(rng)
        user = {**enqueued, "baseline": params is None, "model": self.model,
                "method": "head" if params is None else "lora", "pack": 1,
                "seed": self.base_seed + slot.replicate, "checkpoint": None,
                "epochs_done": self.epochs,
                "weights_artifact": weights, "artifacts": {name: i for i, name in files.items()
                                                           if name != WEIGHTS_FILE},
                "val_acc": value, "test_acc": test_acc,
                "f1": max(0.0, test_acc - float(rng.uniform(0.0, 0.006))),
                "auc_micro": 1 - (1 - test_acc) * float(rng.uniform(0.05, 0.09)),
                "auc_macro": 1 - (1 - test_acc) * float(rng.uniform(0.05, 0.1)),
                **parameter_counts(params["rank"] if params else None),
                "train_seconds": seconds,
                "images_per_second": TRAIN_IMAGES * self.epochs / seconds, "device": "cpu"}
        document = outcomes_value((self.val, val_bits), (self.test, test_bits))
        # The per-epoch history moved to the system attributes with the outcomes.
        (system if self.layout == "system" else user)[OUTCOMES] = document
        (system if self.layout == "system" else user)[HISTORY] = stored_history(rows)
        return Record(value, user, system, {r["epoch"]: r["val_acc"] for r in rows}, seconds,
                      files)


# ---------------------------------------------------------------------------- the study


def run_search_optuna(storage_url: str, study_name: str, trials: int, seeds: int,
                      artifacts_dir: str | None) -> None:
    """`search optuna --spec studies/demo.toml --trials N --workers 0 ...` in this process,
    its check of the data stubbed (the outcomes' images are not the demo's, and the check
    would import torch and timm)."""
    from search.cli import commands
    from search.cli.main import main

    argv = ["optuna", "--spec", str(DEMO), "--trials", str(trials), "--workers", "0",
            "--storage", storage_url, "--study", study_name]
    argv += ["--seeds", str(seeds)] if seeds > 1 else []
    argv += ["--artifacts", str(artifacts_dir)] if artifacts_dir is not None else []
    quiet = io.StringIO()
    with mock.patch.object(commands, "check_before_queueing", return_value="synthetic data"), \
            contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"search {' '.join(argv)} -> {code}: {quiet.getvalue().strip()}")


def suggest_params(trial: optuna.Trial, study: optuna.Study) -> dict[str, Any]:
    """Register rank, alpha and dropout as `search.worker.trial_run.suggest_point` does, with
    the bounds its `param_bounds` takes (every space the study searched, and a queued point's
    own values; the sampler keeps a queued point's values)."""
    from search.study.space import point_of
    from search.study.study_record import StudyRecord

    queued = study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
    bounds = StudyRecord(study).searched_space.bounds(point_of(queued) if queued else None)
    return {"rank": trial.suggest_int("rank", *map(int, bounds["rank"])),
            "alpha": trial.suggest_float("alpha", *bounds["alpha"]),
            "dropout": trial.suggest_float("dropout", *bounds["dropout"])}


@dataclass
class Files:
    """Tiny real files in the artifact folder: the first of each name written, the others hard
    links to it (30,000 artifacts of a 5,000-trial study cost no disk)."""
    folder: Path | None
    first: dict[str, Path] = field(default_factory=dict)

    def write(self, files: dict[str, str]) -> None:
        if self.folder is None:
            return
        for artifact_id, name in files.items():
            path = self.folder / artifact_id
            if name in self.first:
                try:
                    os.link(self.first[name], path)
                except OSError:
                    shutil.copyfile(self.first[name], path)
                continue
            path.write_bytes(file_content(name))
            self.first[name] = path


def file_content(name: str) -> bytes:
    """A small file of the right kind: an 8x8 PNG, a CSV header, an empty safetensors."""
    if name.endswith(".png"):
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (240, 240, 255)).save(buffer, "PNG")
        return buffer.getvalue()
    if name.endswith(".csv"):
        return b"class,precision,recall,f1,support\n"
    header = json.dumps({"__metadata__": {"synthetic": "true"}}).encode()
    return len(header).to_bytes(8, "little") + header


def finish_live(study: optuna.Study, generator: Generator, slot: Slot, files: Files) -> None:
    """Claim the next queued trial and finish it as a worker does (`TrialAttempt.begin`,
    `on_epoch`, `record`, `complete`)."""
    import optuna_dashboard

    from search.results.dashboard_notes import baseline_note

    trial = study.ask()
    enqueued = dict(trial.user_attrs)
    params = None if enqueued.get("baseline") else suggest_params(trial, study)
    record = generator.record(slot, params, enqueued)
    if params is None:
        optuna_dashboard.save_note(trial, baseline_note(generator.model))
    for step, value in record.intermediate.items():
        trial.report(value, step)
    files.write(record.files)
    for key, value in record.system_attrs.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    for key, value in record.user_attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, record.value)


def frozen(generator: Generator, slot: Slot, number: int, params: dict[str, Any],
           distributions: dict[str, Any], files: Files) -> FrozenTrial:
    """A finished trial for `add_trials`, as it was queued (replicate 0: a sampled TPE trial
    without params; another: its point's params, by `enqueue_replicates`) and then run, its
    times spread as several workers would have run it."""
    enqueued: dict[str, Any] = ({"baseline": False, "sampled": True} if slot.replicate == 0
                                else {"baseline": False, "replicate": slot.replicate})
    record = generator.record(slot, params, enqueued)
    files.write(record.files)
    start = START + timedelta(seconds=2.5 * number)
    fixed = {} if slot.replicate == 0 else dict(params)
    return FrozenTrial(number=number, state=TrialState.COMPLETE, value=record.value,
                       datetime_start=start,
                       datetime_complete=start + timedelta(seconds=record.seconds),
                       params=params, distributions=distributions,
                       user_attrs=record.user_attrs,
                       system_attrs={"fixed_params": fixed, **record.system_attrs},
                       intermediate_values=record.intermediate, trial_id=0)


def draw_params(seed: int, configuration: int, tpe: dict[str, Any]) -> dict[str, Any]:
    """A sampled configuration: rank and alpha from their sets, dropout from its range."""
    rng = rng_for(seed, "params", configuration)
    low, high = tpe["dropout_range"]
    return {"rank": int(rng.choice(tpe["ranks"])), "alpha": float(rng.choice(tpe["alphas"])),
            "dropout": float(rng.uniform(low, high))}


def bulk_trials(study: optuna.Study, generator: Generator, slots: list[Slot], first_number: int,
                files: Files) -> list[FrozenTrial]:
    """The trials after the live ones, with the distributions the worker registered."""
    live = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("baseline")]
    distributions = live[0].distributions
    known = {0: live[0].params}
    tpe = study.user_attrs["tpe"]
    trials = []
    for number, slot in enumerate(slots, start=first_number):
        if slot.configuration not in known:
            known[slot.configuration] = draw_params(generator.seed, slot.configuration, tpe)
        trials.append(frozen(generator, slot, number, known[slot.configuration],
                             distributions, files))
    return trials


def utc(moment: datetime | None) -> datetime | None:
    """A local time as Optuna's RDB storage keeps it (naive UTC, `TrialModel`)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment is not None else None


def insert_trials(storage: optuna.storages.RDBStorage, study_id: int,
                  trials: list[FrozenTrial]) -> None:
    """Store finished trials with the rows `add_trials` writes (`RDBStorage._create_new_trial`:
    the trial, its value, params, user and system attributes, intermediate values), in one
    transaction: `add_trials` costs 41 ms a trial here (a query per attribute), 3.5 minutes
    for 5,000. Private tables of Optuna's; `tests/test_synthetic_study.py` checks that both
    ways read back the same."""
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    with storage.engine.begin() as connection:
        connection.execute(sqlalchemy.insert(table), [
            {"number": t.number, "study_id": study_id, "state": t.state,
             "datetime_start": utc(t.datetime_start),
             "datetime_complete": utc(t.datetime_complete)} for t in trials])
        ids = dict(connection.execute(
            sqlalchemy.select(table.c.number, table.c.trial_id).where(
                table.c.study_id == study_id, table.c.number >= trials[0].number)).all())
        rows: dict[Any, list[dict[str, Any]]] = {models.TrialValueModel: [],
                                                 models.TrialParamModel: [],
                                                 models.TrialUserAttributeModel: [],
                                                 models.TrialSystemAttributeModel: [],
                                                 models.TrialIntermediateValueModel: []}
        for trial in trials:
            trial_id = ids[trial.number]
            value, kind = models.TrialValueModel.value_to_stored_repr(trial.value)
            rows[models.TrialValueModel].append({"trial_id": trial_id, "objective": 0,
                                                 "value": value, "value_type": kind})
            rows[models.TrialParamModel] += [
                {"trial_id": trial_id, "param_name": name,
                 "param_value": trial.distributions[name].to_internal_repr(value),
                 "distribution_json": distribution_to_json(trial.distributions[name])}
                for name, value in trial.params.items()]
            for model, attrs in ((models.TrialUserAttributeModel, trial.user_attrs),
                                 (models.TrialSystemAttributeModel, trial.system_attrs)):
                rows[model] += [{"trial_id": trial_id, "key": key, "value_json": json.dumps(v)}
                                for key, v in attrs.items()]
            rows[models.TrialIntermediateValueModel] += [
                {"trial_id": trial_id, "step": step,
                 **dict(zip(("intermediate_value", "intermediate_value_type"),
                            models.TrialIntermediateValueModel
                            .intermediate_value_to_stored_repr(value), strict=True))}
                for step, value in trial.intermediate_values.items()]
        for model, values in rows.items():
            if values:
                connection.execute(sqlalchemy.insert(model.__table__), values)


def make_study(storage_url: str, study_name: str, trials: int, val_images: int,
               test_images: int | None = None, seeds: int = 1, layout: str = "system",
               seed: int = 0, artifacts_dir: str | Path | None = None) -> optuna.Study:
    """A study of `trials` COMPLETE trials (baselines and all seeds included) whose outcomes
    cover `val_images` validation and `test_images` (default: as many) test images."""
    from search.study.enqueue import enqueue_replicates
    from search.study.open_study import open_study
    from search.study.space import point_of
    from search.study.storage import open_storage
    from search.worker.sampler import searching_study

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if artifacts_dir is not None:
        Path(artifacts_dir).mkdir(parents=True, exist_ok=True)
        artifacts_dir = Path(artifacts_dir).resolve()
    run_search_optuna(storage_url, study_name, 1, seeds, artifacts_dir)
    storage = open_storage(storage_url, must_exist=True)
    study = open_study(storage, study_name)
    study.set_user_attr("classes", CLASSES)  # what a worker stores when it starts
    spec = study.user_attrs["train_spec"]
    baselines = len(study.user_attrs["baselines"])
    slots = plan_slots(trials, seeds, baselines)
    generator = Generator.for_study(study, seed, val_images, test_images, layout)
    files = Files(Path(artifacts_dir) if artifacts_dir is not None else None)
    live = searching_study(storage, study, spec["epochs"])
    first_lora = baselines * seeds
    for slot in slots[:first_lora + 1]:
        finish_live(live, generator, slot, files)
    enqueue_replicates(live, point_of(live.trials[first_lora].params))
    for slot in slots[first_lora + 1:first_lora + seeds]:
        finish_live(live, generator, slot, files)
    done = len(study.get_trials(deepcopy=False))
    if done < len(slots):
        insert_trials(storage, study._study_id,
                      bulk_trials(study, generator, slots[done:], done, files))
    configurations = len({s.configuration for s in slots if not s.baseline})
    run_search_optuna(storage_url, study_name, configurations, seeds, artifacts_dir)
    return optuna.load_study(study_name=study_name, storage=storage)


def add_finished_trial(study: optuna.Study, val_images: int, test_images: int | None = None,
                       layout: str = "system", seed: int = 0, configuration: int = 10**6,
                       artifacts_dir: str | Path | None = None) -> int:
    """One more LoRA configuration in a study `make_study` made with these arguments: queued
    as a grid point is, then claimed and finished as a worker finishes it (a benchmark times
    what follows: the worker's refresh). Its number."""
    from search.worker.sampler import searching_study

    generator = Generator.for_study(study, seed, val_images, test_images, layout)
    params = draw_params(seed, configuration, study.user_attrs["tpe"])
    study.enqueue_trial(params, user_attrs={"baseline": False})
    live = searching_study(study._storage, study, generator.epochs)
    files = Files(Path(artifacts_dir) if artifacts_dir is not None else None)
    finish_live(live, generator, Slot(configuration, 0), files)
    return live.trials[-1].number


# ---------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class CachedStudy:
    """A built study: its SQLite file, study name and artifact folder."""
    database: Path
    name: str
    artifacts: Path

    @property
    def url(self) -> str:
        return f"sqlite:///{self.database}"


def cache_key(trials: int, val_images: int, test_images: int | None, seeds: int, layout: str,
              seed: int) -> str:
    return (f"v{VERSION}-t{trials}-val{val_images}-test{test_images or val_images}-s{seeds}-"
            f"{layout}-seed{seed}")


def cached_study(trials: int, val_images: int, test_images: int | None = None, seeds: int = 1,
                 layout: str = "system", seed: int = 0, cache: Path = CACHE) -> CachedStudy:
    """The study these parameters make, built once; a build that did not finish (no `built`
    mark) is built again."""
    folder = cache / cache_key(trials, val_images, test_images, seeds, layout, seed)
    built = CachedStudy(folder / "study.db", "synthetic", folder / "artifacts")
    if (folder / "built").is_file():
        return built
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    study = make_study(built.url, built.name, trials, val_images, test_images, seeds, layout,
                       seed, artifacts_dir=built.artifacts)
    study._storage._backend.engine.dispose()  # the last connection folds the WAL back in
    (folder / "built").write_text(json.dumps({"trials": trials, "val_images": val_images,
                                              "test_images": test_images or val_images,
                                              "seeds": seeds, "layout": layout, "seed": seed}))
    return built


def copy_database(source: Path, target: Path) -> Path:
    """A copy of a SQLite study (with its WAL, if any) that a run may write to."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    for suffix in ("-wal", "-shm"):
        extra = source.with_name(source.name + suffix)
        if extra.is_file():
            shutil.copyfile(extra, target.with_name(target.name + suffix))
    return target


def link_folder(source: Path, target: Path) -> Path:
    """A copy of an artifact folder made of hard links: a run adds and removes files in it
    (the dashboard's chart), never changes one."""
    shutil.copytree(source, target, copy_function=os.link, dirs_exist_ok=True)
    return target
