"""Scores of the source head's predictions on the target: LEEP (Nguyen et al., ICML 2020) and NCE
(Tran et al., ICCV 2019)."""

from __future__ import annotations

import numpy as np

from ..config import InputError
from .inputs import as_features, as_labels, distinct_classes


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
    p = as_features(source_probs, "source_probs")
    n = p.shape[0]
    y_idx = distinct_classes(as_labels(labels, n))[1]
    if (p < 0).any():
        raise InputError(
            "source_probs has negative entries: pass the source head's softmax, not logits"
        )
    sums = p.sum(axis=1)
    if np.abs(sums - 1).max() > 1e-3:
        i = int(np.abs(sums - 1).argmax())
        raise InputError(
            f"source_probs rows must sum to 1 (a softmax), row {i} sums to {sums[i]:.4g}"
        )
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
    y = as_labels(target_labels, None, "target_labels")
    z = as_labels(source_labels, len(y), "source_labels")
    y_idx = distinct_classes(y, "target_labels")[1]
    z_idx = np.unique(z, return_inverse=True)[1]
    joint = np.zeros((int(y_idx.max()) + 1, int(z_idx.max()) + 1))
    np.add.at(joint, (y_idx, z_idx), 1.0)
    joint /= len(y)
    pz = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.broadcast_to(pz, joint.shape)[nz])).sum())
