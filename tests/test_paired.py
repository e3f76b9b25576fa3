import math

import numpy as np
import pytest

from ad_nnunet.evaluation.paired import paired_bootstrap, per_case_foreground_mean


def test_per_case_mean_skips_undefined_classes():
    results = {"cases": {"a": {"metrics": {"1": {"Dice": 0.8}, "2": {"Dice": float("nan")}}},
                         "b": {"metrics": {"1": {"Dice": 0.5}, "2": {"Dice": 0.7}}},
                         "c": {"metrics": {"1": {"Dice": None}}}}}
    means = per_case_foreground_mean(results)
    assert means["a"] == 0.8 and means["b"] == pytest.approx(0.6) and math.isnan(means["c"])


def test_paired_bootstrap_counts_and_interval():
    a = {f"c{i}": 0.8 + 0.01 * i for i in range(10)}
    b = {f"c{i}": 0.8 for i in range(10)}
    b["c0"] = 0.9  # one loss
    r = paired_bootstrap(a, {**b, "extra": 0.1})  # a case only one method scored is left out
    d = np.array([a[c] - b[c] for c in sorted(a)])
    assert r["n"] == 10 and r["mean_diff"] == pytest.approx(d.mean())
    assert (r["wins"], r["losses"], r["ties"]) == (9, 1, 0)
    assert r["ci95"][0] <= r["mean_diff"] <= r["ci95"][1]
    assert r == paired_bootstrap(a, b, seed=0)  # seeded
    # a shift of every case by +0.02 has an interval of exactly +0.02; identical scores give [0, 0]
    shifted = paired_bootstrap({c: v + 0.02 for c, v in b.items()}, b)
    assert shifted["ci95"] == pytest.approx([0.02, 0.02]) and shifted["wins"] == 10
    assert paired_bootstrap(b, b)["ci95"] == [0.0, 0.0]
    assert paired_bootstrap({"x": 1.0}, {"y": 1.0}) is None
