"""The torch metrics against scikit-learn on the same predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from objectives.metrics import (
    ClassificationMetrics,
    class_scores,
    classification_metrics,
    confusion_matrix,
    macro_roc_curve,
    most_confused,
    roc_auc,
    roc_curve,
)


def sklearn_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The reference values, with sklearn's calls adapted only where they refuse the input."""
    num_classes = logits.shape[1]
    probabilities = logits.double().softmax(dim=1).numpy()
    y = labels.numpy()
    predictions = logits.argmax(dim=1).numpy()
    one_hot = np.eye(num_classes)[y]
    present = np.unique(y)
    if len(present) == num_classes > 2:
        auc_macro = skm.roc_auc_score(y, probabilities, multi_class="ovr", average="macro")
    else:
        # sklearn refuses these inputs (see test_sklearn_refuses_what_we_define); this is its
        # one-vs-rest recipe applied to the classes present.
        auc_macro = np.mean([skm.roc_auc_score(y == c, probabilities[:, c]) for c in present])
    return {
        "accuracy": skm.accuracy_score(y, predictions),
        "weighted_f1": skm.f1_score(y, predictions, average="weighted"),
        "auc_micro": skm.roc_auc_score(one_hot, probabilities, average="micro"),
        "auc_macro": auc_macro,
    }


