"""What each `search` subcommand does, once its flags have been parsed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from objectives.data import DatasetError, dataset_num_classes
from objectives.export_model import ExportError
from objectives.inference import (
    InferenceError,
    check_image_files,
    classify_images,
    load_exported_model,
)
from objectives.model import ModelError, planned_parameters
from objectives.train import resolve_device, visible_gpus
from search.baselines import baseline_train_spec
from search.dashboard import DashboardError, serve_dashboard
from search.enqueue_lock import enqueue_lock
from search.export import (
    best_trial,
    check_out_path,
    completed_trial,
    export_document,
    export_weights,
    write_document,
)
from search.heartbeat import HeartbeatError, HeartbeatSettings
from search.leaderboard import best_versus_baseline, leaderboard, render
from search.local_workers import WorkerCountError, run_local_workers, worker_count
from search.predict import prediction_records, read_export, render_predictions
from search.report import write_report
from search.space import GridSpace, SpaceError, TpeSearch
from search.spec import SpecError, StudySpec, load_spec, with_overrides
from search.storage import StorageError, default_artifacts_dir, open_storage, shown
from search.studies import (
    StudyError,
    enqueue_grid,
    find_study,
    open_study_for_spec,
    store_baselines,
)
from search.tpe import check_grid_fits, enqueue_tpe_budget, settle_search
from search.worker import artifact_store, artifacts_folder

USER_ERRORS = (SpecError, SpaceError, StorageError, StudyError, DatasetError, ModelError,
               ExportError, HeartbeatError, DashboardError, InferenceError, WorkerCountError)
# [train] field -> flag attribute
TRAIN_FLAGS = {"model": "model", "weights": "weights", "targets": "targets", "dataset": "dataset",
               "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "train_seed"}


def quiet_optuna() -> None:
    """Optuna's INFO lines ("A new study created ...") repeat what our own messages say, and
    its experimental-feature warnings (heartbeats) are about its API, not the user's run."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run(args: argparse.Namespace, local: dict[str, Any]) -> int:
    handler = {"grid": grid, "optuna": tpe_search, "worker": worker, "dashboard": dashboard,
               "leaderboard": show_leaderboard, "report": report, "export": export,
               "predict": predict_images}[args.command]
    return handler(args, local)


def heartbeat_flags(args: argparse.Namespace) -> dict[str, int | None]:
    return {"interval": args.heartbeat_interval, "grace_period": args.grace_period,
            "max_retries": args.max_retries}


def spec_from_flags(args: argparse.Namespace, local: dict[str, Any]) -> StudySpec:
    spec = load_spec(args.spec)
    overrides = {key: getattr(args, flag) for key, flag in TRAIN_FLAGS.items()}
    return with_overrides(spec, name=args.study, heartbeat=heartbeat_flags(args), **overrides,
                          **local)


def spec_given(args: argparse.Namespace) -> bool:
    """Whether the command names a spec (file or fields) that an existing study must match."""
    return args.spec is not None or any(getattr(args, f) is not None for f in TRAIN_FLAGS.values())


def grid_from_flags(args: argparse.Namespace, spec: StudySpec) -> GridSpace:
    return GridSpace.from_values(ranks=args.ranks or spec.grid.ranks,
                                 alphas=args.alphas or spec.grid.alphas,
                                 dropouts=args.dropouts or spec.grid.dropouts)


def tpe_from_flags(args: argparse.Namespace, spec: StudySpec) -> tuple[TpeSearch, set[str]]:
    """The TPE search asked for, and the names of the settings the user chose (flags, or all of
    them with --spec) as opposed to defaults."""
    flags = {"trials": args.trials, "ranks": args.ranks, "alphas": args.alphas,
             "dropout_range": args.dropout_range, "seed": args.seed, "pruner": args.pruner}
    typed = {key: value for key, value in flags.items() if value is not None}
    search = TpeSearch.from_dict({**spec.tpe.to_dict(), **typed})
    given = set(search.to_dict()) if args.spec is not None else set(typed)
    return search, given


def open_study(args: argparse.Namespace, spec: StudySpec, storage):
    """Create or join the study; the caller holds the study's enqueue lock."""
    artifacts = str(Path(args.artifacts).resolve()) if args.artifacts else \
        str(default_artifacts_dir(args.storage))
    study, _ = open_study_for_spec(storage, spec.name, spec.train, artifacts, spec_given(args))
    store_baselines(study, spec.baselines, args.spec is not None)
    store_heartbeat(study, spec.heartbeat,
                    args.spec is not None or any(v is not None for v in heartbeat_flags(args)
                                                 .values()))
    return study


def store_heartbeat(study, settings: HeartbeatSettings, given: bool) -> None:
    """Keep the study's settings unless this command chose some (flags or a spec file)."""
    if given or "heartbeat" not in study.user_attrs:
        study.set_user_attr("heartbeat", settings.to_dict())


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def gpu_ids(args: argparse.Namespace) -> list[int]:
    return list(args.gpus) if args.gpus else list(range(visible_gpus()))


def run_workers_and_report(args: argparse.Namespace, local: dict[str, Any], study,
                           workers: int) -> int:
    gpus = gpu_ids(args)
    if workers == 0:
        print(f"start workers with: search worker --study {study.study_name} "
              f"--storage {shown(args.storage)}", file=sys.stderr)
        return 0
    code = run_local_workers(args.storage, study.study_name,
                             artifacts_folder(study, args.storage, args.artifacts), workers,
                             gpus, local, {})
    frame = leaderboard(study)
    print(render(frame, "table"))
    print(best_versus_baseline(frame))
    return code


