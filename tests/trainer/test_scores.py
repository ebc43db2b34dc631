"""Transferability scores: each against a hand computation on small arrays, plus properties.

The hand computations are written loop by loop, straight from the papers' definitions, and share no
code with `trainer.scores`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.config import InputError
from trainer.scores import (
    class_means,
    domain_similarity,
    earth_movers_distance,
    hscore,
    leep,
    linear_probe_accuracy,
    logme,
    nce,
)


def blobs(n_per_class: int, d: int, classes: int, spread: float, seed: int = 0):
    """Gaussian features around one random centre per class; labels class-major."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * spread
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), d)), labels


# --- LogME ---------------------------------------------------------------------------------------


def logme_reference(f: np.ndarray, labels: np.ndarray, tol: float = 1e-11):
    """The paper's Algorithm 1 as written, in the D-dimensional form (no SVD trick):
    per class, alpha = beta = 1, then repeat
        A = alpha I + beta F^T F,  m = beta A^-1 F^T y,  gamma = sum_i beta s_i / (alpha + beta s_i)
        alpha <- gamma / (m^T m + eps),  beta <- (N - gamma) / (||F m - y||^2 + eps)
    until alpha / beta settles; then L = D/2 log a + N/2 log b - 1/2 log|A| - b/2 ||Fm - y||^2
    - a/2 m^T m - N/2 log 2pi at the final (alpha, beta). Returns (LogME, [(alpha, beta, L/N)])."""
    eps = 1e-5
    n, d = f.shape
    eig = np.linalg.eigvalsh(f.T @ f)  # the s_i of F^T F
    per_class = []
    for c in sorted(set(labels.tolist())):
        y = np.array([1.0 if label == c else 0.0 for label in labels])
        alpha, beta = 1.0, 1.0
        for _ in range(200_000):
            a_mat = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a_mat, f.T @ y)
            gamma = 0.0
            for s in eig:
                gamma += beta * s / (alpha + beta * s)
            new_alpha = gamma / (m @ m + eps)
            new_beta = (n - gamma) / (((f @ m - y) ** 2).sum() + eps)
            done = abs(new_alpha / new_beta - alpha / beta) <= tol * alpha / beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a_mat = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a_mat, f.T @ y)
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - 0.5 * np.linalg.slogdet(a_mat)[1]
            - beta / 2 * ((f @ m - y) ** 2).sum()
            - alpha / 2 * (m @ m)
            - n / 2 * math.log(2 * math.pi)
        )
        per_class.append((alpha, beta, evidence / n))
    return sum(e for _, _, e in per_class) / len(per_class), per_class


def gaussian_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, C) with C = I / beta + F F^T / alpha: the marginal likelihood, written out."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return -0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y))


@pytest.mark.parametrize("n_per_class, d", [(12, 5), (8, 40), (4, 30)])  # N > D, N < D, N << D
def test_logme_matches_the_papers_algorithm(n_per_class: int, d: int) -> None:
    f, labels = blobs(n_per_class, d, classes=3, spread=1.5, seed=d)
    expected, per_class = logme_reference(f, labels)
    assert logme(f, labels) == pytest.approx(expected, rel=1e-7, abs=1e-9)
    # the reference's evidence is the Gaussian marginal likelihood, and a maximum of it: inside,
    # or, when N <= D lets F w fit y exactly, (nearly) its supremum at beta -> infinity
    n = len(labels)
    for c, (alpha, beta, evidence) in enumerate(per_class):
        y = (labels == c).astype(float)
        best = gaussian_log_evidence(f, y, alpha, beta)
        assert best / n == pytest.approx(evidence, rel=1e-9)
        for da in (1.1, 1 / 1.1):
            assert gaussian_log_evidence(f, y, alpha * da, beta) < best
        ceiling = best
        if n <= d:  # noise-free limit: y ~ N(0, K / alpha), K = F F^T, best alpha = N / y^T K^-1 y
            k = f @ f.T
            q = y @ np.linalg.solve(k, y)
            ceiling = max(
                best,
                -0.5 * (n * math.log(2 * math.pi) + np.linalg.slogdet(k)[1])
                + n / 2 * math.log(n / q)
                - n / 2,
            )
        assert ceiling - best <= 0.005 * n  # the published eps = 1e-5 stops beta just short of it
        for db in (1.1, 1 / 1.1):
            assert gaussian_log_evidence(f, y, alpha, beta * db) < ceiling


