"""The task metrics against scikit-learn and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from lt4rec.models import metrics


def test_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.3 * labels, 1)  # many ties
    assert metrics.auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(metrics.auc(np.ones(4), np.arange(4)))


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    labels = np.array([1, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.3, 0.4])
    users = np.array([1, 1, 2, 2, 2, 3, 3])  # user 3 clicked everything: no AUC
    user_1, user_2 = 1.0, sk.roc_auc_score([0, 1, 0], [0.8, 0.2, 0.5])
    assert metrics.gauc(labels, scores, users) == pytest.approx((2 * user_1 + 3 * user_2) / 5)


def test_compute_scores_cvr_on_clicks_only():
    click = np.array([1, 0, 1, 0])
    ratio = np.array([0.5, 0.0, 1.0, 0.0])
    result = metrics.compute(
        click, ratio, np.array([1, 1, 2, 2]), ctr=np.array([0.7, 0.2, 0.6, 0.4]), cvr=np.array([0.4, 0.9, 0.8, 0.9])
    )
    assert result.cvr_mse == pytest.approx((0.01 + 0.04) / 2)
    assert result.ctr_log_loss == pytest.approx(sk.log_loss(click, [0.7, 0.2, 0.6, 0.4]))
    assert result.ctr_calibration == pytest.approx(np.mean([0.7, 0.2, 0.6, 0.4]) / 0.5)
    assert (result.examples, result.clicked) == (4, 2)
