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

from .domain import class_means, domain_similarity, earth_movers_distance
from .features import LOGME_EPS, LOGME_PLAIN_STEPS, LOGME_RTOL, hscore, logme
from .probes import linear_probe_accuracy, ridge_probe_accuracy
from .source_head import leep, nce

__all__ = [
    "LOGME_EPS",
    "LOGME_PLAIN_STEPS",
    "LOGME_RTOL",
    "class_means",
    "domain_similarity",
    "earth_movers_distance",
    "hscore",
    "leep",
    "linear_probe_accuracy",
    "logme",
    "nce",
    "ridge_probe_accuracy",
]