def test_logme_ignores_zero_columns_and_rotations() -> None:
    # the evidence depends on F only through F F^T: padding with zero dimensions or rotating the
    # features changes nothing (the reference code's D/2 log alpha term would change with padding)
    f, labels = blobs(6, 20, classes=4, spread=2.0, seed=1)  # N = 24 > D = 20
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(20, 20)))
    value = logme(f, labels)
    assert logme(np.hstack([f, np.zeros((24, 30))]), labels) == pytest.approx(value, rel=1e-9)
    assert logme(f @ q, labels) == pytest.approx(value, rel=1e-9)


def test_logme_ranks_separated_features_above_shuffled_labels() -> None:
    f, labels = blobs(30, 16, classes=5, spread=3.0)
    shuffled = np.random.default_rng(0).permutation(labels)
    assert logme(f, labels) > logme(f, shuffled) + 0.05
    # also with fewer samples than dimensions, the usual case for a small target and a wide layer
    f, labels = blobs(6, 64, classes=5, spread=3.0)
    assert logme(f, labels) > logme(f, np.random.default_rng(0).permutation(labels))


def test_logme_of_constant_zero_features_is_the_noise_model() -> None:
    # F = 0: y ~ N(0, I / beta), maximised at beta = N / ||y||^2 (+ eps), per class
    labels = np.array([0, 0, 0, 1])
    n = 4
    expected = 0.0
    for c in (0, 1):
        y2 = sum(1.0 for label in labels if label == c)
        beta = n / (y2 + 1e-5)
        expected += (n / 2 * math.log(beta) - beta / 2 * y2 - n / 2 * math.log(2 * math.pi)) / n / 2
    assert logme(np.zeros((4, 3)), labels) == pytest.approx(expected, rel=1e-12)


# --- H-score -------------------------------------------------------------------------------------


def hscore_by_hand(f: np.ndarray, labels: np.ndarray) -> float:
    n, d = f.shape
    mean = [sum(f[i, j] for i in range(n)) / n for j in range(d)]
    cov_f = np.zeros((d, d))
    cov_g = np.zeros((d, d))
    class_mean = {}
    for c in set(labels.tolist()):
        rows = [i for i in range(n) if labels[i] == c]
        class_mean[c] = [sum(f[i, j] for i in rows) / len(rows) for j in range(d)]
    for i in range(n):
        g = class_mean[labels[i]]
        for a in range(d):
            for b in range(d):
                cov_f[a, b] += (f[i, a] - mean[a]) * (f[i, b] - mean[b]) / n
                cov_g[a, b] += (g[a] - mean[a]) * (g[b] - mean[b]) / n
    product = np.linalg.pinv(cov_f) @ cov_g
    return sum(product[a, a] for a in range(d))


@pytest.mark.parametrize("n_per_class, d", [(10, 4), (3, 12)])
def test_hscore_matches_the_definition(n_per_class: int, d: int) -> None:
    f, labels = blobs(n_per_class, d, classes=3, spread=1.0, seed=d)
    assert hscore(f, labels) == pytest.approx(hscore_by_hand(f, labels), rel=1e-7)


def test_hscore_properties() -> None:
    f, labels = blobs(20, 6, classes=4, spread=2.0)
    value = hscore(f, labels)
    assert 0 < value < 3  # at most C - 1
    a = np.random.default_rng(3).normal(size=(6, 6))  # invertible: H is invariant
    assert hscore(f @ a, labels) == pytest.approx(value, rel=1e-7)
    assert hscore(f, np.random.default_rng(0).permutation(labels)) < value / 2
    points = np.eye(4)[labels] * 5.0  # every class a single point: all variance is between classes
    assert hscore(points, labels) == pytest.approx(3.0, rel=1e-9)


# --- LEEP and NCE --------------------------------------------------------------------------------


