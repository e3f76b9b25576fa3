"""Build the LA semi-supervised benchmark dataset from the shared Dataset101_LA and the A&D paper's split lists.

With the paper's lists L (labeled) and U (unlabeled) and a hold-out T of K cases drawn from U with
``numpy.random.RandomState(seed).choice(sorted(U), K, replace=False)``, the new raw dataset holds::

    imagesTr/labelsTr = L + (U \\ T)     (the labels of U \\ T are on disk for the fully supervised upper bound only;
                                         A&D and the labeled-only baseline never see them: ad_settings.json hides them)
    imagesTs/labelsTs = T               (never in nnU-Net's fingerprint, plans or training)
    splits/labeled.txt, splits/unlabeled.txt   (L and U \\ T, for adnnunet_benchmark --labeled/--unlabeled)
    benchmark_split.json                {labeled, unlabeled, test, seed, holdout, source lists}

Files are hard links to the source where the file system allows it, else copies. The dataset is built in a staging
folder next to the target and renamed into place, so an interrupted run leaves no half-written dataset.

Example::

    adnnunet_prepare_la --fraction 0.1            # -> $nnUNet_raw/Dataset111_LA10bench
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ad_nnunet.data.settings import read_case_list
from ad_nnunet.errors import ADInputError
from ad_nnunet.hashing import sha256_of
from ad_nnunet.publishing import (describe_file_modes, link_or_copy, new_dataset_folder, staged_dataset,
                                  write_json_atomic)

# The shared datasets beside a source checkout (an editable install); elsewhere pass --source.
SHARED_DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
DEFAULT_SOURCE = SHARED_DATASETS / "Dataset101_LA"
DEFAULT_NAMES = {"0.1": (111, "LA10bench"), "0.05": (112, "LA5bench")}
SPLIT_FILENAME = "benchmark_split.json"


def draw_holdout(unlabeled: Sequence[str], k: int, seed: int) -> List[str]:
    """The hold-out: ``RandomState(seed).choice(sorted(unlabeled), k, replace=False)``, sorted."""
    if not 0 < k < len(unlabeled):
        raise ADInputError(f"--holdout {k} must be between 1 and {len(unlabeled) - 1} (the unlabeled list has "
                           f"{len(unlabeled)} cases and at least one must stay unlabeled). Fix: pick another K.")
    rs = np.random.RandomState(seed)
    return sorted(str(c) for c in rs.choice(sorted(unlabeled), k, replace=False))


def prepare(source: Path, raw_root: Path, fraction: str = "0.1", holdout: int = 12, seed: int = 0,
            dataset_id: Optional[int] = None, dataset_name: Optional[str] = None, overwrite: bool = False,
            labeled_list: Optional[Path] = None, unlabeled_list: Optional[Path] = None) -> Path:
    """Write the benchmark raw dataset (see the module docstring); return its folder."""
    source = Path(source)
    if fraction not in DEFAULT_NAMES and (labeled_list is None or unlabeled_list is None):
        raise ADInputError(f"--fraction {fraction} has no split lists; the paper's are {sorted(DEFAULT_NAMES)}. "
                           f"Fix: use one of those or give --labeled_list and --unlabeled_list.")
    default_id, default_name = DEFAULT_NAMES.get(fraction, (111, "LAbench"))
    dataset_id = default_id if dataset_id is None else int(dataset_id)
    dataset_name = dataset_name or default_name
    for sub in ("imagesTr", "labelsTr"):
        if not (source / sub).is_dir():
            raise ADInputError(f"{source / sub} does not exist. Fix: pass --source pointing at Dataset101_LA "
                               f"(nnU-Net raw layout with imagesTr, labelsTr, splits/).")
    labeled_list = Path(labeled_list) if labeled_list else source / "splits" / f"labeled_{fraction}.txt"
    unlabeled_list = Path(unlabeled_list) if unlabeled_list else source / "splits" / f"unlabeled_{fraction}.txt"
    labeled, unlabeled = read_case_list(labeled_list), read_case_list(unlabeled_list)
    both = sorted(set(labeled) & set(unlabeled))
    if both:
        raise ADInputError(f"Case(s) {both[:5]} are in both {labeled_list} and {unlabeled_list}. Fix: make the "
                           f"lists disjoint.")
    for name, ids in (("labeled", labeled), ("unlabeled", unlabeled)):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        if dup:
            raise ADInputError(f"Case(s) {dup[:5]} are listed twice in the {name} list. Fix: remove duplicates.")
    dataset_json = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    ending = dataset_json["file_ending"]
    for case in labeled + unlabeled:
        for f in (source / "imagesTr" / f"{case}_0000{ending}", source / "labelsTr" / f"{case}{ending}"):
            if not f.is_file():
                raise ADInputError(f"Case {case}: {f} does not exist. Fix: check the split lists against "
                                   f"{source}.")
    if len(dataset_json.get("channel_names", {})) != 1:
        raise ADInputError(f"{source}/dataset.json has {len(dataset_json.get('channel_names', {}))} channels; this "
                           f"script handles the single-channel LA data. Fix: use the shared Dataset101_LA.")
    test = draw_holdout(unlabeled, holdout, seed)
    train_unlabeled = [c for c in unlabeled if c not in set(test)]

    target = new_dataset_folder(raw_root, dataset_id, dataset_name, overwrite)
    modes = set()
    with staged_dataset(target) as staged:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (staged / sub).mkdir(parents=True)
        for cases, img_dir, lab_dir in ((labeled + train_unlabeled, "imagesTr", "labelsTr"),
                                        (test, "imagesTs", "labelsTs")):
            for case in cases:
                modes.add(link_or_copy(source / "imagesTr" / f"{case}_0000{ending}",
                                       staged / img_dir / f"{case}_0000{ending}"))
                modes.add(link_or_copy(source / "labelsTr" / f"{case}{ending}", staged / lab_dir / f"{case}{ending}"))
        new_json = {k: v for k, v in dataset_json.items() if k != "numTraining"}
        new_json["numTraining"] = len(labeled) + len(train_unlabeled)
        new_json["description"] = (f"A&D LA benchmark ({fraction} split, hold-out of {holdout} unlabeled cases, seed "
                                   f"{seed}) built by adnnunet_prepare_la from {source.name}")
        write_json_atomic(staged / "dataset.json", new_json)
        write_case_lists(staged, labeled, train_unlabeled)
        write_json_atomic(staged / SPLIT_FILENAME, {
            "labeled": labeled, "unlabeled": train_unlabeled, "test": test, "seed": seed, "holdout": holdout,
            "holdout_rule": "numpy.random.RandomState(seed).choice(sorted(unlabeled_list), holdout, replace=False)",
            "source": {"dataset": str(source), "fraction": fraction,
                       "labeled_list": {"path": str(labeled_list), "sha256": sha256_of(labeled_list),
                                        "cases": labeled},
                       "unlabeled_list": {"path": str(unlabeled_list), "sha256": sha256_of(unlabeled_list),
                                          "cases": unlabeled}},
            "files": describe_file_modes(modes)})
    return target


def write_case_lists(folder: Path, labeled: Sequence[str], unlabeled: Sequence[str]) -> None:
    """``splits/labeled.txt`` and ``splits/unlabeled.txt`` of a benchmark dataset: one case id per line, for the
    runner's ``--labeled``/``--unlabeled``."""
    (folder / "splits").mkdir(exist_ok=True)
    (folder / "splits" / "labeled.txt").write_text("\n".join(labeled) + "\n", encoding="utf-8")
    (folder / "splits" / "unlabeled.txt").write_text("\n".join(unlabeled) + "\n", encoding="utf-8")
