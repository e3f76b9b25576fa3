"""Score a prediction folder against references in mm (``adnnunet_evaluate``; see ``metrics`` for the math).

Example::

    adnnunet_evaluate -pred preds/ -ref nnUNet_raw/Dataset101_LA/labelsTs -dj nnUNet_raw/Dataset101_LA/dataset.json

writes ``preds/ad_evaluation.{json,csv,md}`` and prints the markdown table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ad_nnunet.errors import ADInputError
from ad_nnunet.evaluation.metrics import evaluate_folders, write_reports


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ADInputError(f"{what} '{path}' does not exist; check the path.") from None
    except json.JSONDecodeError as e:
        raise ADInputError(f"{what} '{path}' is not valid JSON ({e}); fix or regenerate the file.") from None


def foreground_labels(dataset_json: dict, source: str = "dataset.json") -> list[int]:
    """The integer foreground labels of an nnU-Net dataset.json: every label value except 0 and the 'ignore' label."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict):
        raise ADInputError(f"{source} has no 'labels' mapping; pass the labels explicitly with -l 1 2 3.")
    out = []
    for name, value in labels.items():
        if name == "ignore" or value == 0:
            continue
        if not isinstance(value, int):
            raise ADInputError(f"{source} label '{name}' is a region ({value}); region-based evaluation is not "
                               f"supported, pass the integer labels to score with -l.")
        out.append(value)
    return sorted(out)


def domains_from_json(obj: dict, source: str) -> dict[str, str]:
    """A case -> domain mapping from a JSON object: its ``"ad_domains"`` or ``"domains"`` entry, or the object itself
    when all its values are strings (a plain mapping)."""
    for key in ("ad_domains", "domains"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, str) for v in obj.values()):
        raise ADInputError(f"{source} holds no case -> domain mapping; give a JSON object {{\"case_id\": "
                           f"\"domain\", ...}} or one with an 'ad_domains' / 'domains' entry of that form.")
    return dict(obj)


def evaluate_predictions(pred_folder: str, ref_folder: str, *, dataset_json: Optional[str] = None,
                         labels: Optional[list[int]] = None, out_prefix: Optional[str] = None,
                         domains_file: Optional[str] = None, settings_file: Optional[str] = None,
                         file_ending: Optional[str] = None, num_processes: int = 1,
                         progress: bool = True) -> tuple[dict, dict]:
    """Score ``pred_folder`` against ``ref_folder`` (``evaluate_folders``) and write the reports; returns
    ``(results, {format: path})``.

    The foreground labels and the file ending come from ``dataset_json`` (else ``labels``; the file ending defaults to
    ``.nii.gz``), the case -> domain mapping from ``domains_file`` or ``settings_file`` (:func:`domains_from_json`);
    the reports go to ``<out_prefix>.{json,csv,md}`` (default ``<pred_folder>/ad_evaluation``).
    """
    if dataset_json is not None:
        dj = _load_json(dataset_json, "dataset.json")
        labels = foreground_labels(dj, dataset_json)
        file_ending = file_ending or dj.get("file_ending")
    domains = None
    if domains_file is not None:
        domains = domains_from_json(_load_json(domains_file, "Domain file"), domains_file)
    elif settings_file is not None:
        domains = domains_from_json(_load_json(settings_file, "Settings file"), settings_file)
    if num_processes < 1:
        raise ADInputError(f"-np {num_processes} is not a number of processes; pass -np 1 or more.")
    results = evaluate_folders(pred_folder, ref_folder, labels, file_ending=file_ending or ".nii.gz",
                               domains=domains, num_processes=num_processes, progress=progress)
    prefix = Path(out_prefix) if out_prefix else Path(pred_folder) / "ad_evaluation"
    return results, write_reports(results, prefix)