def leep_by_hand(probs: np.ndarray, labels: np.ndarray) -> float:
    n, z_count = probs.shape
    classes = sorted(set(labels.tolist()))
    joint = {(y, z): 0.0 for y in classes for z in range(z_count)}
    for i in range(n):
        for z in range(z_count):
            joint[labels[i], z] += probs[i, z] / n
    marginal = {z: sum(joint[y, z] for y in classes) for z in range(z_count)}
    total = 0.0
    for i in range(n):
        eep = sum(
            joint[labels[i], z] / marginal[z] * probs[i, z]
            for z in range(z_count)
            if marginal[z] > 0
        )
        total += math.log(eep)
    return total / n


def nce_by_hand(source: np.ndarray, target: np.ndarray) -> float:
    n = len(target)
    counts: dict[tuple[int, int], int] = {}
    for y, z in zip(target.tolist(), source.tolist()):
        counts[y, z] = counts.get((y, z), 0) + 1
    z_counts: dict[int, int] = {}
    for z in source.tolist():
        z_counts[z] = z_counts.get(z, 0) + 1
    return sum(c / n * math.log(c / z_counts[z]) for (y, z), c in counts.items())


def softmax_rows(n: int, k: int, seed: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(n, k)) * 2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_leep_matches_the_definition() -> None:
    probs = softmax_rows(15, 7, seed=0)
    probs[:, 6] = 0  # a source class nobody predicts
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.array([0, 1, 2] * 5)
    assert leep(probs, labels) == pytest.approx(leep_by_hand(probs, labels), rel=1e-10)


def test_leep_known_values() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    aligned = np.eye(5)[labels + 2]  # source class y + 2 always, with certainty: LEEP = log 1
    assert leep(aligned, labels) == pytest.approx(0.0, abs=1e-12)
    # a source head that always says the same class: P(y|z) is the class frequency, LEEP = -H(Y)
    constant = np.tile([0.0, 1.0, 0.0], (6, 1))
    entropy = -(2 / 6 * math.log(2 / 6) + 1 / 6 * math.log(1 / 6) + 3 / 6 * math.log(3 / 6))
    assert leep(constant, labels) == pytest.approx(-entropy, rel=1e-12)


def test_nce_matches_the_definition_and_leep_of_one_hot() -> None:
    rng = np.random.default_rng(0)
    source = rng.integers(0, 6, 40)
    target = (source + rng.integers(0, 2, 40)) % 4
    assert nce(source, target) == pytest.approx(nce_by_hand(source, target), rel=1e-10)
    assert nce(source, target) == pytest.approx(leep(np.eye(6)[source], target), rel=1e-10)


def test_nce_known_values() -> None:
    target = np.array([0, 1, 1, 2, 0, 2])
    assert nce(target * 3 + 1, target) == pytest.approx(0.0, abs=1e-12)  # z determines y
    assert (
        nce(np.array([7, 3, 4, 9, 8, 5]), target) == 0.0
    )  # finer source classes, still determined
    # independent: every (y, z) pair equally often -> -H(Y) = -log 3
    y = np.repeat(np.arange(3), 4)
    z = np.tile(np.arange(4), 3)
    assert nce(z, y) == pytest.approx(-math.log(3), rel=1e-12)


# --- linear probe --------------------------------------------------------------------------------


def test_linear_probe_of_constant_features_predicts_the_majority_class() -> None:
    # classes of 12, 8, 4 images, 4 folds: each training part holds 9, 6, 3 images of constant
    # features, so the probe predicts class 0 everywhere: 12 of 24 right
    labels = np.array([0] * 12 + [1] * 8 + [2] * 4)
    assert linear_probe_accuracy(np.ones((24, 3)), labels, folds=4) == pytest.approx(50.0)


def test_linear_probe_matches_a_fold_by_fold_computation() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    f, labels = blobs(12, 8, classes=3, spread=0.8, seed=4)
    correct = 0
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(f, labels):
        mean = f[train].mean(axis=0)
        std = f[train].std(axis=0)
        model = LogisticRegression(C=1.0, max_iter=200).fit((f[train] - mean) / std, labels[train])
        predictions = model.predict((f[test] - mean) / std)
        for p, y in zip(predictions, labels[test]):
            correct += int(p == y)
    assert linear_probe_accuracy(f, labels) == pytest.approx(100 * correct / len(labels))