def planned_trials(spec: StudySpec) -> list[dict[str, Any]]:
    """Baselines first, then the grid, each with its parameter counts (no weights loaded)."""
    num_classes = dataset_num_classes(spec.train)
    trials = [(baseline_train_spec(spec.train, b.train_overrides()), None)
              for b in spec.baselines]
    trials += [(spec.train, point) for point in spec.grid.points()]
    plan = []
    for train, point in trials:
        count = planned_parameters(train, num_classes, point)
        plan.append({"model": train.model, "method": "lora" if point else "head",
                     "baseline": point is None,
                     "rank": point.rank if point else None,
                     "alpha": point.alpha if point else None,
                     "dropout": point.dropout if point else None,
                     "trainable_params": count.trainable, "total_params": count.total,
                     "trainable_pct": round(count.trainable_pct, 4)})
    return plan


def grid(args: argparse.Namespace, local: dict[str, Any]) -> int:
    workers = worker_count(args.workers, args.workers_per_gpu, gpu_ids(args))
    spec = spec_from_flags(args, local)
    spec = with_overrides(spec, grid=grid_from_flags(args, spec))
    if args.dry_run:
        plan = planned_trials(spec)
        if args.format == "json":
            print(json.dumps(plan, indent=1))
        else:
            import pandas as pd

            frame = pd.DataFrame(plan).astype({"rank": "Int64"})
            print(frame.to_string(index=False, na_rep="-"))
        return 0
    storage = open_storage(args.storage)
    with enqueue_lock(storage, args.storage, spec.name):
        study = open_study(args, spec, storage)
        check_grid_fits(study, spec.grid.to_dict())
        report = enqueue_grid(study, spec.grid)
    print(f"study {study.study_name!r} in {shown(args.storage)}: queued "
          f"{plural(report.baselines_added, 'baseline')} and {len(report.added)} grid "
          f"point(s); {report.already_there} already there", file=sys.stderr)
    return run_workers_and_report(args, local, study, workers)


def tpe_search(args: argparse.Namespace, local: dict[str, Any]) -> int:
    workers = worker_count(args.workers, args.workers_per_gpu, gpu_ids(args))
    spec = spec_from_flags(args, local)
    asked, given = tpe_from_flags(args, spec)
    storage = open_storage(args.storage)
    with enqueue_lock(storage, args.storage, spec.name):
        study = open_study(args, spec, storage)
        search = settle_search(study, asked, given)
        report = enqueue_tpe_budget(study, search)
    print(f"study {study.study_name!r} in {shown(args.storage)}: "
          f"queued {plural(report.baselines_added, 'baseline')}; "
          f"{report.finished} finished and {report.pending} queued or running LoRA trial(s); "
          f"queued {report.added} TPE trial(s) to reach {search.trials} "
          f"(pruner: {search.pruner}, seed {search.seed})", file=sys.stderr)
    return run_workers_and_report(args, local, study, workers)


def worker(args: argparse.Namespace, local: dict[str, Any]) -> int:
    gpus = list(args.gpus or [])
    if args.workers_per_gpu is not None:  # sharing GPUs: every visible one unless named
        gpus = gpu_ids(args)
    return run_local_workers(args.storage, args.study, args.artifacts,
                             worker_count(args.workers, args.workers_per_gpu, gpus), gpus, local,
                             heartbeat_flags(args), args.threads, args.position)


def study_from_args(args: argparse.Namespace):
    import optuna

    storage = open_storage(args.storage, must_exist=True)
    name = args.study
    if name is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if len(names) != 1:
            raise StudyError(f"--study is needed: the storage holds {len(names)} studies"
                             f"{': ' + ', '.join(sorted(names)) if names else ''}")
        name = names[0]
    return find_study(storage, name)


def dashboard(args: argparse.Namespace, local: dict[str, Any]) -> int:
    serve_dashboard(args.storage, args.artifacts, args.host, args.port)
    return 0


def report(args: argparse.Namespace, local: dict[str, Any]) -> int:
    study = study_from_args(args)
    store = artifact_store(artifacts_folder(study, args.storage, args.artifacts))
    files = write_report(study, store, args.out)
    print(f"wrote {args.out}/: {', '.join(files)}", file=sys.stderr)
    return 0


def show_leaderboard(args: argparse.Namespace, local: dict[str, Any]) -> int:
    print(render(leaderboard(study_from_args(args)), args.format))
    return 0


def export(args: argparse.Namespace, local: dict[str, Any]) -> int:
    check_out_path(args.out)
    study = study_from_args(args)
    trial = best_trial(study) if args.trial is None else completed_trial(study, args.trial)
    document = export_document(study, trial)
    if args.weights is not None:
        store = artifact_store(artifacts_folder(study, args.storage, args.artifacts))
        files = export_weights(study, trial, store, args.weights)
        write_document(document, args.weights / "search_export.json")
        print(f"wrote {args.weights}/: {', '.join(files)}", file=sys.stderr)
    write_document(document, args.out)
    which = "best trial" if args.trial is None else "trial"
    print(f"{which} {trial.number} (val_acc {trial.value:.4f}) -> {args.out}",
          file=sys.stderr)
    return 0


def predict_images(args: argparse.Namespace, local: dict[str, Any]) -> int:
    exported = read_export(args.model)
    # Missing files are reported before the model is loaded, not after.
    check_image_files(args.images)
    model = load_exported_model(args.model, exported.spec, len(exported.classes),
                                resolve_device("auto"))
    probabilities = classify_images(model, args.images, exported.spec)
    records = prediction_records(args.images, probabilities, exported.classes, args.top_k)
    print(render_predictions(records, args.format))
    return 0
