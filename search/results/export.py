"""Export: the best (or the recommended) trial's params, value, metrics and spec, why it was
picked, optionally with its weights: a model folder with its model card, which works on any
host and uploads to the Hugging Face hub as it is.

The document's `spec` is what the trial trained: the study's spec with the trial's replicate
seed (or a baseline's model), and the point's own learning rate and adapted layers where it
sets them (`objectives.spec.trial_lr`, `trial_spec`); its `params` say the rest (rank, alpha,
dropout, and `scaling` for rsLoRA or DoRA: absent, plain LoRA). Those two rebuild the trial.
A study made before points had a learning rate or layers of their own exports what it
always did."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path, PurePath
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.spec import TrainSpec, trial_lr, trial_spec
from search.study.names import quoted
from search.study.open_study import StudyError
from search.study.space import params_of
from search.study.study_record import StudyRecord
from search.study.trials import (
    is_baseline,
    trial_method,
    trial_model,
    trial_point,
    trial_train_spec,
)

METRIC_KEYS = ("val_acc", "test_acc", "f1", "auc_micro", "auc_macro", "trainable_params",
               "total_params", "trainable_pct", "train_seconds", "images_per_second", "device")
EXPORT_FORMATS = (".json", ".yaml", ".yml", ".toml")
CARD_FILE = "README.md"  # the hub's name for a repository's model card


def best_trial(study: optuna.Study) -> FrozenTrial:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        raise StudyError(f"study {quoted(study.study_name)} has no completed trial yet")
    return max(complete, key=lambda t: (t.value, -t.number))


def recommended_trial(study: optuna.Study) -> tuple[FrozenTrial, dict[str, Any]]:
    """The recommended configuration's replicate of highest validation accuracy (`search.
    results.verdict`), and the document's `selection`: what was picked and why."""
    from search.results.verdict import NoVerdict, assess, closing_lines

    try:
        verdict = assess(study)
    except NoVerdict as why:
        raise StudyError(f"study {quoted(study.study_name)} has no recommendation: {why}") from None
    chosen = verdict.recommended
    trial = max(chosen.trials, key=lambda t: (t.value, -t.number))
    low, high = verdict.val_ci[chosen.key]
    return trial, {
        "pick": "recommended",
        "why": "the fewest trainable parameters among the LoRA configurations tied with the best "
               "(paired test on the validation images, Holm-corrected, 0.05); its replicate "
               "of highest validation accuracy",
        "configuration": verdict.describe(chosen),
        "seeds": len(chosen.trials),
        "trials": chosen.numbers,
        "val_acc_mean": float(chosen.val_accs.mean()),
        "val_ci": [low, high],
        "best": verdict.describe(verdict.best),
        "tied": [verdict.describe(c) for c in verdict.configurations
                 if verdict.tied(c) and not c.baseline],
        "verdict": closing_lines(verdict),
        **race_selection(study, verdict),
    }


def race_selection(study: optuna.Study, verdict) -> dict[str, Any]:
    """A racing study's race as the export records it: why it ended (or where it stands)
    and the seeds each configuration got, with the round it was dropped in; {} without."""
    from search.results.leaderboard import race_lines
    from search.results.race import study_race

    race = study_race(study)
    if race is None:
        return {}
    dropped = race[0].dropped_after
    return {"race": {"lines": race_lines(race, verdict), "configurations": [
        {"configuration": verdict.describe(c), "seeds": len(c.trials),
         "dropped_after": dropped.get(c.key)} for c in verdict.configurations]}}


def best_selection() -> dict[str, Any]:
    return {"pick": "best", "why": "the completed trial of highest validation accuracy"}


def completed_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial `number` of the study, which must have completed (it then has weights)."""
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise StudyError(f"study {quoted(study.study_name)} has no trial {number} "
                         f"(it has {len(trials)})")
    trial = trials[number]  # trials come in number order
    if trial.state != TrialState.COMPLETE:
        raise StudyError(f"trial {number} is {trial.state.name}, not COMPLETE")
    return trial


def trained_spec(spec: TrainSpec, trial: FrozenTrial) -> TrainSpec:
    """What `trial` of a study of `spec` trained: its replicate's (or baseline's) spec with
    its point's learning rate and layers."""
    point = trial_point(trial)
    spec = trial_spec(trial_train_spec(spec, trial), point)
    lr = trial_lr(spec, point)
    return spec if lr == spec.lr else dataclasses.replace(spec, lr=lr)


def export_document(study: optuna.Study, trial: FrozenTrial,
                    selection: dict[str, Any] | None = None) -> dict[str, Any]:
    point = trial_point(trial)
    record = StudyRecord(study)
    spec = record.train_spec
    return {
        "study": study.study_name,
        "trial": trial.number,
        "selection": selection or {"pick": "trial", "why": "asked for by --trial"},
        "baseline": is_baseline(trial),
        "params": params_of(point) if point else {},
        "value": trial.value,
        "metrics": {key: trial.user_attrs[key] for key in METRIC_KEYS if key in trial.user_attrs},
        "model": trial_model(trial, spec.model),
        "method": trial_method(trial),
        "spec": trained_spec(spec, trial).to_dict(),
        "classes": record.classes,
    }


def without_none(value: Any) -> Any:
    """TOML has no null: drop None entries (e.g. `weights` when no local checkpoint is used)."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [without_none(v) for v in value]
    return value


def check_out_path(path: Path) -> None:
    if path.suffix not in EXPORT_FORMATS:
        raise StudyError(f"--out {path}: use a file ending in {', '.join(EXPORT_FORMATS)}")


def write_document(document: dict[str, Any], path: Path) -> None:
    if path.suffix == ".json":
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(document, sort_keys=False))
    else:
        import tomli_w

        path.write_text(tomli_w.dumps(without_none(document)))


def export_weights(study: optuna.Study, trial: FrozenTrial, store: Any, folder: Path,
                   document: dict[str, Any]) -> list[str]:
    """Rebuild the trial's model from its stored weights and write `folder`: the model files
    (`objectives.export_model`) with timm's config.json where timm can rebuild the model from
    it, a copy of its base weights when they are a local file, `document` as
    search_export.json without any path of this host (`portable_document`) and README.md, its
    model card (`search.results.model_card`). The folder then works wherever it is copied, and
    uploads to the Hugging Face hub as it is. Returns its files, relative."""
    from objectives.export_folder import EXPORT_DOCUMENT
    from objectives.export_model import (  # torch, peft
        copy_base_weights,
        load_trained_model,
        write_model_folder,
        write_timm_config,
    )
    from objectives.inference import ADAPTER_CONFIG
    from search.results.leaderboard import study_board
    from search.results.model_card import render_card, trial_sources

    artifact_id = trial.user_attrs.get("weights_artifact")
    if artifact_id is None:
        raise StudyError(f"trial {trial.number} has no stored weights")
    record = StudyRecord(study)
    classes, spec = record.classes, trained_spec(record.train_spec, trial)
    with tempfile.TemporaryDirectory() as temp:
        weights = Path(temp) / "weights.safetensors"
        try:
            optuna.artifacts.download_artifact(artifact_store=store, file_path=str(weights),
                                               artifact_id=artifact_id)
        except FileNotFoundError:
            raise StudyError(f"weights of trial {trial.number} ({artifact_id}) are not in the "
                             "artifact store; pass --artifacts DIR") from None
        except ValueError:  # an id that leads out of the store (the database edited)
            raise StudyError(f"trial {trial.number}'s weights_artifact {artifact_id!r} is not "
                             "an artifact id of this store") from None
        model = load_trained_model(spec, len(classes), trial_point(trial), weights)
    folder = Path(folder)
    base = copy_base_weights(spec, folder)
    # Only a hub id names the base model: a local file's name would pass for one on the hub.
    write_model_folder(model, trial_point(trial), folder,  # peft's README.md is replaced below
                       base_model=base.get("hf_hub_id"))
    config = write_timm_config(spec, classes, folder)
    portable = portable_document(document, base)
    write_document(portable, folder / EXPORT_DOCUMENT)
    adapter = (json.loads((folder / ADAPTER_CONFIG).read_text())
               if trial_point(trial) is not None else None)
    card = render_card(portable, study_board(study, by="trial"),
                       trial_sources(study.get_trials(deepcopy=False)), adapter, config)
    (folder / CARD_FILE).write_text(card, encoding="utf-8")
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.is_file())


def portable_document(document: dict[str, Any], base_weights: dict[str, Any]) -> dict[str, Any]:
    """The export folder's search_export.json: `document` with `base_weights` (where the
    backbone came from: `objectives.export_model.copy_base_weights`) and without the paths of
    this host in its spec. `weights` becomes the folder's copy, relative to the folder (or
    none: hub weights or no pretraining); an image folder dataset and an absolute `data_dir`
    keep their last name only (prediction needs to know only that the images came from an
    image folder; the card names the dataset by that name)."""
    from objectives.data import IMAGEFOLDER

    spec = dict(document["spec"], weights=base_weights.get("file"))
    if spec["dataset"].startswith(IMAGEFOLDER):
        spec["dataset"] = IMAGEFOLDER + PurePath(spec["dataset"][len(IMAGEFOLDER):]).name
    if PurePath(spec["data_dir"]).is_absolute():
        spec["data_dir"] = PurePath(spec["data_dir"]).name
    return {**document, "spec": spec, "base_weights": base_weights}