def test_linear_probe_ranks_and_is_deterministic() -> None:
    f, labels = blobs(40, 32, classes=5, spread=2.0)
    good = linear_probe_accuracy(f, labels)
    assert good == 100.0
    shuffled = linear_probe_accuracy(f, np.random.default_rng(0).permutation(labels))
    assert shuffled < 40  # chance is 20%
    assert linear_probe_accuracy(f, labels) == good
    # a class of 3 images: 3 folds instead of 5, still every image predicted once
    small_labels = np.array([0] * 3 + [1] * 10)
    value = linear_probe_accuracy(f[:13], small_labels)
    assert value * 13 / 100 == pytest.approx(round(value * 13 / 100))


def test_linear_probe_speed_budget_shape() -> None:
    # the brief's size (N = 500, D = 512): runs and gives a percentage (timing is measured, not asserted)
    f, labels = blobs(50, 512, classes=10, spread=0.3)
    assert 0 <= linear_probe_accuracy(f, labels) <= 100


# --- domain similarity ---------------------------------------------------------------------------


def emd_1d_by_hand(xs: list[float], ws: list[float], ys: list[float], vs: list[float]) -> float:
    """1-D EMD = integral of |CDF_source - CDF_target| (weights normalised)."""
    ws = [w / sum(ws) for w in ws]
    vs = [v / sum(vs) for v in vs]
    points = sorted(set(xs) | set(ys))
    total = 0.0
    for left, right in zip(points, points[1:]):
        cdf_s = sum(w for x, w in zip(xs, ws) if x <= left)
        cdf_t = sum(v for y, v in zip(ys, vs) if y <= left)
        total += abs(cdf_s - cdf_t) * (right - left)
    return total


def test_emd_matches_hand_computations() -> None:
    # one source point at the origin, two target points: everything moves from the origin
    assert earth_movers_distance(
        [[0.0, 0.0]], [[3.0, 4.0], [0.0, 1.0]], None, [1, 3]
    ) == pytest.approx(0.25 * 5 + 0.75 * 1)
    # 2 x 2 with equal weights: the cheaper of the two matchings
    g = np.array([[0.0, 0.0], [10.0, 0.0]])
    h = np.array([[9.0, 0.0], [0.0, 2.0]])
    straight = (9 + math.hypot(10, 2)) / 2
    crossed = (2 + 1) / 2
    assert earth_movers_distance(g, h) == pytest.approx(min(straight, crossed))
    # 1-D with uneven weights: the CDF integral
    xs, ws, ys, vs = [0.0, 1.0, 4.0], [1, 2, 1], [0.5, 2.0], [3, 1]
    assert earth_movers_distance(
        np.array(xs)[:, None], np.array(ys)[:, None], ws, vs
    ) == pytest.approx(emd_1d_by_hand(xs, ws, ys, vs), rel=1e-9)


def test_emd_agrees_with_scipy() -> None:
    from scipy.stats import wasserstein_distance_nd

    rng = np.random.default_rng(0)
    g, h = rng.normal(size=(7, 5)), rng.normal(size=(9, 5)) + 0.5
    w, v = rng.uniform(1, 10, 7), rng.uniform(1, 10, 9)
    assert earth_movers_distance(g, h, w, v) == pytest.approx(
        wasserstein_distance_nd(g, h, w, v), rel=1e-7
    )


def test_domain_similarity_properties() -> None:
    f, labels = blobs(10, 16, classes=6, spread=2.0)
    means, counts = class_means(f, labels)
    assert means.shape == (6, 16) and counts.tolist() == [10] * 6
    assert domain_similarity(means, means, counts, counts) == 1.0
    direction = np.random.default_rng(1).normal(size=16)
    direction /= np.linalg.norm(direction)
    previous = 1.0
    for shift in (1.0, 5.0, 25.0):
        # a translated copy of a domain is |shift| away (W1 of a translate), so exp(-0.01 |shift|)
        sim = domain_similarity(means, means + shift * direction, counts, counts)
        assert sim == pytest.approx(math.exp(-0.01 * shift), rel=1e-7)
        assert sim < previous
        previous = sim
    assert domain_similarity(means, means + 5 * direction, gamma=0.1) == pytest.approx(
        math.exp(-0.5)
    )


