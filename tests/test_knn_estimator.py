"""KNNClassifier under scikit-learn's estimator checks; the calibrated loss, the mixture and lambda on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from kg_data.errors import KGDataError
from knn import KNNClassifier, calibrated_loss, choose_lambda, interpolate, knn_distribution


def _expected_failures(estimator):
    if estimator.metric == "cosine":
        # the check's integer data holds an all-zero row: it has no direction, and the store refuses it
        return {"check_estimators_dtypes": "an all-zero row has no direction under the cosine metric (KGDataError)"}
    return {}


@parametrize_with_checks([KNNClassifier(n_neighbors=3), KNNClassifier(n_neighbors=3, metric="cosine", backend="faiss")],
                         expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_classifier_with_string_labels_matches_a_hand_count():
    X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    y = np.array(["b", "b", "a", "a"])
    clf = KNNClassifier(n_neighbors=2, temperature=1.0).fit(X, y)
    assert list(clf.classes_) == ["a", "b"]
    assert list(clf.predict([[0.05, 0.0], [5.05, 5.0]])) == ["b", "a"]
    dist, idx = clf.kneighbors([[0.0, 0.0]])
    assert idx.tolist() == [[0, 1]] and np.allclose(dist, [[0.0, 0.01]], atol=1e-6)
    assert clf.get_params()["n_neighbors"] == 2 and clf.set_params(n_neighbors=1).n_neighbors == 1


def test_knn_distribution_by_hand():
    d = torch.tensor([[0.0, math.log(3.0), float("inf")]])
    labels = torch.tensor([[1, 0, 2]])
    # weights softmax(-d/T) with T=1: 3/4 and 1/4; the inf neighbour gets 0
    assert torch.allclose(knn_distribution(d, labels, 3, 1.0), torch.tensor([[0.25, 0.75, 0.0]]))


def test_calibrated_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 1])
    p_knn = torch.tensor([[0.5, 0.5], [1.0, 0.0]])  # the second: p_knn(y)=0, log clamped at -100
    ce = torch.tensor([math.log(2.0), math.log(4.0)])
    want = ((ce * torch.tensor([1 + 0.1 * math.log(2.0), 1 + 0.1 * 100.0])).sum() / 2).item()
    assert calibrated_loss(logits, labels, p_knn, alpha=0.1).item() == pytest.approx(want, rel=1e-5)
    focal = ((ce * torch.tensor([0.5 ** 2, 1.0])).sum() / 2).item()
    assert calibrated_loss(logits, labels, p_knn, kind="focal", gamma=2.0).item() == pytest.approx(focal, rel=1e-5)
    with pytest.raises(KGDataError, match="kind"):
        calibrated_loss(logits, labels, p_knn, kind="mse")


def test_interpolate_is_a_mixture_and_lambda_is_chosen_on_dev():
    p_model = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    p_knn = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    mix = interpolate(p_model, p_knn, 0.25)
    assert torch.allclose(mix, 0.25 * p_knn + 0.75 * p_model) and torch.allclose(mix.sum(1), torch.ones(3))
    labels = torch.tensor([0, 1, 1])
    best, scores = choose_lambda(p_model, p_knn, labels)
    # row 2 needs lam*1 + (1-lam)*0.4 > (1-lam)*0.6, i.e. lam > 1/6; row 1 needs lam < 0.444...; row 3 lam < 0.6
    assert best == 0.2 and scores[0.2] == 1.0 and scores[0.1] < 1.0
    with pytest.raises(KGDataError, match="lam"):
        interpolate(p_model, p_knn, 1.5)
