"""Test-set classification metrics, computed in torch on whatever device holds the logits.

Each metric agrees with scikit-learn on the same predictions (the tests check it):

- `accuracy`: `accuracy_score(labels, logits.argmax(1))`.
- `weighted_f1`: `f1_score(labels, predictions, average="weighted")`. Per class
  F1 = 2·tp / (support + predicted), the formula sklearn 1.9 uses: a class never predicted
  scores 0 without reaching `zero_division`, which only applies to 0/0. The weights are the
  true supports, so a class that is predicted but never true counts with weight 0.
- `auc_micro`: `roc_auc_score(one_hot(labels), probabilities, average="micro")`, the ROC AUC of
  all (sample, class) pairs pooled. sklearn's `label_binarize(labels, classes=range(C))`
  yields one column when C == 2; we keep both one-hot columns there.
- `auc_macro`: the unweighted mean of the one-vs-rest AUCs,
  `roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")`. sklearn raises
  when a class is absent from `labels` (and for C == 2, where it wants 1-D scores); we average
  over the classes whose one-vs-rest AUC is defined, i.e. that occur in `labels` but not in
  every sample. For C == 2 both columns give the binary AUC, so this is
  `roc_auc_score(labels, probabilities[:, 1])`. NaN when no class qualifies.

Probabilities are `softmax(logits)` in float64: near-certain predictions saturate float32
probabilities into ties that change the rank statistics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
    """Metrics of `logits` [N, C] (any float dtype) against int64 `labels` [N] (see module doc)."""
    num_classes = logits.shape[1]
    confusion = confusion_matrix(logits.argmax(dim=1), labels, num_classes).double()
    probabilities = logits.double().softmax(dim=1)
    one_hot = F.one_hot(labels, num_classes).bool()

    _, _, f1, support = per_class(confusion)

    accuracy, weighted_f1, auc_micro, auc_macro = torch.stack([
        confusion.diagonal().sum() / support.sum(),
        (support * f1).sum() / support.sum(),
        _column_aucs(probabilities.reshape(-1, 1), one_hot.reshape(-1, 1))[0],
        _column_aucs(probabilities, one_hot).nanmean(),
    ]).tolist()  # one host sync for all four
    return ClassificationMetrics(accuracy=accuracy, weighted_f1=weighted_f1,
                                 auc_micro=auc_micro, auc_macro=auc_macro)


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[C, C] int64 counts; row = true class, column = predicted class (sklearn's layout)."""
    cells = labels.long() * num_classes + predictions.long()
    return torch.bincount(cells, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def roc_auc(scores: Tensor, positives: Tensor) -> float:
    """Binary ROC AUC of `scores` [N] for the samples where `positives` [N] is true.

    The Mann-Whitney statistic with ties counted as one half, which is exactly the area under
    sklearn's ROC curve (`roc_auc_score(positives, scores)`). NaN when `positives` is all true
    or all false (sklearn raises there).
    """
    return _column_aucs(scores.reshape(-1, 1), positives.reshape(-1, 1))[0].item()


def _column_aucs(scores: Tensor, positives: Tensor) -> Tensor:
    """Float64 ROC AUC of every column of `scores` [N, K] against boolean `positives` [N, K].

    For each positive, count the negatives scored strictly lower plus half of those tied with
    it; the AUC is that sum over (positives · negatives). Counts stay integers until the final
    division, so the only rounding is that division.
    """
    scores = scores.double().T.contiguous()  # [K, N]: searchsorted batches over leading dims
    positives = positives.bool().T
    sorted_scores, order = scores.sort(dim=1)
    sorted_positives = positives.gather(1, order)
    # negatives_before[:, i] = negatives among the i lowest scores, for i = 0..N.
    negatives = (~sorted_positives).long().cumsum(dim=1)
    negatives_before = torch.cat([torch.zeros_like(negatives[:, :1]), negatives], dim=1)
    # Each sample's tie group spans [first, last) in sorted order.
    first = torch.searchsorted(sorted_scores, sorted_scores, side="left")
    last = torch.searchsorted(sorted_scores, sorted_scores, side="right")
    lower = negatives_before.gather(1, first)
    tied = negatives_before.gather(1, last) - lower
    twice_u = ((2 * lower + tied) * sorted_positives).sum(dim=1)
    num_positives = sorted_positives.sum(dim=1)
    num_negatives = scores.shape[1] - num_positives
    return twice_u.double() / (2 * num_positives * num_negatives).double()


@dataclass(frozen=True)
class ClassScores:
    """Per-class precision, recall, F1 and support from a confusion matrix (sklearn's
    `precision_recall_fscore_support(labels, predictions, labels=range(C), zero_division=0)`)."""

    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]