# --- bad input -----------------------------------------------------------------------------------

GOOD_F = np.random.default_rng(0).normal(size=(6, 3))
GOOD_Y = np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("score", [logme, hscore, linear_probe_accuracy])
@pytest.mark.parametrize(
    "features, labels, message",
    [
        (GOOD_F, GOOD_Y[:5], "5 entries but there are 6 samples"),
        (np.where(np.eye(6, 3) > 0, np.nan, GOOD_F), GOOD_Y, "NaN or infinite"),
        (GOOD_F, np.zeros(6, dtype=int), "single class"),
        (GOOD_F, GOOD_Y.astype(float), "integer class indices"),
        (GOOD_F, GOOD_Y - 1, "must be >= 0"),
        (GOOD_F[:, 0], GOOD_Y, "2-D array"),
        (GOOD_F[:3], np.array([0, 1, 2]), "more samples than classes"),
    ],
)
def test_bad_feature_input_is_one_line(score, features, labels, message) -> None:
    if score is linear_probe_accuracy and message == "more samples than classes":
        message = "needs >= 2 per class"
    with pytest.raises(InputError, match=message) as info:
        score(features, labels)
    assert "\n" not in str(info.value)


def test_bad_probabilities_and_weights() -> None:
    with pytest.raises(InputError, match="sum to 1"):
        leep(np.ones((6, 3)), GOOD_Y)
    with pytest.raises(InputError, match="negative"):
        leep(np.array([[1.5, -0.5]] * 6), GOOD_Y)
    with pytest.raises(InputError, match="single class"):
        leep(np.eye(3)[GOOD_Y], np.ones(6, dtype=int))
    with pytest.raises(InputError, match="source_labels has 5 entries"):
        nce(GOOD_Y[:5], GOOD_Y)
    with pytest.raises(InputError, match="one weight per point"):
        domain_similarity(GOOD_F, GOOD_F, source_weights=[1, 2])
    with pytest.raises(InputError, match="differ in dimension"):
        earth_movers_distance(GOOD_F, GOOD_F[:, :2])
    with pytest.raises(InputError, match="gamma"):
        domain_similarity(GOOD_F, GOOD_F, gamma=0)
    with pytest.raises(InputError, match="folds"):
        linear_probe_accuracy(GOOD_F, GOOD_Y, folds=1)


def test_ridge_probe_matches_a_fold_by_fold_computation() -> None:
    from sklearn.model_selection import StratifiedKFold

    from trainer.scores import ridge_probe_accuracy

    for d in (3, 40):  # fewer features than images, and more (the dual form)
        f, labels = blobs(12, d, classes=3, spread=0.8, seed=4)
        correct = 0
        for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(f, labels):
            mean, sd = f[train].mean(axis=0), f[train].std(axis=0)
            x = np.hstack([(f[train] - mean) / sd, np.ones((len(train), 1))])  # an explicit bias
            y = np.eye(3)[labels[train]]
            penalty = np.eye(d + 1)
            penalty[d, d] = 0.0  # ... that is not penalised
            w = np.linalg.solve(x.T @ x + penalty, x.T @ y)
            for row, label in zip((f[test] - mean) / sd, labels[test]):
                correct += int(np.argmax(np.append(row, 1.0) @ w) == label)
        assert ridge_probe_accuracy(f, labels) == pytest.approx(100 * correct / len(labels)), d


def test_ridge_probe_ranks_features() -> None:
    from trainer.scores import ridge_probe_accuracy

    f, labels = blobs(40, 32, classes=5, spread=2.0)
    assert ridge_probe_accuracy(f, labels) == 100.0
    assert ridge_probe_accuracy(f, np.random.default_rng(0).permutation(labels)) < 40
    with pytest.raises(InputError, match="alpha must be > 0"):
        ridge_probe_accuracy(f, labels, alpha=0)
