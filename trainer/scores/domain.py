"""Domain similarity of Cui et al. (CVPR 2018): Earth Mover's Distance between class means."""

from __future__ import annotations

import numpy as np
from scipy import optimize, sparse, spatial

from ..config import InputError
from .inputs import as_features, as_labels


def class_means(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C x D class-mean features, C image counts) over the classes present, in label order:
    a domain as Cui et al. represent it (pass both to `domain_similarity`)."""
    f = as_features(features)
    y = as_labels(labels, f.shape[0])
    classes, y_idx = np.unique(y, return_inverse=True)
    counts = np.bincount(y_idx).astype(np.float64)
    sums = np.zeros((len(classes), f.shape[1]))
    np.add.at(sums, y_idx, f)
    return sums / counts[:, None], counts


def _weights(w: object, m: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(m, 1.0 / m)
    a = np.asarray(w, dtype=np.float64)
    if a.ndim != 1 or len(a) != m:
        raise InputError(f"{name} must hold one weight per point ({m}), got shape {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any() or a.sum() <= 0:
        raise InputError(f"{name} must be finite, >= 0 and not all 0")
    return a / a.sum()


def earth_movers_distance(
    source_points: np.ndarray,
    target_points: np.ndarray,
    source_weights: np.ndarray | None = None,
    target_weights: np.ndarray | None = None,
) -> float:
    r"""Earth Mover's Distance between two weighted point sets, Euclidean ground distance.

    Points g_i (m x D, weights w_i) and h_j (n x D, weights v_j), each set of weights normalised to
    sum 1 (None: uniform), d_ij = ||g_i - h_j||_2:

        EMD = min_{f >= 0}  sum_ij f_ij d_ij   subject to   sum_j f_ij = w_i,  sum_i f_ij = v_j

    (the total flow is 1, so the reference's division by sum_ij f_ij is a no-op). Solved as a
    linear program with scipy's HiGHS; the sets are small (tens to hundreds of classes).
    """
    g = as_features(source_points, "source_points")
    h = as_features(target_points, "target_points")
    if g.shape[1] != h.shape[1]:
        raise InputError(
            f"source and target features differ in dimension: {g.shape[1]} vs {h.shape[1]}"
        )
    m, n = len(g), len(h)
    w = _weights(source_weights, m, "source_weights")
    v = _weights(target_weights, n, "target_weights")
    dist = spatial.distance.cdist(g, h)  # direct differences: exactly 0 between equal points
    if m == 1 or n == 1:  # a single point on one side: everything flows to/from it
        return float((w[:, None] * v[None, :] * dist).sum())
    # flow f_ij at column i * n + j; row sums for every i, column sums for all j but the last
    # (implied by the others, since both sides sum to 1; dropping it keeps the system consistent
    # under rounding)
    rows = sparse.kron(sparse.eye(m), np.ones((1, n)), format="csr")
    cols = sparse.kron(np.ones((1, m)), sparse.eye(n), format="csr")[: n - 1]
    a_eq = sparse.vstack([rows, cols]).tocsc()
    b_eq = np.concatenate([w, v[: n - 1]])
    res = optimize.linprog(dist.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"the EMD linear program failed: {res.message}")
    return float(res.fun)


def domain_similarity(
    source_features: np.ndarray,
    target_features: np.ndarray,
    source_weights: np.ndarray | None = None,
    target_weights: np.ndarray | None = None,
    gamma: float = 0.01,
) -> float:
    r"""Domain similarity of Cui et al. 2018: exp(-gamma * EMD(source, target)).

    Each domain is its class-mean features (one row per class: `class_means`), weighted by the
    class frequencies (counts or fractions; None: uniform):

        sim(S, T) = exp(-gamma * EMD(S, T)),   gamma = 0.01 (the paper's value)

    with EMD as in `earth_movers_distance` (Euclidean distance between class means). 1 for
    identical domains, falling towards 0 as they move apart. Use `earth_movers_distance` for the
    distance itself.
    """
    if not gamma > 0:
        raise InputError(f"gamma must be > 0, got {gamma}")
    emd = earth_movers_distance(source_features, target_features, source_weights, target_weights)
    return float(np.exp(-gamma * emd))
