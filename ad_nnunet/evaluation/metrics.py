"""Segmentation metrics in millimetres: Dice, Jaccard, HD95 and ASD per case and class, plus folder summaries.

For one class c, with P = {pred == c} and R = {ref == c} as voxel sets:

.. math::

    \\mathrm{Dice} = \\frac{2|P \\cap R|}{|P| + |R|}, \\qquad
    \\mathrm{Jaccard} = \\frac{|P \\cap R|}{|P \\cup R|}

on a 0-1 scale. With :math:`\\partial P, \\partial R` the surface voxels (a voxel of the mask with a 6-connected
neighbour outside it, MedPy's ``connectivity=1``) and :math:`d(x, S) = \\min_{y \\in S} \\lVert (x - y) \\odot s \\rVert_2`
the Euclidean distance in mm for voxel spacing :math:`s`:

.. math::

    \\mathrm{HD95} = \\mathrm{percentile}_{95}\\big(\\{d(x, \\partial R)\\}_{x \\in \\partial P}
                     \\cup \\{d(y, \\partial P)\\}_{y \\in \\partial R}\\big), \\qquad
    \\mathrm{ASD} = \\operatorname{mean}_{x \\in \\partial P}\\, d(x, \\partial R)

both computed by MedPy (``medpy.metric.binary.hd95`` / ``asd`` with ``voxelspacing``). ASD is MedPy's directed
average surface distance from the prediction to the reference, the quantity the A&D / UA-MT evaluation reports
(not the symmetric ASSD).

Differences from the official A&D evaluation, which measures in voxels on resized volumes: distances here are in mm
on the reference image's own grid, and Dice is on a 0-1 scale.

Empty-mask rule (per case and class):

- both P and R empty: the class is not present and nothing was predicted; all four metrics are NaN ("not
  applicable"). Such entries are excluded from every mean/std and counted in ``n_empty``. (The official code scores
  this as Dice 1 on an otherwise 0-100 scale.)
- exactly one of P, R empty: Dice = Jaccard = 0 and HD95 = ASD = the diagonal of the image extent,
  :math:`\\sqrt{\\sum_i (n_i s_i)^2}` mm for shape n and spacing s: no distance inside the image can be larger, so
  a missed or hallucinated structure is penalised at least as much as any wrong segmentation. (The official code
  uses a fixed 128 voxels.)

Summaries (``evaluate_folders``): for each class and metric, mean and std (numpy's, ddof=0) over the cases where
the metric is defined. The foreground summary first averages each metric over the classes of one case (over the
applicable classes only), then takes mean and std of these per-case averages over cases; with no empty class it
equals the mean of the per-class means.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from multiprocessing import get_context
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from medpy.metric.binary import asd as medpy_asd
from medpy.metric.binary import hd95 as medpy_hd95
from tqdm import tqdm

from ad_nnunet.errors import ADInputError

METRICS = ("Dice", "Jaccard", "HD95", "ASD")
# Geometry tolerances: NIfTI stores origin/spacing as float32, so exact equality is too strict.
_GEOMETRY_ATOL = 1e-3
_GEOMETRY_RTOL = 1e-5


def _image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)) ** 2)))


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                 labels: Sequence[int]) -> dict[int, dict[str, float]]:
    """Dice, Jaccard, HD95 (mm) and ASD (mm) of ``pred`` against ``ref`` for each label (see the module docstring).

    Args:
        pred, ref: integer label maps of the same shape.
        spacing: voxel size in mm per array axis, in the arrays' axis order (for a SimpleITK array that is
            ``image.GetSpacing()[::-1]``).
        labels: the foreground labels to score.

    Returns:
        ``{label: {"Dice", "Jaccard", "HD95", "ASD"}}``; NaN for all four when both masks are empty.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ADInputError(f"Prediction shape {pred.shape} differs from reference shape {ref.shape}; "
                           f"resample the prediction onto the reference grid before scoring.")
    if len(spacing) != ref.ndim:
        raise ADInputError(f"Spacing {tuple(spacing)} has {len(spacing)} entries for a {ref.ndim}-D image; "
                           f"give one spacing per array axis, in the array's axis order.")
    spacing = tuple(float(s) for s in spacing)
    diagonal = _image_diagonal_mm(ref.shape, spacing)
    out: dict[int, dict[str, float]] = {}
    for label in labels:
        p = pred == label
        r = ref == label
        n_p, n_r = int(p.sum()), int(r.sum())
        if n_p == 0 and n_r == 0:
            out[int(label)] = {m: math.nan for m in METRICS}
        elif n_p == 0 or n_r == 0:
            out[int(label)] = {"Dice": 0.0, "Jaccard": 0.0, "HD95": diagonal, "ASD": diagonal}
        else:
            inter = int(np.logical_and(p, r).sum())
            out[int(label)] = {
                "Dice": 2.0 * inter / (n_p + n_r),
                "Jaccard": inter / (n_p + n_r - inter),
                "HD95": float(medpy_hd95(p, r, voxelspacing=spacing)),
                "ASD": float(medpy_asd(p, r, voxelspacing=spacing)),
            }
    return out


