"""Cross-validated accuracy of a linear probe on the features: logistic regression (sklearn) and
the closed-form ridge probe the `probe` verb uses on every layer."""

from __future__ import annotations

import warnings

import numpy as np

from ..config import InputError
from .inputs import as_features, as_labels, distinct_classes


def linear_probe_accuracy(
    features: np.ndarray, labels: np.ndarray, folds: int = 5, c: float = 1.0, seed: int = 0
) -> float:
    """Cross-validated accuracy (%) of a logistic-regression probe on the features.

    Stratified `folds`-fold cross-validation (shuffled with `seed`); in each fold the features are
    standardised with the training part's mean and standard deviation, then scikit-learn's
    multinomial LogisticRegression (L2, inverse strength `c`, lbfgs, at most 200 iterations; a
    probe that has not fully converged still ranks layers) is fitted on the training part and
    predicts the held-out part. The result is 100 * (correct held-out predictions) / N, over all
    folds. Deterministic for fixed inputs.

    `folds` is lowered to the size of the smallest class when a class has fewer images (at least 2
    per class are needed).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not c > 0:
        raise InputError(f"c must be > 0, got {c}")
    f, y_idx, _, splits = _cv_folds(features, labels, folds, seed)
    correct = 0
    for train, held_out in splits:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=200))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(f[train], y_idx[train])
        correct += int((probe.predict(f[held_out]) == y_idx[held_out]).sum())
    return 100.0 * correct / len(f)


def _cv_folds(
    features: object, labels: object, folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int, list[tuple[np.ndarray, np.ndarray]]]:
    """(features, class indices, class count, stratified shuffled folds) of a probe; `folds` is
    lowered to the smallest class's size, which must be >= 2."""
    from sklearn.model_selection import StratifiedKFold

    f = as_features(features)
    classes, y_idx = distinct_classes(as_labels(labels, f.shape[0]))
    if folds < 2:
        raise InputError(f"folds must be >= 2, got {folds}")
    counts = np.bincount(y_idx)
    if counts.min() < 2:
        raise InputError(
            f"class {int(classes[counts.argmin()])} has {counts.min()} sample: "
            f"cross-validation needs >= 2 per class"
        )
    splitter = StratifiedKFold(
        n_splits=min(folds, int(counts.min())), shuffle=True, random_state=seed
    )
    return f, y_idx, len(classes), list(splitter.split(f, y_idx))


def ridge_probe_accuracy(
    features: np.ndarray, labels: np.ndarray, folds: int = 5, alpha: float = 1.0, seed: int = 0
) -> float:
    """Cross-validated accuracy (%) of a ridge-regression probe: the closed-form, much cheaper
    cousin of `linear_probe_accuracy`, for probing every layer of a large model.

    Same stratified folds as `linear_probe_accuracy`; in each fold, with the training part's
    features X standardised (its mean and sd, so the columns of X have mean 0), one-hot targets Y
    and their column means y (the intercept, which is not penalised):

        W = (X^T X + alpha I)^{-1} X^T (Y - y)  =  X^T (X X^T + alpha I)^{-1} (Y - y)
        prediction = argmax_c (x W + y)_c

    (the second form, an N x N system, when there are fewer images than features). The result is
    100 * (correct held-out predictions) / N. Deterministic for fixed inputs.
    """
    if not alpha > 0:
        raise InputError(f"alpha must be > 0, got {alpha}")
    f, y_idx, n_classes, splits = _cv_folds(features, labels, folds, seed)
    onehot = np.eye(n_classes)[y_idx]
    correct = 0
    for train, held_out in splits:
        mean, sd = f[train].mean(axis=0), f[train].std(axis=0)
        sd[sd == 0] = 1.0  # a constant feature carries nothing: leave it at 0
        x, x_out = (f[train] - mean) / sd, (f[held_out] - mean) / sd
        intercept = onehot[train].mean(axis=0)
        target = onehot[train] - intercept
        if len(x) < x.shape[1]:
            weights = x.T @ np.linalg.solve(x @ x.T + alpha * np.eye(len(x)), target)
        else:
            weights = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ target)
        correct += int(((x_out @ weights + intercept).argmax(axis=1) == y_idx[held_out]).sum())
    return 100.0 * correct / len(f)
