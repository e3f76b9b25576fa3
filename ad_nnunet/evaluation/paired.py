r"""Paired comparison of two methods on the same test cases: per-case differences and a bootstrap interval.

With per-case scores :math:`a_i, b_i` (:math:`i = 1..n`, the foreground-mean Dice of each case, cases where either
is undefined left out) and :math:`d_i = a_i - b_i`:

.. math::
    \bar d = \frac{1}{n}\sum_i d_i, \qquad
    \mathrm{CI}_{95} = \big[q_{0.025}(\bar d^{*}),\ q_{0.975}(\bar d^{*})\big],

where :math:`\bar d^{*}` are the means of ``n_boot`` resamples of the :math:`d_i` drawn with replacement
(percentile bootstrap, seeded), and "wins" counts the cases with :math:`d_i > 0`. A difference is called
larger than the noise only when the whole interval lies above 0.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np


def per_case_foreground_mean(results: dict, metric: str = "Dice") -> Dict[str, float]:
    """``{case: mean of metric over its scored classes}`` from ``evaluate_folders`` results (NaN classes left out,
    as in the report's foreground mean; a case with no scored class is NaN)."""
    out = {}
    for case, entry in results["cases"].items():
        values = [m[metric] for m in entry["metrics"].values()
                  if m[metric] is not None and not math.isnan(m[metric])]
        out[case] = float(np.mean(values)) if values else math.nan
    return out


def paired_bootstrap(a: Dict[str, float], b: Dict[str, float], n_boot: int = 10000, seed: int = 0) -> Optional[dict]:
    """Paired statistics of ``a - b`` over the cases both score (module docstring); None if there is no such case.

    Returns ``{"n", "mean_diff", "ci95": [lo, hi], "wins", "losses", "ties", "per_case": {case: d}}``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    cases = sorted(c for c in a.keys() & b.keys() if not (math.isnan(a[c]) or math.isnan(b[c])))
    if not cases:
        return None
    d = np.array([a[c] - b[c] for c in cases])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"n": len(cases), "mean_diff": float(d.mean()), "ci95": [float(lo), float(hi)],
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum()),
            "per_case": {c: float(x) for c, x in zip(cases, d)}}