def _check_geometry(case: str, pred_img: sitk.Image, ref_img: sitk.Image) -> None:
    problems = []
    if pred_img.GetSize() != ref_img.GetSize():
        problems.append(f"size {pred_img.GetSize()} vs {ref_img.GetSize()}")
    for name in ("Spacing", "Origin", "Direction"):
        a = np.asarray(getattr(pred_img, f"Get{name}")())
        b = np.asarray(getattr(ref_img, f"Get{name}")())
        if a.shape != b.shape or not np.allclose(a, b, rtol=_GEOMETRY_RTOL, atol=_GEOMETRY_ATOL):
            problems.append(f"{name.lower()} {tuple(np.round(a, 5))} vs {tuple(np.round(b, 5))}")
    if problems:
        raise ADInputError(
            f"Case '{case}': the prediction's geometry does not match the reference ({'; '.join(problems)}, "
            f"prediction vs reference). Predict in the reference's geometry (nnUNetv2_predict writes predictions "
            f"on the input image's grid) or resample the prediction onto the reference with nearest-neighbour "
            f"interpolation (SimpleITK.Resample(pred, ref, sitk.Transform(), sitk.sitkNearestNeighbor)).")


def _evaluate_case(args: tuple[str, str, str, tuple[int, ...]]) -> tuple[str, dict[int, dict[str, float]]]:
    case, pred_file, ref_file, labels = args
    pred_img = sitk.ReadImage(pred_file)
    ref_img = sitk.ReadImage(ref_file)
    _check_geometry(case, pred_img, ref_img)
    # SimpleITK arrays are in (z, y, x) order, the reverse of GetSpacing().
    spacing = ref_img.GetSpacing()[::-1]
    return case, case_metrics(sitk.GetArrayViewFromImage(pred_img), sitk.GetArrayViewFromImage(ref_img),
                              spacing, labels)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def _summarise(case_results: dict[str, dict[str, dict[str, float]]], labels: Sequence[str]) -> dict:
    per_class = {}
    for lab in labels:
        entry = {m: _mean_std([case_results[c][lab][m] for c in case_results]) for m in METRICS}
        entry["n_empty"] = int(sum(math.isnan(case_results[c][lab]["Dice"]) for c in case_results))
        per_class[lab] = entry
    foreground = {}
    for m in METRICS:
        per_case = []
        for c in case_results:
            vals = [case_results[c][lab][m] for lab in labels if not math.isnan(case_results[c][lab][m])]
            per_case.append(float(np.mean(vals)) if vals else math.nan)
        foreground[m] = _mean_std(per_case)
    return {"n_cases": len(case_results), "per_class": per_class, "foreground_mean": foreground}


