"""Tests for ad_nnunet.evaluation (metrics in mm, empty-mask rule, folder evaluation, reports, CLI)."""
import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from ad_nnunet.entrypoints.results import evaluate_entry
from ad_nnunet.errors import ADInputError
from ad_nnunet.evaluation.metrics import case_metrics, evaluate_folders, write_reports

ANISO = (2.0, 0.5, 0.5)  # mm per array axis: a coarse axis 4x the in-plane spacing


def _radius_mm(shape, spacing):
    """Distance in mm of every voxel centre from the centre of the image."""
    axes = [(np.arange(n) + 0.5) * s - n * s / 2 for n, s in zip(shape, spacing)]
    return np.sqrt(sum(g ** 2 for g in np.meshgrid(*axes, indexing="ij")))


@pytest.mark.parametrize("r_pred,r_ref", [(12.0, 8.0), (8.0, 12.0), (15.0, 10.0)])
def test_concentric_spheres_anisotropic_distances_in_mm(r_pred, r_ref):
    # 40 mm field of view on every axis: shape (20, 80, 80) voxels; the balls are spheres in mm.
    shape = tuple(int(40 / s) for s in ANISO)
    rr = _radius_mm(shape, ANISO)
    pred, ref = (rr <= r_pred).astype(np.uint8), (rr <= r_ref).astype(np.uint8)
    m = case_metrics(pred, ref, ANISO, [1])[1]
    expected = abs(r_pred - r_ref)
    # Tolerance: a surface voxel of a digitised ball of radius r is inside it with a face neighbour outside, so its
    # centre lies at a radius in (r - h, r], h = the coarsest voxel edge (2 mm). Every surface-to-surface distance
    # is therefore > |r1 - r2| - h. Both balls carry the same one-sided inward error, so it largely cancels in the
    # difference; we demand half a coarse voxel edge (1 mm; observed errors <= 0.45 mm). The bound is
    # discriminative: for r = 12 vs 8 mm, HD95 measured in voxels is 7.6 and with the spacing in reversed axis
    # order 10.2, both far outside 4 +- 1.
    tol = max(ANISO) / 2
    assert m["HD95"] == pytest.approx(expected, abs=tol)
    assert m["ASD"] == pytest.approx(expected, abs=tol)
    assert m["HD95"] > expected - max(ANISO) and m["ASD"] > expected - max(ANISO)
    # Dice of nested balls is 2 V_small / (V_small + V_big) = 2 r^3 / (r^3 + R^3), up to discretisation.
    small, big = min(r_pred, r_ref), max(r_pred, r_ref)
    assert m["Dice"] == pytest.approx(2 * small ** 3 / (small ** 3 + big ** 3), abs=0.02)
    assert m["Jaccard"] == pytest.approx(m["Dice"] / (2 - m["Dice"]), abs=1e-9)


def test_identical_masks():
    rr = _radius_mm((20, 80, 80), ANISO)
    mask = (rr <= 10).astype(np.uint8)
    m = case_metrics(mask, mask, ANISO, [1])[1]
    assert m == {"Dice": 1.0, "Jaccard": 1.0, "HD95": 0.0, "ASD": 0.0}


def test_shifted_cube_dice_and_jaccard():
    # An a^3 cube shifted by k voxels along one axis overlaps in a^2 (a - k) voxels:
    # Dice = (a - k) / a, Jaccard = (a - k) / (a + k), for any spacing.
    a, k = 10, 3
    ref = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(ref)
    ref[5:5 + a, 5:5 + a, 5:5 + a] = 1
    pred[5 + k:5 + k + a, 5:5 + a, 5:5 + a] = 1
    m = case_metrics(pred, ref, ANISO, [1])[1]
    assert m["Dice"] == pytest.approx((a - k) / a)
    assert m["Jaccard"] == pytest.approx((a - k) / (a + k))
    # The shift is along the 2 mm axis: no surface voxel is farther than k * 2 mm from the other surface.
    assert 0 < m["HD95"] <= k * ANISO[0] + 1e-9


def test_empty_rules_and_multiple_labels():
    shape = (4, 6, 8)
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, ANISO)))
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[1:3, 1:4, 1:4] = 1   # label 1: only in the reference (missed)
    pred[1:3, 2:5, 4:7] = 2  # label 2: only in the prediction (hallucinated); label 3: in neither
    m = case_metrics(pred, ref, ANISO, [1, 2, 3])
    for lab in (1, 2):
        assert m[lab] == {"Dice": 0.0, "Jaccard": 0.0, "HD95": pytest.approx(diagonal),
                          "ASD": pytest.approx(diagonal)}
    assert all(math.isnan(v) for v in m[3].values())


def test_case_metrics_rejects_bad_input():
    with pytest.raises(ADInputError, match="shape"):
        case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), ANISO, [1])
    with pytest.raises(ADInputError, match="spacing"):
        case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1.0, 1.0), [1])


# ---------------------------------------------------------------- folders ----------------------------------------

SITK_SPACING = ANISO[::-1]  # SimpleITK's (x, y, z) order


