"""Weight diagnostics reported with every estimate: how much the logs say about the target policy.

With weights w_i over the n rows:

* ess = (Σ w)² / Σ w²  — the number of equally weighted rows carrying the same information (n when all
  weights are equal, 1 when one row carries all the weight);
* max_weight = max w, max_weight_share = max w / Σ w (one row dominating the estimate);
* clipped_share = share of rows whose weight the estimator clipped (clipped IPS) or switched off (switch DR);
* support_violations = rows with target propensity > 0 but logging propensity 0 or missing. They are an
  error unless explicitly allowed; when allowed they get weight 0 and bias the estimate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from evaluators.estimators import Estimator, FeedbackData


@dataclass(frozen=True)
class Diagnostics:
    n: int
    ess: float
    max_weight: float
    max_weight_share: float
    clipped_share: float | None
    support_violations: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def weight_summary(weights: np.ndarray) -> tuple[float, float, float]:
    """(ess, max_weight, max_weight_share) of a weight vector; NaN where Σ w = 0."""
    total = float(np.sum(weights))
    squares = float(np.dot(weights, weights))
    largest = float(np.max(weights)) if weights.size else math.nan
    ess = total * total / squares if squares > 0 else math.nan
    share = largest / total if total > 0 else math.nan
    return ess, largest, share


def diagnose(estimator: Estimator, data: FeedbackData) -> Diagnostics:
    """Diagnostics of the weights ``estimator`` applies on ``data``."""
    weights = estimator.diagnostic_weights(data)
    # Estimators sharing a weight vector (ips, snips, dr, ...) share one summary pass.
    summary = data.cached(f"summary:{id(weights)}", lambda: np.array(weight_summary(weights)))
    ess, largest, share = (float(v) for v in summary)
    return Diagnostics(
        n=data.n,
        ess=ess,
        max_weight=largest,
        max_weight_share=share,
        clipped_share=estimator.clipped_share(data),
        support_violations=data.support_violations(estimator.logging_column),
    )