def evaluate_folders(pred_folder: str | os.PathLike, ref_folder: str | os.PathLike, labels: Sequence[int], *,
                     file_ending: str = ".nii.gz", domains: Optional[dict[str, str]] = None,
                     num_processes: int = 1, progress: bool = True) -> dict:
    """Score every prediction in ``pred_folder`` against the same-named reference in ``ref_folder``.

    Only cases present in ``pred_folder`` are evaluated. Geometry (size, spacing, origin, direction) comes from the
    reference, and the prediction must match it.

    Args:
        labels: foreground labels to score.
        domains: optional ``{case_id: domain}``; every evaluated case must be in it. Adds per-domain summaries.
        num_processes: worker processes (spawned) for reading and scoring; 1 runs in this process.

    Returns:
        A JSON-ready dict (label keys are strings; not-applicable metrics are NaN)::

            {"labels": [...], "file_ending": ..., "units": {...}, "empty_rule": ...,
             "cases": {case: {"domain": str | None, "metrics": {label: {metric: value}}}},
             "summary": {"n_cases", "per_class": {label: {metric: {"mean", "std", "n"}, "n_empty"}},
                         "foreground_mean": {metric: {"mean", "std", "n"}}},
             "per_domain": {domain: <same as summary>}   # only with ``domains``}
    """
    pred_folder, ref_folder = Path(pred_folder), Path(ref_folder)
    if not pred_folder.is_dir():
        raise ADInputError(f"Prediction folder '{pred_folder}' does not exist; pass the folder nnUNetv2_predict "
                           f"wrote to.")
    if not ref_folder.is_dir():
        raise ADInputError(f"Reference folder '{ref_folder}' does not exist; pass the folder with the ground-truth "
                           f"label files (e.g. labelsTs or nnUNet_preprocessed/<Dataset>/gt_segmentations).")
    labels = tuple(int(lab) for lab in labels)
    if not labels:
        raise ADInputError("No labels to evaluate; pass the foreground labels (e.g. -l 1 2 3) or a dataset.json.")
    cases = sorted(f.name[: -len(file_ending)] for f in pred_folder.iterdir()
                   if f.is_file() and f.name.endswith(file_ending))
    if not cases:
        raise ADInputError(f"No '*{file_ending}' files in prediction folder '{pred_folder}'; check the folder and "
                           f"the file ending (file_ending / dataset.json 'file_ending').")
    missing_ref = [c for c in cases if not (ref_folder / (c + file_ending)).is_file()]
    if missing_ref:
        raise ADInputError(f"Prediction(s) without a reference in '{ref_folder}': {missing_ref}. Add the reference "
                           f"label files or remove these predictions from '{pred_folder}'.")
    if domains is not None:
        missing_dom = [c for c in cases if c not in domains]
        if missing_dom:
            raise ADInputError(f"Case(s) {missing_dom} have no domain in the domain mapping; add them to the "
                               f"mapping (case id -> domain) or evaluate without domains.")

    jobs = [(c, str(pred_folder / (c + file_ending)), str(ref_folder / (c + file_ending)), labels) for c in cases]
    raw: dict[str, dict[int, dict[str, float]]] = {}
    with tqdm(total=len(jobs), desc="Evaluating", disable=not progress) as bar:
        if num_processes > 1:
            # spawn: the caller may hold threads (torch), which fork does not copy safely.
            with get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
                for case, res in pool.imap_unordered(_evaluate_case, jobs):
                    raw[case] = res
                    bar.update()
        else:
            for job in jobs:
                case, res = _evaluate_case(job)
                raw[case] = res
                bar.update()

    label_keys = [str(lab) for lab in labels]
    case_results = {c: {str(lab): raw[c][lab] for lab in labels} for c in cases}
    results = {
        "labels": list(labels),
        "file_ending": file_ending,
        "units": {"Dice": "fraction", "Jaccard": "fraction", "HD95": "mm", "ASD": "mm"},
        "empty_rule": "both empty: NaN (excluded, counted in n_empty); one empty: Dice=Jaccard=0, "
                      "HD95=ASD=image diagonal in mm",
        "cases": {c: {"domain": None if domains is None else str(domains[c]), "metrics": case_results[c]}
                  for c in cases},
        "summary": _summarise(case_results, label_keys),
    }
    if domains is not None:
        results["per_domain"] = {
            d: _summarise({c: case_results[c] for c in cases if str(domains[c]) == d}, label_keys)
            for d in sorted({str(domains[c]) for c in cases})
        }
    return results


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def _fmt(stat: dict[str, float], digits: int) -> str:
    if stat["n"] == 0:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _markdown_table(summary: dict) -> list[str]:
    lines = ["| class | Dice | Jaccard | HD95 (mm) | ASD (mm) | n | n_empty |", "|---|---|---|---|---|---|---|"]
    rows = [(lab, s, s["Dice"]["n"], s["n_empty"]) for lab, s in summary["per_class"].items()]
    rows.append(("foreground mean", summary["foreground_mean"], summary["foreground_mean"]["Dice"]["n"], ""))
    for name, s, n, n_empty in rows:
        lines.append(f"| {name} | {_fmt(s['Dice'], 4)} | {_fmt(s['Jaccard'], 4)} | {_fmt(s['HD95'], 2)} | "
                     f"{_fmt(s['ASD'], 2)} | {n} | {n_empty} |")
    return lines


def markdown_report(results: dict) -> str:
    """The markdown tables of ``write_reports`` (overall, then one per domain), as a string."""
    lines = [f"## Overall ({results['summary']['n_cases']} cases; mean ± std over cases; Dice/Jaccard 0-1, "
             f"distances in mm)", ""]
    lines += _markdown_table(results["summary"])
    for domain, summary in results.get("per_domain", {}).items():
        lines += ["", f"## Domain {domain} ({summary['n_cases']} cases)", ""]
        lines += _markdown_table(summary)
    lines += ["", f"Empty masks: {results['empty_rule']}."]
    return "\n".join(lines) + "\n"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_reports(results: dict, out_prefix: str | os.PathLike) -> dict[str, Path]:
    """Write ``<prefix>.json`` (the full results; NaN as null), ``<prefix>.csv`` (one row per case x class:
    case, domain, class, Dice, Jaccard, HD95_mm, ASD_mm; empty cells for NaN) and ``<prefix>.md``
    (:func:`markdown_report`). Each file is written to a temporary name and renamed, so none is ever half-written.

    Returns ``{"json": path, "csv": path, "md": path}``.
    """
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = {ext: prefix.with_name(prefix.name + "." + ext) for ext in ("json", "csv", "md")}

    _atomic_write_text(paths["json"], json.dumps(_nan_to_none(results), indent=2, allow_nan=False) + "\n")

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "domain", "class", "Dice", "Jaccard", "HD95_mm", "ASD_mm"])
    for case, entry in results["cases"].items():
        for lab, m in entry["metrics"].items():
            writer.writerow([case, entry["domain"] or "", lab]
                            + ["" if math.isnan(m[k]) else repr(m[k]) for k in METRICS])
    _atomic_write_text(paths["csv"], buf.getvalue())

    _atomic_write_text(paths["md"], markdown_report(results))
    return paths