def per_class(confusion: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float64 precision, recall, F1 and support [C] of a confusion matrix (rows = true).

    A 0/0 (a class never predicted, never true, or neither) counts as 0, sklearn's
    `zero_division=0`; such a class has support 0, so it weighs nothing in weighted means.
    """
    confusion = confusion.double()
    true_positives = confusion.diagonal()
    support, predicted = confusion.sum(dim=1), confusion.sum(dim=0)
    return (true_positives / predicted.clamp(min=1), true_positives / support.clamp(min=1),
            2 * true_positives / (support + predicted).clamp(min=1), support)


def class_scores(confusion: Tensor) -> ClassScores:
    precision, recall, f1, support = per_class(confusion)
    return ClassScores(precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist(),
                       support=support.long().tolist())


def most_confused(confusion: Tensor, top: int) -> list[tuple[int, int, int]]:
    """The `top` most frequent (true class, predicted class, count) mistakes, most first."""
    mistakes = confusion.clone()
    mistakes.fill_diagonal_(0)
    counts, cells = mistakes.flatten().sort(descending=True, stable=True)
    num_classes = confusion.shape[0]
    return [(cell // num_classes, cell % num_classes, count)
            for count, cell in zip(counts.tolist(), cells.tolist(), strict=True)
            if count > 0][:top]


def roc_curve(scores: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1):
    sklearn's `roc_curve(positives, scores, drop_intermediate=False)`."""
    scores, positives = scores.double().flatten(), positives.bool().flatten()
    order = scores.argsort(descending=True, stable=True)
    scores, positives = scores[order], positives[order]
    # The last sample of each run of equal scores closes one threshold.
    last_of_threshold = torch.cat([scores[1:] != scores[:-1], scores.new_ones(1, dtype=torch.bool)])
    true_positives = positives.double().cumsum(0)[last_of_threshold]
    false_positives = (~positives).double().cumsum(0)[last_of_threshold]
    zero = scores.new_zeros(1)
    fpr = torch.cat([zero, false_positives / false_positives[-1].clamp(min=1)])
    tpr = torch.cat([zero, true_positives / true_positives[-1].clamp(min=1)])
    return fpr, tpr


def macro_roc_curve(probabilities: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The mean one-vs-rest ROC curve: each class's TPR interpolated on the union of all
    classes' FPRs, then averaged (scikit-learn's documented recipe), over the classes present
    in `labels` and not in every sample."""
    one_hot = F.one_hot(labels, probabilities.shape[1]).bool()
    curves = [roc_curve(probabilities[:, c], one_hot[:, c])
              for c in range(probabilities.shape[1]) if 0 < one_hot[:, c].sum() < len(labels)]
    grid = torch.cat([fpr for fpr, _ in curves]).unique()
    mean_tpr = torch.stack([interpolate(grid, fpr, tpr) for fpr, tpr in curves]).mean(dim=0)
    return grid, mean_tpr


def interpolate(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """numpy.interp for increasing `xp` (repeated values allowed: the last one wins)."""
    index = torch.searchsorted(xp, x, side="right").clamp(1, len(xp) - 1)
    x0, x1, y0, y1 = xp[index - 1], xp[index], fp[index - 1], fp[index]
    slope = torch.where(x1 > x0, (y1 - y0) / (x1 - x0).clamp(min=1e-300), torch.zeros_like(x0))
    return torch.where(x >= xp[-1], fp[-1], y0 + slope * (x - x0))
