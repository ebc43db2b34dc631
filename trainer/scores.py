"""How well pre-trained features fit a target dataset: transferability scores, pure numpy/scipy.

Each function takes the pooled features of the target's images (`N x D`, one row per image) and the
images' target labels (`N` ints), or the source head's predictions, and returns one number, higher =
better fit (except `earth_movers_distance`, a distance). Inputs come from `trainer.probe`; the rule
from scores to settings lives elsewhere. Bad input raises `InputError` with one line.

| score | what it needs | paper |
|---|---|---|
| `logme` | features + labels | You et al., ICML 2021 (arXiv 2102.11005) |
| `hscore` | features + labels | Bao et al., ICIP 2019 |
| `leep` | source head's softmax + labels | Nguyen et al., ICML 2020 (arXiv 2002.12462) |
| `nce` | source head's argmax + labels | Tran et al., ICCV 2019 (arXiv 1908.08142) |
| `linear_probe_accuracy` | features + labels | (logistic regression, k-fold cross-validation) |
| `domain_similarity` | class-mean features of both domains | Cui et al., CVPR 2018 (arXiv 1806.06193) |

Labels are any non-negative ints; the classes are the distinct values present (a class absent from
the sample contributes nothing, where LogME's reference code would count `max(label) + 1` classes).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, sparse, spatial

from .config import InputError

# LogME: the reference code's regulariser of the fixed point's denominators, and our stopping rule
LOGME_EPS = 1e-5
LOGME_RTOL = 1e-7  # relative change of t = alpha / beta at which the fixed point has converged
LOGME_PLAIN_STEPS = 100  # plain fixed-point steps before the limit is found by root bracketing


# --- input checks --------------------------------------------------------------------------------

def _features(x: object, name: str = "features") -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (N samples x D dims), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {a.shape})")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise InputError(f"{name} has NaN or infinite values (in {bad} of {a.shape[0]} rows)")
    return a


def _labels(y: object, n: int | None, name: str = "labels") -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of class indices, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise InputError(f"{name} has {len(a)} entries but there are {n} samples")
    if len(a) == 0:
        raise InputError(f"{name} is empty")
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} must be integer class indices, got dtype {a.dtype}")
    if a.min() < 0:
        raise InputError(f"{name} must be >= 0, got {int(a.min())}")
    return a.astype(np.int64)


def _classes(labels: np.ndarray, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """(distinct classes, index of each sample's class among them); at least 2 classes."""
    classes, inverse = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"{name} hold a single class ({int(classes[0])}): a score needs >= 2 classes")
    return classes, inverse


def _check_samples(n: int, k: int) -> None:
    if n <= k:
        raise InputError(f"{n} samples for {k} classes: a score needs more samples than classes")


# --- LogME ---------------------------------------------------------------------------------------