def assert_matches_sklearn(logits: torch.Tensor, labels: torch.Tensor) -> None:
    ours = classification_metrics(logits, labels).to_dict()
    expected = sklearn_metrics(logits, labels)
    assert ours.keys() == expected.keys()
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_random_logits_match_sklearn(seed: int, num_classes: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (500,), generator=generator)
    # Labels leak into the logits so the metrics land away from chance, where errors show.
    logits = torch.randn(500, num_classes, generator=generator)
    logits[torch.arange(500), labels] += 1.0
    assert_matches_sklearn(logits, labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tied_scores_and_predictions_match_sklearn(seed: int) -> None:
    # Integer logits in {0, 1, 2}: many identical probability values and argmax ties.
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(5, (400,), generator=generator)
    logits = torch.randint(3, (400, 5), generator=generator).float()
    assert_matches_sklearn(logits, labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_absent_class_averages_over_present_classes(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(5, (300,), generator=generator)  # class 5 never occurs
    logits = torch.randn(300, 6, generator=generator)
    assert (logits.argmax(dim=1) == 5).any()  # ...but is predicted: F1 weight 0
    assert_matches_sklearn(logits, labels)


def test_two_classes_macro_is_the_binary_auc() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(2, (200,), generator=generator)
    logits = torch.randn(200, 2, generator=generator) + labels[:, None] * torch.tensor([0, 1])
    probabilities = logits.double().softmax(dim=1).numpy()
    result = classification_metrics(logits, labels)
    assert result.auc_macro == pytest.approx(
        skm.roc_auc_score(labels.numpy(), probabilities[:, 1]), abs=1e-12)
    assert 0.5 < result.auc_micro < 1


def test_sklearn_refuses_what_we_define() -> None:
    # Pins the two sklearn refusals the module documents; if sklearn starts accepting these
    # inputs, its answer should be compared with ours instead.
    with pytest.raises(ValueError, match="Number of classes"):
        skm.roc_auc_score([0, 1, 0, 1], np.full((4, 3), 1 / 3), multi_class="ovr")
    with pytest.raises(ValueError, match="1d array"):
        skm.roc_auc_score([0, 1, 0, 1], np.full((4, 2), 1 / 2), multi_class="ovr")
    assert label_binarize([0, 1, 1], classes=range(2)).shape == (3, 1)


def test_perfect_and_single_class_inputs() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    perfect = classification_metrics(torch.eye(3)[labels] * 5, labels)
    assert perfect == ClassificationMetrics(1.0, 1.0, 1.0, 1.0)
    single = classification_metrics(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    assert math.isnan(single.auc_macro)  # no class has both positives and negatives
    assert not math.isnan(single.auc_micro)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_ties(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(6, (300,), generator=generator).float()  # heavy ties
    positives = torch.rand(300, generator=generator) < 0.3 + 0.08 * scores
    expected = skm.roc_auc_score(positives.numpy(), scores.numpy())
    assert roc_auc(scores, positives) == pytest.approx(expected, abs=1e-14)


def test_roc_auc_known_values() -> None:
    # One tie between a positive and a negative counts one half: (1 + 1 + 0.5 + 1) / 4.
    scores = torch.tensor([0.1, 0.4, 0.4, 0.8])
    positives = torch.tensor([False, False, True, True])
    assert roc_auc(scores, positives) == 0.875
    assert roc_auc(-scores, positives) == 0.125
    assert math.isnan(roc_auc(scores, torch.ones(4, dtype=torch.bool)))


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_matches_sklearn(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(6, (500,), generator=generator)  # class 6 absent
    predictions = torch.where(torch.rand(500, generator=generator) < 0.6, labels,
                              torch.randint(7, (500,), generator=generator))
    ours = confusion_matrix(predictions, labels, 7)
    assert ours.dtype == torch.int64 and ours.shape == (7, 7)
    expected = skm.confusion_matrix(labels.numpy(), predictions.numpy(), labels=range(7))
    np.testing.assert_array_equal(ours.numpy(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (2000,), generator=generator)
    logits = torch.randn(2000, 10, generator=generator)
    on_cpu = classification_metrics(logits, labels)
    on_cuda = classification_metrics(logits.cuda(), labels.cuda())
    for name, value in on_cpu.to_dict().items():
        assert on_cuda.to_dict()[name] == pytest.approx(value, abs=1e-12), name
    assert torch.equal(confusion_matrix(logits.argmax(1), labels, 10),
                       confusion_matrix(logits.cuda().argmax(1), labels.cuda(), 10).cpu())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_scores_match_sklearn(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 6, (300,), generator=generator)
    predictions = torch.randint(0, 5, (300,), generator=generator)  # class 5 never predicted
    scores = class_scores(confusion_matrix(predictions, labels, 6))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels.numpy(), predictions.numpy(), labels=range(6), zero_division=0)
    np.testing.assert_allclose(scores.precision, precision, atol=1e-12)
    np.testing.assert_allclose(scores.recall, recall, atol=1e-12)
    np.testing.assert_allclose(scores.f1, f1, atol=1e-12)
    assert scores.support == support.tolist()


def test_most_confused_lists_mistakes_by_count() -> None:
    confusion = torch.tensor([[5, 3, 0], [1, 7, 4], [0, 4, 9]])
    assert most_confused(confusion, 3) == [(1, 2, 4), (2, 1, 4), (0, 1, 3)]
    assert most_confused(torch.eye(3, dtype=torch.long), 5) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_matches_sklearn_with_ties(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 12, (200,), generator=generator).double() / 12  # many ties
    positives = torch.rand(200, generator=generator) < 0.3
    fpr, tpr = roc_curve(scores, positives)
    expected_fpr, expected_tpr, _ = skm.roc_curve(positives.numpy(), scores.numpy(),
                                                  drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), expected_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), expected_tpr, atol=1e-12)
    assert np.trapezoid(tpr.numpy(), fpr.numpy()) == pytest.approx(
        roc_auc(scores, positives), abs=1e-12)


def test_macro_roc_curve_is_sklearns_recipe() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 4, generator=generator)
    labels = torch.randint(0, 4, (400,), generator=generator)
    probabilities = logits.double().softmax(dim=1)
    grid, mean_tpr = macro_roc_curve(probabilities, labels)
    # scikit-learn's "ROC curve using the OvR macro-average" example, on the same inputs.
    curves = [skm.roc_curve(labels.numpy() == c, probabilities[:, c].numpy(),
                            drop_intermediate=False)[:2]
              for c in range(4)]
    expected_grid = np.unique(np.concatenate([fpr for fpr, _ in curves]))
    expected = np.mean([np.interp(expected_grid, fpr, tpr) for fpr, tpr in curves], axis=0)
    np.testing.assert_allclose(grid.numpy(), expected_grid, atol=1e-12)
    np.testing.assert_allclose(mean_tpr.numpy(), expected, atol=1e-12)
