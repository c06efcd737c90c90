"""What each `search` subcommand does, once its flags have been parsed.

The training stack (torch, timm, peft) is imported inside the commands that train, predict
or count parameters, never at the top: reading a study, or refusing a bad spec, must not wait
for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import shlex
from pathlib import Path
from typing import Any

import optuna

from objectives.spec import TARGET_SETS, LoraParams, TrainSpec
from search.study.artifacts import artifact_store, artifacts_folder
from search.study.enqueue import enqueue_grid
from search.study.enqueue_lock import enqueue_lock
from search.study.heartbeat_settings import HEARTBEAT_FLAGS
from search.study.names import quoted
from search.study.open_study import NewStudy, StudyError, open_study
from search.study.space import EXTRA_PARAMS, GridSpace, TpeSearch
from search.study.storage import (
    check_url,
    default_artifacts_dir,
    open_storage,
    shown,
    sqlite_path,
)
from search.study.study_record import StudyRecord
from search.study.study_spec import StudySpec, load_spec, with_overrides
from search.study.tpe_search import (
    check_grid_fits,
    enqueue_tpe_budget,
    lora_trial_counts,
    settle_search,
)

LOG = logging.getLogger(__name__)

# [train] field -> flag attribute
TRAIN_FLAGS = {"model": "model", "weights": "weights", "targets": "targets", "dataset": "dataset",
               "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "train_seed",
               "image_size": "image_size", "val_fraction": "val_fraction"}


def quiet_optuna() -> None:
    """Optuna's INFO lines ("A new study created ...") repeat what our own messages say, and
    its experimental-feature warnings (heartbeats) are about its API, not the user's run."""
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run(args: argparse.Namespace, local: dict[str, Any]) -> int:
    handler = {"grid": grid, "optuna": tpe_search, "worker": worker, "dashboard": dashboard,
               "leaderboard": show_leaderboard, "report": report, "export": export,
               "predict": predict_images}[args.command]
    return handler(args, local)


def heartbeat_flags(args: argparse.Namespace) -> dict[str, int | None]:
    return {key: getattr(args, flag.removeprefix("--").replace("-", "_"))
            for key, flag in HEARTBEAT_FLAGS.items()}


def spec_from_flags(args: argparse.Namespace, local: dict[str, Any]) -> StudySpec:
    spec = load_spec(args.spec)
    overrides = {key: getattr(args, flag) for key, flag in TRAIN_FLAGS.items()}
    return with_overrides(spec, name=args.study, heartbeat=heartbeat_flags(args),
                          seeds=args.seeds, max_seeds=getattr(args, "max_seeds", None),
                          margin=getattr(args, "margin", None), **overrides, **local)


def spec_given(args: argparse.Namespace) -> bool:
    """Whether the command names a spec (file or fields) that an existing study must match."""
    return args.spec is not None or any(getattr(args, f) is not None for f in TRAIN_FLAGS.values())


def grid_from_flags(args: argparse.Namespace, spec: StudySpec) -> GridSpace:
    return GridSpace.from_values(ranks=args.ranks or spec.grid.ranks,
                                 alphas=args.alphas or spec.grid.alphas,
                                 dropouts=args.dropouts or spec.grid.dropouts,
                                 lrs=args.lrs or spec.grid.lrs,
                                 target_sets=args.targets_sets or spec.grid.target_sets,
                                 scalings=args.scalings or spec.grid.scalings)


def tpe_from_flags(args: argparse.Namespace, spec: StudySpec) -> tuple[TpeSearch, set[str]]:
    """The TPE search asked for, and the names of the settings the user chose (flags, or all of
    them with --spec) as opposed to defaults."""
    flags = {"trials": args.trials, "ranks": args.ranks, "alphas": args.alphas,
             "dropout_range": args.dropout_range, "seed": args.seed, "pruner": args.pruner,
             "lr_range": args.lr_range, "target_sets": args.targets_sets,
             "scalings": args.scalings}
    typed = {key: value for key, value in flags.items() if value is not None}
    search = TpeSearch.from_dict({**spec.tpe.to_dict(), **typed})
    given = set(search.to_dict()) if args.spec is not None else set(typed)
    return search, given