def logme(features: np.ndarray, labels: np.ndarray) -> float:
    r"""LogME (You et al. 2021): the log maximum evidence of a Bayesian linear model on the features.

    Per class c the target is the indicator y = [label_i == c] (N,), modelled as y = F w + noise,
    with prior w ~ N(0, alpha^-1 I_D) and noise ~ N(0, beta^-1 I_N), F the N x D features. The
    evidence (marginal likelihood) is y ~ N(0, beta^-1 I + alpha^-1 F F^T):

        L(alpha, beta) = D/2 log alpha + N/2 log beta - 1/2 log|A| - beta/2 ||F m - y||^2
                         - alpha/2 m^T m - N/2 log(2 pi),
        A = alpha I_D + beta F^T F,   m = beta A^-1 F^T y   (the posterior mean of w).

    SVD trick: F = U diag(s) V^T with the k = rank(F) <= min(N, D) non-zero singular values,
    sigma_i = s_i^2, x = U^T y (k,), t = alpha / beta. Then

        gamma  = sum_i sigma_i / (t + sigma_i)                  (effective number of parameters)
        m^T m  = sum_i sigma_i x_i^2 / (t + sigma_i)^2
        ||F m - y||^2 = sum_i (t / (t + sigma_i))^2 x_i^2 + (||y||^2 - ||x||^2)
        log|A| = sum_i log(alpha + beta sigma_i) + (D - k) log alpha

    and the published fixed point (MacKay's updates), from alpha = beta = 1:

        alpha <- gamma / (m^T m + eps),   beta <- (N - gamma) / (||F m - y||^2 + eps),   eps = 1e-5

    LogME = 1/C sum_c L_c(alpha_c, beta_c) / N, over the C classes.

    Deviations from the reference code (thuml/LogME), all to make the value the evidence at the
    fixed point whatever N and D:
    - log|A| keeps its (D - k) log alpha term, so that D/2 log alpha - 1/2 log|A| =
      k/2 log alpha - 1/2 sum_i log(alpha + beta sigma_i). The reference code drops it, which adds
      (D - k)/2 log alpha to the evidence whenever rank(F) < D, i.e. always when N < D.
    - The iteration runs to a relative change of t below 1e-7 (reference: 1e-3 within 11 steps).
      When N < D it can crawl for thousands of steps; after 100 plain steps its limit, the root of
      log(alpha(t) / beta(t)) = log t in the direction it is moving, is found by bracketing + Brent.
    - The SVD is of F itself (float64), not of F^T F, so small singular values keep their precision;
      singular values below max(N, D) * machine-eps * s_max count as zero (numpy's matrix_rank).
    - Features are used as given (no centring or scaling), as in the reference code. Like it, the
      value is not exactly invariant to the features' scale: eps is absolute, so features of norm
      ~1e6 (m^T m below eps) lower it. Pooled activations (order 0.01 to 100) are unaffected.
    - When N <= D and F w can fit y exactly, the evidence grows towards a finite supremum as
      beta -> infinity; the eps in beta's update stops the fixed point just short of it (within
      ~1e-3 per sample in the tests), as in the reference code.
    """
    f = _features(features)
    n, d = f.shape
    y_idx = _classes(_labels(labels, n))[1]
    _check_samples(n, int(y_idx.max()) + 1)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    k = int((s > max(n, d) * np.finfo(np.float64).eps * s[0]).sum()) if s[0] > 0 else 0
    u, sigma = u[:, :k], s[:k] ** 2
    onehot = np.eye(int(y_idx.max()) + 1)[y_idx]  # N x C
    x = u.T @ onehot  # k x C
    x2 = x ** 2
    # ||y||^2 - ||x||^2 is the residual outside the column space of F: compute it without cancellation
    outside = ((onehot - u @ x) ** 2).sum(axis=0)  # C
    evidences = [_logme_class(sigma, x2[:, c], outside[c], n) for c in range(onehot.shape[1])]
    return float(np.mean(evidences))


def _logme_terms(t: float, sigma: np.ndarray, x2: np.ndarray, outside: float
                 ) -> tuple[float, float, float]:
    """(gamma, m^T m, ||F m - y||^2) at t = alpha / beta."""
    gamma = float((sigma / (t + sigma)).sum())
    m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
    r2 = float((x2 * (t / (t + sigma)) ** 2).sum() + outside)
    return gamma, m2, r2


def _logme_step(t: float, sigma: np.ndarray, x2: np.ndarray, outside: float, n: int
                ) -> tuple[float, float]:
    """One fixed-point update: (alpha, beta) from t."""
    gamma, m2, r2 = _logme_terms(t, sigma, x2, outside)
    return gamma / (m2 + LOGME_EPS), (n - gamma) / (r2 + LOGME_EPS)


