"""The pictures and tables a finished trial leaves in the artifact store, for the dashboard.

    confusion_matrix.png     test-set confusion matrix, class names on the axes
    learning_curves.png      train/val loss and accuracy per epoch
    roc_curves.png           one-vs-rest ROC curves with the micro and macro averages
    classification_report.csv  per-class precision, recall, F1, support
    top_confusions.csv       the most frequent mistakes: true -> predicted, count

They go through Optuna's artifact API (`upload_artifact`), so optuna-dashboard lists them on
the trial's page and shows the images and CSV files inline; the trial's `artifacts` user
attribute maps each file name to its artifact id.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Sequence
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F

from objectives.checkpoint import EpochStats
from objectives.metrics import (
    class_scores,
    macro_roc_curve,
    most_confused,
    roc_curve,
)
from objectives.train import TrialResult
from search.results.figures import new_figure, save_figure

TOP_CONFUSIONS = 20
# One ROC line per class is readable up to about this many classes; beyond, only averages.
MAX_CLASS_CURVES = 10
MIMETYPES = {".png": "image/png", ".csv": "text/csv"}


def plot_confusion_matrix(confusion: torch.Tensor, classes: Sequence[str], path: Path,
                          title: str) -> None:
    size = min(24, max(5, 0.32 * len(classes) + 2))
    figure, axes = new_figure(size=(size, size * 0.9))
    image = axes.imshow(confusion.numpy(), cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="test images")
    ticks = range(len(classes))
    font = 8 if len(classes) <= 20 else 5
    axes.set_xticks(ticks, classes, rotation=90, fontsize=font)
    axes.set_yticks(ticks, classes, fontsize=font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if len(classes) <= 20:  # counts stay legible only on small matrices
        high = confusion.max().item() / 2
        for (row, column), count in zip(torch.cartesian_prod(torch.arange(len(classes)),
                                                             torch.arange(len(classes))).tolist(),
                                        confusion.flatten().tolist(), strict=True):
            if count:
                axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                          color="white" if count > high else "black")
    axes.set_title(title)
    save_figure(figure, path)


def plot_learning_curves(epochs: Sequence[EpochStats], path: Path, title: str) -> None:
    x = [e.epoch for e in epochs]
    figure, (loss, accuracy) = new_figure(1, 2, size=(10, 4))
    loss.plot(x, [e.train_loss for e in epochs], "o-", label="train")
    loss.plot(x, [e.val_loss for e in epochs], "o-", label="validation")
    loss.set_ylabel("cross-entropy loss")
    accuracy.plot(x, [e.train_acc for e in epochs], "o-", label="train")
    accuracy.plot(x, [e.val_acc for e in epochs], "o-", label="validation")
    # A fixed 0-1 axis: an auto-scaled one makes a gap of a point look like a chasm.
    accuracy.set_ylim(0, 1)
    accuracy.set_ylabel("accuracy (axis from 0 to 1)")
    for axes in (loss, accuracy):
        axes.set_xlabel("epoch")
        axes.set_xticks(x)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    save_figure(figure, path)


def plot_roc_curves(result: TrialResult, classes: Sequence[str], path: Path, title: str) -> None:
    probabilities, labels = result.test_probabilities, result.test_labels
    one_hot = F.one_hot(labels, probabilities.shape[1]).bool()
    figure, axes = new_figure(size=(6.5, 6))
    if len(classes) <= MAX_CLASS_CURVES:
        for index, name in enumerate(classes):
            if 0 < one_hot[:, index].sum() < len(labels):
                fpr, tpr = roc_curve(probabilities[:, index], one_hot[:, index])
                axes.plot(fpr, tpr, lw=1, alpha=0.6, label=str(name))
    fpr, tpr = roc_curve(probabilities.flatten(), one_hot.flatten())
    axes.plot(fpr, tpr, "k-", lw=2.5, label=f"micro average (AUC {result.test.auc_micro:.4f})")
    fpr, tpr = macro_roc_curve(probabilities, labels)
    axes.plot(fpr, tpr, "k:", lw=2.5, label=f"macro average (AUC {result.test.auc_macro:.4f})")
    axes.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.legend(fontsize=7, loc="lower right")
    axes.set_title(title)
    save_figure(figure, path)


def write_classification_report(confusion: torch.Tensor, classes: Sequence[str],
                                path: Path) -> None:
    scores = class_scores(confusion)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for row in zip(classes, scores.precision, scores.recall, scores.f1, scores.support,
                       strict=True):
            writer.writerow([row[0], *(f"{value:.4f}" for value in row[1:4]), row[4]])


def write_top_confusions(confusion: torch.Tensor, classes: Sequence[str], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["true", "predicted", "count"])
        for true, predicted, count in most_confused(confusion, TOP_CONFUSIONS):
            writer.writerow([classes[true], classes[predicted], count])


def upload_trial_artifacts(trial: optuna.Trial, result: TrialResult, classes: Sequence[str],
                           title: str, store: optuna.artifacts.FileSystemArtifactStore) -> None:
    """Make every file above for a finished trial and upload it to `store`."""
    with tempfile.TemporaryDirectory() as folder:
        files = {name: Path(folder) / name for name in (
            "confusion_matrix.png", "learning_curves.png", "roc_curves.png",
            "classification_report.csv", "top_confusions.csv")}
        plot_confusion_matrix(result.confusion, classes, files["confusion_matrix.png"],
                              f"{title}: test confusion matrix")
        plot_learning_curves(result.epochs, files["learning_curves.png"], title)
        plot_roc_curves(result, classes, files["roc_curves.png"], f"{title}: test ROC")
        write_classification_report(result.confusion, classes,
                                    files["classification_report.csv"])
        write_top_confusions(result.confusion, classes, files["top_confusions.csv"])
        uploaded = {name: optuna.artifacts.upload_artifact(
                        artifact_store=store, file_path=str(path), study_or_trial=trial,
                        mimetype=MIMETYPES[path.suffix])
                    for name, path in files.items()}
    trial.set_user_attr("artifacts", uploaded)
