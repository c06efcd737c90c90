"""Test-set classification metrics, computed once per trial with scikit-learn on the CPU.

- `accuracy`: `accuracy_score(labels, logits.argmax(1))`.
- `weighted_f1`: `f1_score(labels, predictions, average="weighted")`. The weights are the true
  supports, so a class that is predicted but never true counts with weight 0, and a class that
  is never predicted scores F1 = 0.
- `auc_micro`: the ROC AUC of all (sample, class) pairs pooled, with a one-hot column for every
  class (see `classification_metrics` for why not sklearn's `average="micro"` alone).
- `auc_macro`: the unweighted mean of the one-vs-rest AUCs over the classes whose one-vs-rest
  AUC is defined, i.e. that occur in `labels` but not in every sample. NaN when no class
  qualifies.

Probabilities are `softmax(logits)` in float64: near-certain predictions saturate float32
probabilities into ties that change the rank statistics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from sklearn import metrics as skm
from torch import Tensor


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    weighted_f1: float
    auc_micro: float
    auc_macro: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def classification_metrics(logits: Tensor, labels: Tensor) -> ClassificationMetrics:
    """Metrics of `logits` [N, C] (any float dtype, any device) against int64 `labels` [N]."""
    logits = logits.detach().cpu()
    num_classes = logits.shape[1]
    probabilities = logits.double().softmax(dim=1).numpy()
    predictions = logits.argmax(dim=1).numpy()
    y = labels.cpu().numpy()
    # Our own one-hot: sklearn's label_binarize (behind roc_auc_score's multi-class paths)
    # keeps a single column when C == 2, which would drop half of the micro-average's pairs.
    one_hot = np.eye(num_classes, dtype=bool)[y]
    # sklearn's multi_class="ovr" raises when a class is absent from `labels` (and for C == 2
    # wants 1-D scores); we average over the classes whose one-vs-rest AUC is defined. That is
    # never exactly one class (if one occurs but not everywhere, another occurs too), so the
    # columns passed stay a multilabel indicator matrix.
    defined = one_hot.any(axis=0) & ~one_hot.all(axis=0)
    auc_macro = (skm.roc_auc_score(one_hot[:, defined], probabilities[:, defined],
                                   average="macro") if defined.any() else float("nan"))
    return ClassificationMetrics(
        accuracy=float(skm.accuracy_score(y, predictions)),
        weighted_f1=float(skm.f1_score(y, predictions, average="weighted", zero_division=0)),
        auc_micro=float(skm.roc_auc_score(one_hot.ravel(), probabilities.ravel())),
        auc_macro=float(auc_macro),
    )


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[C, C] int64 counts on the CPU; row = true class, column = predicted class, with a row
    and column for every class in range(C), present or not."""
    return torch.from_numpy(skm.confusion_matrix(
        labels.cpu().numpy(), predictions.cpu().numpy(), labels=range(num_classes)
    ).astype(np.int64))


@dataclass(frozen=True)
class ClassScores:
    """Per-class precision, recall, F1 and support; a 0/0 counts as 0."""

    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]


def class_scores(confusion: Tensor) -> ClassScores:
    """sklearn's `precision_recall_fscore_support(labels=range(C), zero_division=0)` of the
    predictions a confusion matrix (rows = true class) counts. sklearn wants the predictions,
    not the matrix, so we expand the matrix back into one (true, predicted) pair per sample."""
    counts = confusion.cpu().numpy()
    num_classes = counts.shape[0]
    true, predicted = np.divmod(np.repeat(np.arange(counts.size), counts.ravel()), num_classes)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        true, predicted, labels=range(num_classes), zero_division=0)
    return ClassScores(precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist(),
                       support=support.tolist())


def most_confused(confusion: Tensor, top: int) -> list[tuple[int, int, int]]:
    """The `top` most frequent (true class, predicted class, count) mistakes, most first; ties
    in row-major order."""
    mistakes = confusion.clone()
    mistakes.fill_diagonal_(0)
    counts, cells = mistakes.flatten().sort(descending=True, stable=True)
    num_classes = confusion.shape[0]
    return [(cell // num_classes, cell % num_classes, count)
            for count, cell in zip(counts.tolist(), cells.tolist(), strict=True)
            if count > 0][:top]


def roc_curve(scores: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    """False and true positive rates [float64] at every distinct threshold, from (0, 0) to
    (1, 1): sklearn's `roc_curve(positives, scores, drop_intermediate=False)`."""
    fpr, tpr, _ = skm.roc_curve(positives.cpu().numpy().ravel(), scores.cpu().numpy().ravel(),
                                drop_intermediate=False)
    return torch.from_numpy(fpr), torch.from_numpy(tpr)


def macro_roc_curve(probabilities: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The mean one-vs-rest ROC curve, scikit-learn's documented recipe: each class's TPR
    interpolated (`numpy.interp`) on the union of all classes' FPRs, then averaged, over the
    classes present in `labels` and not in every sample."""
    scores, y = probabilities.cpu().numpy(), labels.cpu().numpy()
    curves = [skm.roc_curve(y == c, scores[:, c], drop_intermediate=False)[:2]
              for c in range(scores.shape[1]) if 0 < (y == c).sum() < len(y)]
    grid = np.unique(np.concatenate([fpr for fpr, _ in curves]))
    mean_tpr = np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in curves], axis=0)
    return torch.from_numpy(grid), torch.from_numpy(mean_tpr)
