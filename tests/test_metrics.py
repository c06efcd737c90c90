"""Our metrics on small inputs with hand-computed values, and the edge cases we define where
scikit-learn alone refuses or differs: absent classes, two classes, ties, float64 softmax."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from objectives.metrics import (
    ClassificationMetrics,
    class_scores,
    classification_metrics,
    confusion_matrix,
    macro_roc_curve,
    most_confused,
    roc_curve,
)


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is `probabilities` (rows summing to 1)."""
    return torch.tensor(probabilities).log()


def assert_metrics(result: ClassificationMetrics, expected: ClassificationMetrics) -> None:
    for name, value in expected.to_dict().items():
        assert result.to_dict()[name] == pytest.approx(value, abs=1e-12), name


def test_absent_and_never_predicted_classes() -> None:
    # Class 1 is never predicted, class 2 predicted once but never true.
    labels = torch.tensor([0, 0, 1, 1])
    logits = logits_of([[0.7, 0.2, 0.1],    # -> 0, right
                        [0.3, 0.2, 0.5],    # -> 2, wrong
                        [0.5, 0.4, 0.1],    # -> 0, wrong
                        [0.6, 0.3, 0.1]])   # -> 0, wrong
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = classification_metrics(logits, labels)
    assert_metrics(result, ClassificationMetrics(
        accuracy=1 / 4,
        # F1 = 2·tp / (support + predicted): class 0 2·1/(2 + 3), class 1 0; class 2 weighs 0.
        weighted_f1=(2 * 0.4 + 2 * 0) / 4,
        # 32 (positive, negative) pairs: 0.7 beats all 8 negatives, 0.3, 0.4 and 0.3 beat 5.
        auc_micro=23 / 32,
        # Class 0: 0.7 beats 0.5 and 0.6, 0.3 beats neither -> 2/4; class 1: 4/4; class 2,
        # never true, has no one-vs-rest AUC and is left out.
        auc_macro=(0.5 + 1.0) / 2))


def test_two_classes_use_both_one_hot_columns_and_float64() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    # Margins of 20 and 25 saturate float32 probabilities to 1.0 (a tie), not float64 ones.
    logits = torch.tensor([[0.0, 20.0], [0.0, 25.0], [5.0, 0.0], [0.0, 5.0]])
    assert logits.softmax(dim=1)[0, 1] == logits.softmax(dim=1)[1, 1] == 1.0
    assert_metrics(classification_metrics(logits, labels), ClassificationMetrics(
        accuracy=3 / 4,
        # Class 0: tp 1, support 2, predicted 1 -> 2/3; class 1: tp 2, support 2, predicted 3.
        weighted_f1=(2 / 3 + 4 / 5) / 2,
        # Both columns pooled, 16 pairs: positives 2e-9, 0.993, 1 - 1e-11, 0.993 beat 1, 3, 4
        # and 3 negatives. With class 1's column alone it would be the binary AUC, 0.75;
        # in float32 the tie at 1.0 would make it 10.5/16.
        auc_micro=11 / 16,
        # The binary AUC, from either column; 0.6875 in float32 (one tied pair in column 1).
        auc_macro=3 / 4))


def test_ties_count_one_half() -> None:
    labels = torch.tensor([0, 1, 1, 0])
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert_metrics(classification_metrics(logits, labels), ClassificationMetrics(
        accuracy=3 / 4,  # argmax ties go to the first class: sample 1 is predicted 0
        weighted_f1=(4 / 5 + 2 / 3) / 2,
        # Per column, one of 4 pairs is a 0.5 / 0.5 tie: (3 + 0.5) / 4; pooled, 2 of 16.
        auc_micro=14 / 16,
        auc_macro=3.5 / 4))


def test_perfect_and_single_class_inputs() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    perfect = classification_metrics(torch.eye(3)[labels] * 5, labels)
    assert perfect == ClassificationMetrics(1.0, 1.0, 1.0, 1.0)
    single = classification_metrics(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    assert math.isnan(single.auc_macro)  # no class has both positives and negatives
    assert not math.isnan(single.auc_micro)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_give_the_cpu_results() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (2000,), generator=generator)
    logits = torch.randn(2000, 10, generator=generator)
    assert classification_metrics(logits.cuda(), labels.cuda()) == classification_metrics(
        logits, labels)
    assert torch.equal(confusion_matrix(logits.cuda().argmax(1), labels.cuda(), 10),
                       confusion_matrix(logits.argmax(1), labels, 10))


def test_confusion_matrix_has_a_row_and_column_for_every_class() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2])
    predictions = torch.tensor([0, 1, 1, 0, 2])  # class 3 neither true nor predicted
    confusion = confusion_matrix(predictions, labels, 4)
    assert confusion.dtype == torch.int64
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_class_scores_from_a_confusion_matrix() -> None:
    # Class 1 is true twice but never predicted; class 2 predicted once but never true.
    confusion = torch.tensor([[3, 0, 1], [2, 0, 0], [0, 0, 0]])
    scores = class_scores(confusion)
    assert scores.precision == pytest.approx([3 / 5, 0, 0])
    assert scores.recall == pytest.approx([3 / 4, 0, 0])
    assert scores.f1 == pytest.approx([2 / 3, 0, 0])
    assert scores.support == [4, 2, 0]
    assert all(type(count) is int for count in scores.support)


def test_most_confused_lists_mistakes_by_count() -> None:
    confusion = torch.tensor([[5, 3, 0], [1, 7, 4], [0, 4, 9]])
    assert most_confused(confusion, 3) == [(1, 2, 4), (2, 1, 4), (0, 1, 3)]
    assert most_confused(torch.eye(3, dtype=torch.long), 5) == []


def test_roc_curve_known_values() -> None:
    # Thresholds ∞, 0.8, 0.4 (a positive and a negative tied), 0.1.
    fpr, tpr = roc_curve(torch.tensor([0.1, 0.4, 0.4, 0.8]),
                         torch.tensor([False, False, True, True]))
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert np.trapezoid(tpr.numpy(), fpr.numpy()) == 0.875


def test_macro_roc_curve_leaves_out_absent_classes() -> None:
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.2, 0.5],
                                  [0.5, 0.4, 0.1], [0.6, 0.3, 0.1]])
    labels = torch.tensor([0, 0, 1, 1])  # class 2 absent
    grid, mean_tpr = macro_roc_curve(probabilities, labels)
    # Class 0's curve: (0, 0) (0, 0.5) (0.5, 0.5) (1, 0.5) (1, 1); class 1's: (0, 0) (0, 0.5)
    # (0, 1) (1, 1). On the union of their FPRs each TPR takes its value at the top of a
    # vertical step: class 0 0.5, 0.5, 1; class 1 1, 1, 1.
    assert grid.tolist() == [0, 0.5, 1]
    assert mean_tpr.tolist() == [0.75, 0.75, 1]