def _logme_class(sigma: np.ndarray, x2: np.ndarray, outside: float, n: int) -> float:
    """L_c / N at the fixed point. D does not appear: D/2 log alpha - (D - k)/2 log alpha = k/2 log alpha."""
    k = len(sigma)
    if k == 0:  # all-zero features: y ~ N(0, beta^-1 I), alpha plays no part
        beta = n / (outside + LOGME_EPS)
        return (n / 2 * np.log(beta) - beta / 2 * outside - n / 2 * np.log(2 * np.pi)) / n
    alpha, beta = 1.0, 1.0
    converged = False
    for _ in range(LOGME_PLAIN_STEPS):
        t = alpha / beta
        alpha, beta = _logme_step(t, sigma, x2, outside, n)
        if abs(alpha / beta - t) <= LOGME_RTOL * t:
            converged = True
            break
    if not converged:
        alpha, beta = _logme_limit(np.log(alpha / beta), sigma, x2, outside, n)
    t = alpha / beta
    _, m2, r2 = _logme_terms(t, sigma, x2, outside)
    evidence = (k / 2 * np.log(alpha) + n / 2 * np.log(beta)
                - 0.5 * np.log(alpha + beta * sigma).sum()
                - beta / 2 * r2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return float(evidence / n)


def _logme_limit(u0: float, sigma: np.ndarray, x2: np.ndarray, outside: float, n: int
                 ) -> tuple[float, float]:
    """The limit of the fixed point from log t = u0: the first root of g(u) = log t'(u) - u ahead."""
    def g(u: float) -> float:
        with np.errstate(all="ignore"):  # far out, alpha or beta may under/overflow: no sign then
            a, b = _logme_step(float(np.exp(u)), sigma, x2, outside, n)
            value = float(np.log(a / b) - u)
        return value if np.isfinite(value) else float(g0_sign)

    g0_sign = 0.0

    g0 = g(u0)
    g0_sign = float(np.sign(g0))
    if g0 == 0:
        a, b = _logme_step(float(np.exp(u0)), sigma, x2, outside, n)
        return a, b
    direction = 1.0 if g0 > 0 else -1.0
    lo, step = u0, 0.5
    while step < 200:
        hi = lo + direction * step
        if np.sign(g(hi)) != np.sign(g0):
            a_, b_ = sorted((lo, hi))
            root = optimize.brentq(g, a_, b_, xtol=1e-12, rtol=4 * np.finfo(float).eps, maxiter=200)
            a, b = _logme_step(float(np.exp(root)), sigma, x2, outside, n)
            return a, b
        lo, step = hi, step * 2
    # no fixed point within a factor e^255 of the start: take the far end (the evidence has flattened)
    a, b = _logme_step(float(np.exp(lo)), sigma, x2, outside, n)
    return a, b


# --- H-score -------------------------------------------------------------------------------------

def hscore(features: np.ndarray, labels: np.ndarray) -> float:
    r"""H-score (Bao et al. 2019): how much of the features' variance is between-class variance.

        H(f) = tr( cov(f)^+  cov(E[f | y]) )

        cov(f)       = 1/N sum_i (f_i - mu)(f_i - mu)^T,                    mu = 1/N sum_i f_i
        cov(E[f|y])  = 1/N sum_i (mu_{y_i} - mu)(mu_{y_i} - mu)^T
                     = sum_c (n_c / N) (mu_c - mu)(mu_c - mu)^T,             mu_c = mean of class c

    with ^+ the Moore-Penrose pseudo-inverse (cov(f) is singular whenever N <= D). The 1/N (or
    1/(N-1)) factors cancel. 0 <= H <= min(C - 1, rank cov(f)); C - 1 when every class is a point.

    Computed from the SVD of the centred features F_c = U diag(s) V^T: cov(f)^+ = N V diag(1/s^2) V^T
    over the singular values above max(N, D) * machine-eps * s_max (numpy's matrix_rank tolerance),
    so H = sum_c n_c ||diag(1/s) V^T (mu_c - mu)||^2.
    """
    f = _features(features)
    n, d = f.shape
    y_idx = _classes(_labels(labels, n))[1]
    _check_samples(n, int(y_idx.max()) + 1)
    fc = f - f.mean(axis=0)
    _, s, vh = np.linalg.svd(fc, full_matrices=False)
    if s[0] == 0:
        return 0.0  # constant features: no variance at all, none of it between classes
    k = int((s > max(n, d) * np.finfo(np.float64).eps * s[0]).sum())
    counts = np.bincount(y_idx).astype(np.float64)
    means = np.zeros((len(counts), d))
    np.add.at(means, y_idx, fc)
    means /= counts[:, None]  # mu_c - mu
    z = (means @ vh[:k].T) / s[:k]  # C x k
    return float((counts * (z ** 2).sum(axis=1)).sum())


# --- LEEP and NCE --------------------------------------------------------------------------------

def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    r"""LEEP (Nguyen et al. 2020): log expected empirical prediction of the source head.

    theta(x_i) is the source head's softmax on target image i (over the Z source classes):

        P(y, z)  = 1/N sum_{i: y_i = y} theta(x_i)_z            (empirical joint)
        P(y | z) = P(y, z) / P(z),   P(z) = sum_y P(y, z)
        LEEP     = 1/N sum_i log( sum_z P(y_i | z) theta(x_i)_z )

    LEEP <= 0; 0 when each source class predicts one target class with certainty. A source class
    that no image gives any probability (P(z) = 0) is left out: its theta is 0 for every image.
    Rows of `source_probs` must be probabilities (>= 0, summing to 1 within 1e-3).
    """
    p = _features(source_probs, "source_probs")
    n = p.shape[0]
    y_idx = _classes(_labels(labels, n))[1]
    if (p < 0).any():
        raise InputError("source_probs has negative entries: pass the source head's softmax, not logits")
    sums = p.sum(axis=1)
    if np.abs(sums - 1).max() > 1e-3:
        i = int(np.abs(sums - 1).argmax())
        raise InputError(f"source_probs rows must sum to 1 (a softmax), row {i} sums to {sums[i]:.4g}")
    joint = np.zeros((int(y_idx.max()) + 1, p.shape[1]))
    np.add.at(joint, y_idx, p)
    joint /= n
    pz = joint.sum(axis=0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = (p * cond[y_idx]).sum(axis=1)
    return float(np.log(eep).mean())


def nce(source_labels: np.ndarray, target_labels: np.ndarray) -> float:
    r"""NCE (Tran et al. 2019): negative conditional entropy of the target label given the source's.

    z_i = the source head's argmax on target image i, y_i its target label:

        P(y, z) = 1/N #{i: y_i = y, z_i = z},   P(z) = sum_y P(y, z)
        NCE     = -H(Y | Z) = sum_{y, z: P(y, z) > 0} P(y, z) log( P(y, z) / P(z) )

    NCE <= 0; 0 when the source label determines the target label; -H(Y) when they are independent.
    Equals `leep` of one-hot source probabilities.
    """
    y = _labels(target_labels, None, "target_labels")
    z = _labels(source_labels, len(y), "source_labels")
    y_idx = _classes(y, "target_labels")[1]
    z_idx = np.unique(z, return_inverse=True)[1]
    joint = np.zeros((int(y_idx.max()) + 1, int(z_idx.max()) + 1))
    np.add.at(joint, (y_idx, z_idx), 1.0)
    joint /= len(y)
    pz = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.broadcast_to(pz, joint.shape)[nz])).sum())


