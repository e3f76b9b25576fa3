"""Build the LA semi-supervised benchmark dataset from the shared Dataset101_LA and the A&D paper's split lists.

With the paper's lists L (labeled) and U (unlabeled) and a hold-out T of K cases drawn from U with
``numpy.random.RandomState(seed).choice(sorted(U), K, replace=False)``, the new raw dataset holds::

    imagesTr/labelsTr = L + (U \\ T)     (the labels of U \\ T are on disk for the fully supervised upper bound only;
                                         A&D and the labeled-only baseline never see them: ad_settings.json hides them)
    imagesTs/labelsTs = T               (never in nnU-Net's fingerprint, plans or training)
    splits/labeled.txt, splits/unlabeled.txt   (L and U \\ T, for run_ssl_benchmark.py --labeled/--unlabeled)
    benchmark_split.json                {labeled, unlabeled, test, seed, holdout, source lists}

Files are hard links to the source where the file system allows it, else copies. The dataset is built in a temporary
folder next to the target and renamed into place, so an interrupted run leaves no half-written dataset.

Example::

    python benchmarks/prepare_la.py --fraction 0.1            # -> $nnUNet_raw/Dataset111_LA10bench
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

from ad_nnunet.data.raw import new_dataset_folder  # noqa: E402
from ad_nnunet.errors import ADInputError  # noqa: E402
from ad_nnunet.hashing import sha256_of  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "datasets" / "Dataset101_LA"
DEFAULT_NAMES = {"0.1": (111, "LA10bench"), "0.05": (112, "LA5bench")}
SPLIT_FILENAME = "benchmark_split.json"


def read_list(path: Path) -> List[str]:
    """Case ids of a split list: one per line, blank lines and ``#`` comments ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ADInputError(f"Cannot read the case list {path}: {e}. Fix: pass an existing list file.") from None
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def draw_holdout(unlabeled: Sequence[str], k: int, seed: int) -> List[str]:
    """The hold-out: ``RandomState(seed).choice(sorted(unlabeled), k, replace=False)``, sorted."""
    if not 0 < k < len(unlabeled):
        raise ADInputError(f"--holdout {k} must be between 1 and {len(unlabeled) - 1} (the unlabeled list has "
                           f"{len(unlabeled)} cases and at least one must stay unlabeled). Fix: pick another K.")
    rs = np.random.RandomState(seed)
    return sorted(str(c) for c in rs.choice(sorted(unlabeled), k, replace=False))


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "link"
    except OSError:  # other file system, or protected_hardlinks on a file we do not own
        shutil.copy2(src, dst)
        return "copy"


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
    if not 0 < dataset_id < 1000:
        raise ADInputError(f"--dataset_id {dataset_id} is not in 1..999. Fix: pass a 3-digit id.")
    for sub in ("imagesTr", "labelsTr"):
        if not (source / sub).is_dir():
            raise ADInputError(f"{source / sub} does not exist. Fix: pass --source pointing at Dataset101_LA "
                               f"(nnU-Net raw layout with imagesTr, labelsTr, splits/).")
    labeled_list = Path(labeled_list) if labeled_list else source / "splits" / f"labeled_{fraction}.txt"
    unlabeled_list = Path(unlabeled_list) if unlabeled_list else source / "splits" / f"unlabeled_{fraction}.txt"
    labeled, unlabeled = read_list(labeled_list), read_list(unlabeled_list)
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

    raw_root = Path(raw_root)
    raw_root.mkdir(parents=True, exist_ok=True)
    target = new_dataset_folder(raw_root, dataset_id, dataset_name, overwrite)
    tmp = raw_root / f".{target.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    modes = set()
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "splits"):
            (tmp / sub).mkdir(parents=True)
        for cases, img_dir, lab_dir in ((labeled + train_unlabeled, "imagesTr", "labelsTr"),
                                        (test, "imagesTs", "labelsTs")):
            for case in cases:
                modes.add(_link_or_copy(source / "imagesTr" / f"{case}_0000{ending}",
                                        tmp / img_dir / f"{case}_0000{ending}"))
                modes.add(_link_or_copy(source / "labelsTr" / f"{case}{ending}", tmp / lab_dir / f"{case}{ending}"))
        new_json = {k: v for k, v in dataset_json.items() if k != "numTraining"}
        new_json["numTraining"] = len(labeled) + len(train_unlabeled)
        new_json["description"] = (f"A&D LA benchmark ({fraction} split, hold-out of {holdout} unlabeled cases, seed "
                                   f"{seed}) built by benchmarks/prepare_la.py from {source.name}")
        (tmp / "dataset.json").write_text(json.dumps(new_json, indent=2) + "\n", encoding="utf-8")
        (tmp / "splits" / "labeled.txt").write_text("\n".join(labeled) + "\n", encoding="utf-8")
        (tmp / "splits" / "unlabeled.txt").write_text("\n".join(train_unlabeled) + "\n", encoding="utf-8")
        split = {"labeled": labeled, "unlabeled": train_unlabeled, "test": test, "seed": seed, "holdout": holdout,
                 "holdout_rule": "numpy.random.RandomState(seed).choice(sorted(unlabeled_list), holdout, "
                                 "replace=False)",
                 "source": {"dataset": str(source), "fraction": fraction,
                            "labeled_list": {"path": str(labeled_list), "sha256": sha256_of(labeled_list),
                                             "cases": labeled},
                            "unlabeled_list": {"path": str(unlabeled_list), "sha256": sha256_of(unlabeled_list),
                                               "cases": unlabeled}},
                 "files": "hard links" if modes == {"link"} else ("copies" if modes == {"copy"} else "mixed")}
        (tmp / SPLIT_FILENAME).write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")
        if target.exists():  # --overwrite: swap, then delete the old one
            old = raw_root / f".{target.name}.old{os.getpid()}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                   help=f"the shared Dataset101_LA (default {DEFAULT_SOURCE})")
    p.add_argument("--fraction", default="0.1", help="which paper split: 0.1 (8 labeled) or 0.05 (4 labeled)")
    p.add_argument("--labeled_list", type=Path, help="override: labeled list file (default splits/labeled_F.txt)")
    p.add_argument("--unlabeled_list", type=Path, help="override: unlabeled list (default splits/unlabeled_F.txt)")
    p.add_argument("--holdout", type=int, default=12, help="test cases drawn from the unlabeled list (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out draw (default 0)")
    p.add_argument("--raw", type=Path, default=None, help="nnU-Net raw root (default $nnUNet_raw)")
    p.add_argument("--dataset_id", type=int, help="default 111 (0.1) / 112 (0.05)")
    p.add_argument("--dataset_name", help="default LA10bench (0.1) / LA5bench (0.05)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    a = p.parse_args(argv)
    raw = a.raw or os.environ.get("nnUNet_raw")
    try:
        if not raw:
            raise ADInputError("No raw folder: nnUNet_raw is not set. Fix: export nnUNet_raw or pass --raw.")
        target = prepare(a.source, Path(raw), a.fraction, a.holdout, a.seed, a.dataset_id, a.dataset_name,
                         a.overwrite, a.labeled_list, a.unlabeled_list)
    except ADInputError as e:
        print(f"prepare_la: error: {e}", file=sys.stderr)
        return 2
    split = json.loads((target / SPLIT_FILENAME).read_text())
    print(f"{target}: {len(split['labeled'])} labeled + {len(split['unlabeled'])} unlabeled (labels hidden from "
          f"A&D) in imagesTr, {len(split['test'])} hold-out test cases in imagesTs ({split['files']})")
    print(f"Next: python benchmarks/run_ssl_benchmark.py --dataset {target.name} "
          f"--labeled {target}/splits/labeled.txt --unlabeled {target}/splits/unlabeled.txt "
          f"--test_images {target}/imagesTs --test_labels {target}/labelsTs --out <DIR> ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
