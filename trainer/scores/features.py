"""Scores of features + target labels: LogME (You et al., ICML 2021) and H-score (Bao et al.,
ICIP 2019)."""

from __future__ import annotations

import numpy as np
from scipy import optimize

from .inputs import as_features, as_labels, check_samples, distinct_classes

# LogME: the reference code's regulariser of the fixed point's denominators, and our stopping rule
LOGME_EPS = 1e-5
LOGME_RTOL = 1e-7  # relative change of t = alpha / beta at which the fixed point has converged
LOGME_PLAIN_STEPS = 100  # plain fixed-point steps before the limit is found by root bracketing


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
    f = as_features(features)
    n, d = f.shape
    y_idx = distinct_classes(as_labels(labels, n))[1]
    check_samples(n, int(y_idx.max()) + 1)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    k = int((s > max(n, d) * np.finfo(np.float64).eps * s[0]).sum()) if s[0] > 0 else 0
    u, sigma = u[:, :k], s[:k] ** 2
    onehot = np.eye(int(y_idx.max()) + 1)[y_idx]  # N x C
    x = u.T @ onehot  # k x C
    x2 = x**2
    # ||y||^2 - ||x||^2 is the residual outside the column space of F: compute it without cancellation
    outside = ((onehot - u @ x) ** 2).sum(axis=0)  # C
    evidences = [_logme_class(sigma, x2[:, c], outside[c], n) for c in range(onehot.shape[1])]
    return float(np.mean(evidences))


def _logme_terms(
    t: float, sigma: np.ndarray, x2: np.ndarray, outside: float
) -> tuple[float, float, float]:
    """(gamma, m^T m, ||F m - y||^2) at t = alpha / beta."""
    gamma = float((sigma / (t + sigma)).sum())
    m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
    r2 = float((x2 * (t / (t + sigma)) ** 2).sum() + outside)
    return gamma, m2, r2


def _logme_step(
    t: float, sigma: np.ndarray, x2: np.ndarray, outside: float, n: int
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
    evidence = (
        k / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * np.log(alpha + beta * sigma).sum()
        - beta / 2 * r2
        - alpha / 2 * m2
        - n / 2 * np.log(2 * np.pi)
    )
    return float(evidence / n)


def _logme_limit(
    u0: float, sigma: np.ndarray, x2: np.ndarray, outside: float, n: int
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
    f = as_features(features)
    n, d = f.shape
    y_idx = distinct_classes(as_labels(labels, n))[1]
    check_samples(n, int(y_idx.max()) + 1)
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
    return float((counts * (z**2).sum(axis=1)).sum())