# --- linear probe --------------------------------------------------------------------------------

def linear_probe_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5,
                          c: float = 1.0, seed: int = 0) -> float:
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


def _cv_folds(features: object, labels: object, folds: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray, int, list[tuple[np.ndarray, np.ndarray]]]:
    """(features, class indices, class count, stratified shuffled folds) of a probe; `folds` is
    lowered to the smallest class's size, which must be >= 2."""
    from sklearn.model_selection import StratifiedKFold

    f = _features(features)
    classes, y_idx = _classes(_labels(labels, f.shape[0]))
    if folds < 2:
        raise InputError(f"folds must be >= 2, got {folds}")
    counts = np.bincount(y_idx)
    if counts.min() < 2:
        raise InputError(f"class {int(classes[counts.argmin()])} has {counts.min()} sample: "
                         f"cross-validation needs >= 2 per class")
    splitter = StratifiedKFold(n_splits=min(folds, int(counts.min())), shuffle=True, random_state=seed)
    return f, y_idx, len(classes), list(splitter.split(f, y_idx))


def ridge_probe_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5,
                         alpha: float = 1.0, seed: int = 0) -> float:
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


# --- domain similarity ---------------------------------------------------------------------------

def class_means(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C x D class-mean features, C image counts) over the classes present, in label order:
    a domain as Cui et al. represent it (pass both to `domain_similarity`)."""
    f = _features(features)
    y = _labels(labels, f.shape[0])
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


def earth_movers_distance(source_points: np.ndarray, target_points: np.ndarray,
                          source_weights: np.ndarray | None = None,
                          target_weights: np.ndarray | None = None) -> float:
    r"""Earth Mover's Distance between two weighted point sets, Euclidean ground distance.

    Points g_i (m x D, weights w_i) and h_j (n x D, weights v_j), each set of weights normalised to
    sum 1 (None: uniform), d_ij = ||g_i - h_j||_2:

        EMD = min_{f >= 0}  sum_ij f_ij d_ij   subject to   sum_j f_ij = w_i,  sum_i f_ij = v_j

    (the total flow is 1, so the reference's division by sum_ij f_ij is a no-op). Solved as a
    linear program with scipy's HiGHS; the sets are small (tens to hundreds of classes).
    """
    g = _features(source_points, "source_points")
    h = _features(target_points, "target_points")
    if g.shape[1] != h.shape[1]:
        raise InputError(f"source and target features differ in dimension: {g.shape[1]} vs {h.shape[1]}")
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


def domain_similarity(source_features: np.ndarray, target_features: np.ndarray,
                      source_weights: np.ndarray | None = None,
                      target_weights: np.ndarray | None = None, gamma: float = 0.01) -> float:
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