def set_up_study(args: argparse.Namespace, spec: StudySpec,
                 storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create or join the study and store this command's baselines, seeds and heartbeat
    settings where it chose them (a spec file, flags) or the study holds none; the caller
    holds the study's enqueue lock."""
    artifacts = str(Path(args.artifacts).resolve()) if args.artifacts else \
        str(default_artifacts_dir(args.storage))
    study = open_study(storage, spec.name,
                       create=NewStudy(spec.train, artifacts, spec_given(args)))
    record = StudyRecord(study)
    record.store_baselines(spec.baselines, replace=args.spec is not None)
    if spec.races:  # round 1 is one seed; workers queue the rest (`search.worker.race_rounds`)
        record.store_seeds(1, replace=True)
        record.store_race(spec.race_settings, replace=True)
    else:
        record.store_seeds(spec.seeds or 1, replace=spec.seeds is not None)
        record.store_race(None, replace=spec.seeds is not None)
    record.store_heartbeat(spec.heartbeat, replace=args.spec is not None or any(
        v is not None for v in heartbeat_flags(args).values()))
    return study


def existing_study(args: argparse.Namespace) -> optuna.Study:
    """The study a read-only command names (--study, else the storage's only one)."""
    return open_study(open_storage(args.storage, must_exist=True), args.study)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def gpu_ids(args: argparse.Namespace) -> list[int]:
    from objectives.train import visible_gpus  # torch

    return list(args.gpus) if args.gpus else list(range(visible_gpus()))


def worker_hint(study_name: str, storage_url: str) -> str:
    """The command that joins the study, ready to paste into a shell (password hidden)."""
    return (f"start workers with: search worker --study {shlex.quote(study_name)} "
            f"--storage {shlex.quote(shown(storage_url))}")


def run_workers_and_report(args: argparse.Namespace, local: dict[str, Any], study: optuna.Study,
                           workers: int, gpus: list[int]) -> int:
    if workers == 0:
        LOG.info(worker_hint(study.study_name, args.storage))
        return 0
    from search.results.leaderboard import render_board, study_board
    from search.worker.launch import run_local_workers
    from search.worker.options import WorkerOptions

    # The heartbeat flags are not the workers' own: they were stored in the study.
    options = WorkerOptions(study.study_name, args.storage,
                            artifacts=artifacts_folder(study, args.storage, args.artifacts),
                            pack_setting=args.pack, storage_timeout=args.storage_timeout,
                            verbosity=args.verbosity, **local)
    code = run_local_workers(options, workers, gpus)
    print(render_board(study_board(study), "table"))
    return code


def planned_trials(spec: StudySpec) -> list[dict[str, Any]]:
    """Baselines first, then the grid, each with its parameter counts (no weights loaded);
    with seeds, the whole list once per seed."""
    grid_points = [(spec.train, point) for point in spec.grid.points(spec.train)]
    return planned_rows(spec, [*baseline_trials(spec), *grid_points], max(spec.grid.ranks),
                        extras=tuple(name for name in EXTRA_PARAMS if spec.grid.searches(name)),
                        target_sets=spec.grid.target_sets)


def baseline_trials(spec: StudySpec) -> list[tuple[TrainSpec, None]]:
    from search.study.baselines import baseline_train_spec

    return [(baseline_train_spec(spec.train, b.train_overrides()), None)
            for b in spec.baselines]


def planned_rows(spec: StudySpec, trials: list[tuple[TrainSpec, LoraParams | None]],
                 largest_rank: int, extras: tuple[str, ...] = (),
                 target_sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`trials` (their spec and LoRA point, None for a baseline) with their parameter counts
    and the `extras` columns of `planned_columns`, once per seed; refuses a rank the model's
    smallest adapted layer (of the spec's targets and of `target_sets`) cannot take."""
    from objectives.data import dataset_num_classes
    from objectives.model import check_rank_fits_model, planned_parameters  # torch, timm, peft

    num_classes = dataset_num_classes(spec.train)
    check_rank_fits_model(spec.train, num_classes, largest_rank)
    check_target_sets(spec.train, target_sets, largest_rank, num_classes)
    plan = []
    seeds = 1 if spec.races else spec.seeds or 1
    for replicate, (train, point) in itertools.product(range(seeds), trials):
        count = planned_parameters(train, num_classes, point)
        seed = {"seed": train.seed + replicate} if seeds > 1 else {}
        plan.append({**seed, "model": train.model, "method": "lora" if point else "head",
                     "baseline": point is None,
                     "rank": point.rank if point else None,
                     "alpha": point.alpha if point else None,
                     "dropout": point.dropout if point else None,
                     **{key: value for key, value in planned_columns(train, point).items()
                        if key in extras},
                     "trainable_params": count.trainable, "total_params": count.total,
                     "trainable_pct": round(count.trainable_pct, 4)})
    return plan


def planned_columns(train: TrainSpec, point: LoraParams | None) -> dict[str, Any]:
    """The learning rate, adapted layers and variant a planned trial trains with, as the
    leaderboard will show them (`search.results.point_columns`)."""
    from search.results.point_columns import PointColumns

    if point is None:  # the baseline trains the head alone, at the spec's lr
        return {"lr": train.lr, "targets": None, "scaling": None}
    return PointColumns(spec_lr=train.lr, spec_targets=train.targets).effective(point)


def check_target_sets(train: TrainSpec, target_sets: tuple[str, ...], largest_rank: int,
                      num_classes: int) -> None:
    """Each set of layers a search adapts must exist in the model and take its largest
    rank (the spec's own targets are checked with the spec)."""
    from objectives.model import ModelError, check_rank_fits_model, check_targets
    from objectives.spec import target_set

    for name in target_sets:
        layers = dataclasses.replace(train, targets=target_set(name))
        try:
            check_targets(layers, num_classes)
            check_rank_fits_model(layers, num_classes, largest_rank)
        except ModelError as error:
            raise ModelError(f"target set {name} ({layers.targets}): {error}") from None


def print_plan(plan: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(plan, indent=1))
        return
    import pandas as pd

    frame = pd.DataFrame(plan)
    if "rank" in frame:
        frame = frame.astype({"rank": "Int64"})
    print(frame.to_string(index=False, na_rep="-"))


def study_if_exists(url: str, name: str) -> optuna.Study | None:
    """The study `name` if the storage holds it, else None. Reads the storage, writes nothing
    (a missing SQLite file is not created)."""
    check_url(url)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return None
    try:
        return open_study(open_storage(url, must_exist=True), name)
    except StudyError:  # no such study yet
        return None


def trained_spec(args: argparse.Namespace, spec: StudySpec, local: dict[str, Any]) -> TrainSpec:
    """What the study's trials will train: an existing study's own spec (it keeps it, with
    this host's local fields), else this command's. Reads the storage, writes nothing."""
    study = study_if_exists(args.storage, spec.name)
    if study is None:
        return spec.train
    try:
        stored = StudyRecord(study).train_spec
    except StudyError:  # not this tool's: setting the study up says so
        return spec.train
    return dataclasses.replace(stored, **local)


def check_before_queueing(args: argparse.Namespace, spec: StudySpec, local: dict[str, Any],
                          largest_rank: int, target_sets: tuple[str, ...]) -> str:
    """Refuse, before anything is written, data that cannot make a trial (unreadable images,
    splits that would be empty or miss a class) and a rank larger than the smallest adapted
    layer allows; the split sizes, to say when the study is created or joined."""
    from objectives.data import check_dataset  # torch
    from objectives.model import check_rank_fits_model

    train = trained_spec(args, spec, local)
    summary = check_dataset(train)
    check_rank_fits_model(train, summary.num_classes, largest_rank)
    check_target_sets(train, target_sets, largest_rank, summary.num_classes)
    return summary.describe()


def local_worker_plan(args: argparse.Namespace) -> tuple[int, list[int]]:
    """How many local workers a grid / optuna command starts, and on which GPUs."""
    if args.workers == 0 and args.workers_per_gpu is None:  # only queueing: no torch needed
        return 0, []
    from search.worker.launch import worker_count

    gpus = gpu_ids(args)
    return worker_count(args.workers, args.workers_per_gpu, gpus), gpus


def grid(args: argparse.Namespace, local: dict[str, Any]) -> int:
    spec = spec_from_flags(args, local)
    workers, gpus = local_worker_plan(args)
    spec = with_overrides(spec, grid=grid_from_flags(args, spec))
    if args.dry_run:
        plan = planned_trials(spec)
        print_plan(plan, args.format)
        if spec.races:
            LOG.info(f"race: round 1 queues these {plural(len(plan), 'trial')} (one seed "
                     f"each); a race costs at most {len(plan) * spec.max_seeds} trials "
                     f"({spec.max_seeds} seeds each), fewer as configurations are told apart "
                     f"from the best or the survivors are equivalent within "
                     f"{spec.margin:g} pp")
        return 0
    data = check_before_queueing(args, spec, local, max(spec.grid.ranks), spec.grid.target_sets)
    storage = open_storage(args.storage)
    with enqueue_lock(storage, args.storage, spec.name):
        study = set_up_study(args, spec, storage)
        check_grid_fits(study, spec.grid)
        queued = enqueue_grid(study, spec.grid)
    LOG.info(f"study {quoted(study.study_name)} in {shown(args.storage)} ({data}): queued "
             f"{plural(queued.baselines_added, 'baseline')} and {len(queued.added)} grid "
             f"point(s); {queued.already_there} already there")
    return run_workers_and_report(args, local, study, workers, gpus)


def tpe_plan(args: argparse.Namespace, spec: StudySpec, asked: TpeSearch,
             given: set[str]) -> dict[str, Any]:
    """What `search optuna` would queue, from the study as it is (read, never written): the
    baselines with their parameter counts, how many TPE trials, the space they are sampled
    from and each rank's parameter count (alpha and dropout do not change it)."""
    study = study_if_exists(args.storage, spec.name)
    search = asked if study is None else settle_search(study, asked, given)
    finished, pending = (0, 0) if study is None else lora_trial_counts(study)
    space = search.space
    sets = [TARGET_SETS[name] for name in space.target_sets] or [None]
    by_rank = planned_rows(dataclasses.replace(spec, seeds=1),
                           [(spec.train, LoraParams(rank, 1.0, 0.0, targets=targets))
                            for rank in space.ranks for targets in sets],
                           max(space.ranks), extras=("targets",) if space.target_sets else (),
                           target_sets=space.target_sets)
    shown_keys = ("rank", "targets", "trainable_params", "total_params", "trainable_pct")
    return {"baselines": planned_rows(spec, baseline_trials(spec), max(space.ranks)),
            "tpe": {**search.to_dict(), "finished": finished, "queued_or_running": pending,
                    "to_queue": max(0, search.trials - finished - pending),
                    "by_rank": [{key: row[key] for key in shown_keys if key in row}
                                for row in by_rank]}}


LORA_COLUMNS = ("rank", "alpha", "dropout", *EXTRA_PARAMS)  # a baseline has none of them


def searched_extras(tpe: dict[str, Any]) -> str:
    """", lr 1e-05 to 0.001 (log), layers qkv all, variants lora rslora" for what the TPE
    search draws beside rank, alpha and dropout."""
    parts = []
    if "lr_range" in tpe:
        parts.append(f"lr {tpe['lr_range'][0]:g} to {tpe['lr_range'][1]:g} (log scale)")
    if "target_sets" in tpe:
        parts.append(f"layers {' '.join(tpe['target_sets'])}")
    if "scalings" in tpe:
        parts.append(f"variants {' '.join(tpe['scalings'])}")
    return "".join(f", {part}" for part in parts)


def print_tpe_plan(plan: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(plan, indent=1))
        return
    tpe = plan["tpe"]
    if plan["baselines"]:  # without the LoRA columns, all empty
        print_plan([{key: value for key, value in row.items() if key not in LORA_COLUMNS}
                    for row in plan["baselines"]], fmt)
        print()
    low, high = tpe["dropout_range"]
    print(f"TPE: would queue {plural(tpe['to_queue'], 'trial')} to reach {tpe['trials']} "
          f"finished LoRA trials (the study holds {tpe['finished']} finished and "
          f"{tpe['queued_or_running']} queued or running), each sampled from ranks "
          f"{' '.join(map(str, tpe['ranks']))}, alphas {' '.join(f'{a:g}' for a in tpe['alphas'])}"
          f", dropout {low:g} to {high:g}{searched_extras(tpe)} (seed {tpe['seed']}, "
          f"pruner {tpe['pruner']}); trainable parameters by rank"
          f"{' and set of layers' if 'target_sets' in tpe else ''}:")
    print_plan(tpe["by_rank"], fmt)


def refuse_a_tpe_race(args: argparse.Namespace, spec: StudySpec) -> None:
    """A race needs its configurations fixed before round 1: TPE adds new ones after every
    trial, each of which would restart the race's round 1 (replayed from all of them)."""
    why = ("a race (--seeds auto) needs a fixed set of configurations, and TPE samples new "
           "ones; give --seeds N, or race a grid")
    if spec.races:
        raise StudyError(why)
    study = study_if_exists(args.storage, spec.name)
    if study is not None and StudyRecord(study).race is not None and args.seeds is None:
        raise StudyError(f"study {quoted(spec.name)} races its seeds: {why} in a study of its "
                         "own (--study NAME)")


def tpe_search(args: argparse.Namespace, local: dict[str, Any]) -> int:
    spec = spec_from_flags(args, local)
    workers, gpus = local_worker_plan(args)
    asked, given = tpe_from_flags(args, spec)
    refuse_a_tpe_race(args, spec)
    if args.dry_run:
        print_tpe_plan(tpe_plan(args, spec, asked, given), args.format)
        return 0
    data = check_before_queueing(args, spec, local, max(asked.space.ranks),
                                 asked.space.target_sets)
    storage = open_storage(args.storage)
    with enqueue_lock(storage, args.storage, spec.name):
        study = set_up_study(args, spec, storage)
        search = settle_search(study, asked, given)
        queued = enqueue_tpe_budget(study, search)
    LOG.info(f"study {quoted(study.study_name)} in {shown(args.storage)} ({data}): "
             f"queued {plural(queued.baselines_added, 'baseline')}; "
             f"{queued.finished} finished and {queued.pending} queued or running LoRA "
             f"trial(s); queued {queued.added} TPE trial(s) to reach {search.trials} "
             f"(pruner: {search.pruner}, seed {search.seed})")
    return run_workers_and_report(args, local, study, workers, gpus)


def worker(args: argparse.Namespace, local: dict[str, Any]) -> int:
    from search.worker.launch import run_local_workers, worker_count
    from search.worker.options import WorkerOptions

    options = WorkerOptions.from_args(args)
    gpus = list(options.gpus or [])
    if options.workers_per_gpu is not None:  # sharing GPUs: every visible one unless named
        gpus = gpu_ids(args)
    return run_local_workers(options, worker_count(options.workers, options.workers_per_gpu,
                                                   gpus), gpus)


def dashboard(args: argparse.Namespace, local: dict[str, Any]) -> int:
    from search.results.dashboard import serve_dashboard

    serve_dashboard(args.storage, args.artifacts, args.host, args.port)
    return 0


def report(args: argparse.Namespace, local: dict[str, Any]) -> int:
    from search.results.report import write_report

    study = existing_study(args)
    store = artifact_store(artifacts_folder(study, args.storage, args.artifacts))
    files = write_report(study, store, args.out)
    LOG.info(f"wrote {args.out}/: {', '.join(files)}")
    return 0


def show_leaderboard(args: argparse.Namespace, local: dict[str, Any]) -> int:
    from search.results.leaderboard import render_board, study_board
    from search.results.verdict import VerdictCache
    from search.study.trial_reader import all_trials

    study = existing_study(args)
    verdicts = VerdictCache()  # the notes' verdict, again for the printed board
    if args.note:  # a study its workers did not annotate (made before they did)
        from search.results.dashboard_notes import DashboardMemory, refresh_dashboard

        store = artifact_store(artifacts_folder(study, args.storage, args.artifacts))
        written = refresh_dashboard(study, store, args.storage,
                                    DashboardMemory(verdicts=verdicts, read_trials=all_trials))
        LOG.info(f"rewrote {plural(written, 'dashboard note')} of study {quoted(study.study_name)}")
    board = study_board(study, args.by, cache=verdicts, trials=all_trials(study))
    print(render_board(board, args.format))
    return 0


def export(args: argparse.Namespace, local: dict[str, Any]) -> int:
    from search.results.export import (
        best_selection,
        best_trial,
        check_out_path,
        completed_trial,
        export_document,
        export_weights,
        recommended_trial,
        write_document,
    )

    check_out_path(args.out)
    study = existing_study(args)
    if args.trial is not None:
        trial, selection = completed_trial(study, args.trial), None
    elif args.pick == "recommended":
        trial, selection = recommended_trial(study)
    else:
        trial, selection = best_trial(study), best_selection()
    document = export_document(study, trial, selection)
    if args.weights is not None:
        store = artifact_store(artifacts_folder(study, args.storage, args.artifacts))
        files = export_weights(study, trial, store, args.weights, document)
        LOG.info(f"wrote {args.weights}/: {', '.join(files)}")
    write_document(document, args.out)
    which = "trial" if args.trial is not None else f"{args.pick} trial"
    LOG.info(f"{which} {trial.number} (val_acc {trial.value:.4f}) -> {args.out}")
    return 0


def predict_images(args: argparse.Namespace, local: dict[str, Any]) -> int:
    from objectives.inference import check_image_files, classify_images, load_exported_model
    from objectives.train import resolve_device
    from search.results.predictions import prediction_records, read_export, render_predictions

    exported = read_export(args.model)
    # Missing files are reported before the model is loaded, not after.
    check_image_files(args.images)
    model = load_exported_model(args.model, exported.spec, len(exported.classes),
                                resolve_device("auto"))
    probabilities = classify_images(model, args.images, exported.spec)
    records = prediction_records(args.images, probabilities, exported.classes, args.top_k)
    print(render_predictions(records, args.format))
    return 0