def _write(arr, path, spacing=SITK_SPACING, origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def _box(lo, hi, shape=(6, 12, 12), label=1, into=None):
    arr = np.zeros(shape, np.uint8) if into is None else into
    arr[tuple(slice(a, b) for a, b in zip(lo, hi))] = label
    return arr


@pytest.fixture
def folders(tmp_path):
    """Three cases: perfect, a half-overlap with label 2 missed, and one with both labels absent."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    a = _box((3, 6, 6), (5, 10, 10), label=2, into=_box((1, 2, 2), (3, 6, 6)))
    _write(a, ref / "c1.nii.gz"), _write(a, pred / "c1.nii.gz")
    _write(a, ref / "c2.nii.gz")
    _write(_box((1, 2, 4), (3, 6, 8)), pred / "c2.nii.gz")  # label 1 shifted by 2 voxels; label 2 missed
    _write(np.zeros((6, 12, 12)), ref / "c3.nii.gz"), _write(np.zeros((6, 12, 12)), pred / "c3.nii.gz")
    _write(np.zeros((6, 12, 12)), ref / "c4.nii.gz")  # reference only: not evaluated
    return pred, ref


def test_evaluate_folders_summaries_and_domains(folders):
    pred, ref = folders
    res = evaluate_folders(pred, ref, [1, 2], domains={"c1": "A", "c2": "B", "c3": "A"}, progress=False)
    assert sorted(res["cases"]) == ["c1", "c2", "c3"]
    c2 = res["cases"]["c2"]["metrics"]
    assert c2["1"]["Dice"] == pytest.approx(0.5)
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip((6, 12, 12), ANISO)))
    assert c2["2"]["Dice"] == 0 and c2["2"]["HD95"] == pytest.approx(diagonal)
    s = res["summary"]
    assert s["n_cases"] == 3
    assert s["per_class"]["1"]["n_empty"] == 1 and s["per_class"]["1"]["Dice"]["n"] == 2
    assert s["per_class"]["1"]["Dice"]["mean"] == pytest.approx(0.75)
    assert s["per_class"]["1"]["Dice"]["std"] == pytest.approx(0.25)
    assert s["per_class"]["2"]["Dice"]["mean"] == pytest.approx(0.5)
    # Foreground: per-case class averages (c1: 1, c2: 0.25; c3 not applicable), then mean over cases.
    assert s["foreground_mean"]["Dice"]["mean"] == pytest.approx(0.625)
    assert s["foreground_mean"]["Dice"]["n"] == 2
    assert res["per_domain"]["A"]["per_class"]["1"]["Dice"]["mean"] == pytest.approx(1.0)
    assert res["per_domain"]["A"]["per_class"]["1"]["n_empty"] == 1
    assert res["per_domain"]["B"]["foreground_mean"]["Dice"]["mean"] == pytest.approx(0.25)
    # Two spawned workers give the same numbers.
    res2 = evaluate_folders(pred, ref, [1, 2], num_processes=2, progress=False)
    assert json.dumps(res2["summary"]) == json.dumps(s)


def test_evaluate_folders_input_errors(folders, tmp_path):
    pred, ref = folders
    with pytest.raises(ADInputError, match="c3"):
        evaluate_folders(pred, ref, [1], domains={"c1": "A", "c2": "B"}, progress=False)
    _write(np.zeros((6, 12, 12)), pred / "orphan.nii.gz")
    with pytest.raises(ADInputError, match="orphan"):
        evaluate_folders(pred, ref, [1], progress=False)
    (pred / "orphan.nii.gz").unlink()
    _write(np.zeros((6, 12, 12)), pred / "c1.nii.gz", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ADInputError, match=r"Case 'c1'.*spacing.*[Rr]esample"):
        evaluate_folders(pred, ref, [1], progress=False)
    _write(np.zeros((6, 12, 13)), pred / "c1.nii.gz")
    with pytest.raises(ADInputError, match=r"Case 'c1'.*size"):
        evaluate_folders(pred, ref, [1], num_processes=2, progress=False)
    _write(np.zeros((6, 12, 12)), pred / "c1.nii.gz", origin=(0.0, 0.0, 5.0))
    with pytest.raises(ADInputError, match=r"Case 'c1'.*origin"):
        evaluate_folders(pred, ref, [1], progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ADInputError, match="No"):
        evaluate_folders(empty, ref, [1], progress=False)


def test_write_reports_parseable(folders, tmp_path):
    pred, ref = folders
    res = evaluate_folders(pred, ref, [1, 2], domains={"c1": "A", "c2": "B", "c3": "A"}, progress=False)
    paths = write_reports(res, tmp_path / "out" / "report")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.csv", "report.json", "report.md"]
    loaded = json.loads(paths["json"].read_text())  # strict JSON: NaN written as null
    assert loaded["cases"]["c3"]["metrics"]["1"]["Dice"] is None
    assert loaded["summary"]["per_class"]["1"]["Dice"]["mean"] == pytest.approx(0.75)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 3 * 2
    row = next(r for r in rows if r["case"] == "c2" and r["class"] == "1")
    assert float(row["Dice"]) == pytest.approx(0.5) and row["domain"] == "B"
    assert next(r for r in rows if r["case"] == "c3")["HD95_mm"] == ""
    md = paths["md"].read_text()
    assert "| class | Dice | Jaccard | HD95 (mm) | ASD (mm)" in md
    assert "| 1 | 0.7500 ± 0.2500 |" in md and "## Domain A" in md and "## Domain B" in md


def test_cli(folders, tmp_path, capsys):
    pred, ref = folders
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz",
                              "channel_names": {"0": "MRI"}}))
    domains = tmp_path / "settings.json"
    domains.write_text(json.dumps({"ad_domains": {"c1": "A", "c2": "B", "c3": "A"}}))
    assert evaluate_entry(["-pred", str(pred), "-ref", str(ref), "-dj", str(dj), "--settings", str(domains),
                           "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "foreground mean" in out and "## Domain B" in out
    assert json.loads((pred / "ad_evaluation.json").read_text())["labels"] == [1, 2]
    assert evaluate_entry(["-pred", str(pred), "-ref", str(tmp_path / "nope"), "-l", "1", "--no_progress"]) == 2
    assert "nope" in capsys.readouterr().err
