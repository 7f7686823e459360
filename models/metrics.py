"""The metrics of the two tasks, computed in numpy from predictions and labels.

CTR is scored on every impression (AUC, log loss, calibration, and GAUC: the AUC of each
user's impressions, averaged with weights by impression count over users who have both
clicks and non-clicks). CVR is scored on clicked impressions only (MSE of the watch
ratio), as it is trained. The mask search, the trainer's logs and the benchmarks use
these; the pipeline's Evaluator computes the same quantities with TFMA.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank statistic (ties get their average rank); NaN if one class only."""
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(labels.size, dtype=np.float64)
    # Average ranks over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [labels.size]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUC over groups with both classes."""
    labels, scores, groups = np.asarray(labels), np.asarray(scores), np.asarray(groups)
    order = np.argsort(groups, kind="mergesort")
    groups_sorted = groups[order]
    boundaries = np.flatnonzero(groups_sorted[1:] != groups_sorted[:-1]) + 1
    total, weight = 0.0, 0
    for members in np.split(order, boundaries):
        group_labels = labels[members]
        if 0 < group_labels.sum() < members.size:
            total += auc(group_labels, scores[members]) * members.size
            weight += members.size
    return total / weight if weight else float("nan")


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(np.asarray(probabilities, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def mse(targets: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean((np.asarray(targets, np.float64) - np.asarray(predictions, np.float64)) ** 2))


@dataclasses.dataclass(frozen=True)
class TaskMetrics:
    """What a model achieves on an evaluation set; absent tasks are NaN."""

    examples: int
    clicked: int
    ctr_auc: float = float("nan")
    ctr_gauc: float = float("nan")
    ctr_log_loss: float = float("nan")
    ctr_calibration: float = float("nan")  # mean prediction / mean label; 1 is calibrated
    cvr_mse: float = float("nan")  # clicked impressions only

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def compute(
    click: np.ndarray,
    watch_ratio: np.ndarray,
    user: np.ndarray | None,
    ctr: np.ndarray | None = None,
    cvr: np.ndarray | None = None,
) -> TaskMetrics:
    """The metrics of the predictions given (`ctr`, `cvr`, either may be None; no GAUC without `user`)."""
    click = np.asarray(click).astype(bool)
    values: dict[str, float] = {}
    if ctr is not None:
        values.update(
            ctr_auc=auc(click, ctr),
            ctr_gauc=gauc(click, ctr, user) if user is not None else float("nan"),
            ctr_log_loss=log_loss(click, ctr),
            ctr_calibration=float(np.mean(ctr) / max(np.mean(click), 1e-12)),
        )
    if cvr is not None and click.any():
        values["cvr_mse"] = mse(np.asarray(watch_ratio)[click], np.asarray(cvr)[click])
    return TaskMetrics(examples=int(click.size), clicked=int(click.sum()), **values)


# How the mask search ranks a task's rounds: the metric and whether larger is better.
SELECTION_METRIC = {"ctr": ("ctr_auc", True), "cvr": ("cvr_mse", False)}
