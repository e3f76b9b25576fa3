"""``adnnunet_evaluate``: score a prediction folder against references in mm (see ``metrics`` for the math).

Example::

    adnnunet_evaluate -pred preds/ -ref nnUNet_raw/Dataset101_LA/labelsTs -dj nnUNet_raw/Dataset101_LA/dataset.json

writes ``preds/ad_evaluation.{json,csv,md}`` and prints the markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from ad_nnunet.errors import ADInputError
from ad_nnunet.evaluation.metrics import evaluate_folders, markdown_report, write_reports


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


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="adnnunet_evaluate",
        description="Dice, Jaccard, HD95 and ASD (distances in mm) of every prediction in -pred against the "
                    "same-named reference in -ref. Both-empty classes are not applicable (NaN, counted as n_empty); "
                    "a missed or hallucinated class gets Dice 0 and the image diagonal in mm as distance.")
    parser.add_argument("-pred", required=True, help="folder with predicted label files")
    parser.add_argument("-ref", required=True, help="folder with reference label files of the same names")
    lab = parser.add_mutually_exclusive_group(required=True)
    lab.add_argument("-dj", help="dataset.json: foreground labels and file_ending come from it")
    lab.add_argument("-l", nargs="+", type=int, help="foreground labels to score, e.g. -l 1 2 3")
    parser.add_argument("-o", help="output prefix (default <pred>/ad_evaluation): writes .json, .csv and .md")
    dom = parser.add_mutually_exclusive_group()
    dom.add_argument("--domains", help="JSON with a case -> domain mapping (plain, or under 'ad_domains'/'domains')")
    dom.add_argument("--settings", help="ad_settings.json whose 'ad_domains'/'domains' entry maps case -> domain")
    parser.add_argument("--file_ending", help="file ending of the label files (default: dataset.json's, "
                                              "else .nii.gz)")
    parser.add_argument("-np", type=int, default=1, help="number of worker processes (default 1)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    try:
        file_ending = args.file_ending
        if args.dj is not None:
            dataset_json = _load_json(args.dj, "dataset.json")
            labels = foreground_labels(dataset_json, args.dj)
            file_ending = file_ending or dataset_json.get("file_ending")
        else:
            labels = args.l
        domains = None
        if args.domains is not None:
            domains = domains_from_json(_load_json(args.domains, "Domain file"), args.domains)
        elif args.settings is not None:
            domains = domains_from_json(_load_json(args.settings, "Settings file"), args.settings)
        if args.np < 1:
            raise ADInputError(f"-np {args.np} is not a number of processes; pass -np 1 or more.")
        results = evaluate_folders(args.pred, args.ref, labels, file_ending=file_ending or ".nii.gz",
                                   domains=domains, num_processes=args.np, progress=not args.no_progress)
        prefix = Path(args.o) if args.o else Path(args.pred) / "ad_evaluation"
        paths = write_reports(results, prefix)
    except ADInputError as e:
        print(f"adnnunet_evaluate: error: {e}", file=sys.stderr)
        return 2
    print(markdown_report(results))
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
