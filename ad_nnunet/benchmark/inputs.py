"""The benchmark's command-line arguments checked against the dataset, before anything is written: which runs, which
budget, which cases. Every problem is an ``ADInputError`` naming the fix."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import List

from ad_nnunet.benchmark.budget import (CONTROL, FINETUNED, FULL_SOURCE, METHODS, REQUIRED_METHODS, WARM_SOURCE,
                                        Budget, ladder_method)
from ad_nnunet.data.settings import read_case_list
from ad_nnunet.errors import ADInputError
from ad_nnunet.publishing import existing_raw_dataset


def read_case_ids(path: Path, what: str) -> List[str]:
    """The case ids of the ``what`` list (--labeled, --unlabeled); an empty list is refused."""
    ids = read_case_list(path)
    if not ids:
        raise ADInputError(f"The {what} list {path} is empty. Fix: list at least one case id.")
    return ids


def case_ids(folder: Path, ending: str, channel_suffix: bool) -> List[str]:
    """Case ids of the ``<case>[_0000]<ending>`` files in ``folder``, sorted."""
    suffix = ("_0000" if channel_suffix else "") + ending
    return sorted(f.name[: -len(suffix)] for f in folder.iterdir() if f.is_file() and f.name.endswith(suffix))


class BenchmarkInputs:
    """The runs (``methods``, in order; ``starts``: ``{run: the run whose final model it continues}``; ``baseline``:
    what A&D is compared with first), the ``budget``, the dataset's folders and the case lists (``labeled``,
    ``unlabeled``, ``test``, ``dev``), all checked."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            if not os.environ.get(var):
                raise ADInputError(f"{var} is not set. Fix: export nnUNet_raw, nnUNet_preprocessed and "
                                   f"nnUNet_results (nnU-Net's folders) before running the benchmark.")
        if args.steps < 1 or args.iterations_per_epoch < 1 or args.ddim_steps < 1 or args.np < 1:
            raise ADInputError("--steps, --iterations_per_epoch, --ddim_steps and --np must be >= 1.")
        self._select_methods()
        self.raw_root = Path(os.environ["nnUNet_raw"])
        self.raw = existing_raw_dataset(args.dataset, self.raw_root)
        self.dataset = self.raw.name
        self.dataset_id = int(self.dataset[len("Dataset"):len("DatasetXXX")])
        self.pre = Path(os.environ["nnUNet_preprocessed"]) / self.dataset
        self.results = Path(os.environ["nnUNet_results"]) / self.dataset
        self.dataset_json = json.loads((self.raw / "dataset.json").read_text(encoding="utf-8"))
        self.ending = self.dataset_json["file_ending"]
        self.preset = None
        if args.preset:
            from ad_nnunet.plans_presets import load_preset

            self.preset = load_preset(args.preset)
        preset_config = self.preset["configuration_name"] if self.preset else None
        if args.configuration and preset_config and args.configuration != preset_config:
            raise ADInputError(f"--configuration {args.configuration} differs from preset {args.preset}'s "
                               f"configuration {preset_config}. Fix: drop --configuration or the preset.")
        self.configuration = args.configuration or preset_config or "3d_fullres"
        self.budget = Budget(args.steps, args.iterations_per_epoch, args.ddim_steps, args.warm_start_steps,
                             args.finetune_steps, args.finetune_lr, finetuned=tuple(self.starts))
        if args.dev_cases < 0:
            raise ADInputError(f"--dev_cases {args.dev_cases} must be >= 0.")
        self.labeled = read_case_ids(args.labeled, "labeled")
        self.unlabeled = read_case_ids(args.unlabeled, "unlabeled")
        self.test_images, self.test_labels = Path(args.test_images).resolve(), Path(args.test_labels).resolve()
        self._check_cases()

    def _select_methods(self) -> None:
        args = self.args
        lacking = [k for k in REQUIRED_METHODS if k not in args.methods]
        if lacking:
            raise ADInputError(f"--methods {' '.join(args.methods)} lacks {', '.join(lacking)}: A&D vs. the "
                               f"labeled-only baseline is the comparison this benchmark makes. Fix: pass --methods ad "
                               f"labeled_only (add full for the upper bound and the gap closure), or drop --methods.")
        self.methods = tuple(m for m in METHODS if m.key in args.methods)  # in METHODS order, without repeats
        if args.ad_trainer != "ADTrainer":  # an A&D variant as the benchmark's A&D method
            variant = ladder_method(args.ad_trainer)
            if variant.kind != "ad":
                raise ADInputError(f"--ad_trainer {args.ad_trainer} is not an A&D trainer. Fix: name ADTrainer or one "
                                   f"of its variants, e.g. ADTrainer_finetune.")
            self.methods = tuple(replace(m, label=f"A&D ({args.ad_trainer})", base=variant.base,
                                         base_module=variant.base_module) if m.key == "ad" else m
                                 for m in self.methods)
        w = args.warm_start_steps
        if w:
            if not 0 < w < args.steps or w % args.iterations_per_epoch or args.steps % args.iterations_per_epoch:
                raise ADInputError(f"--warm_start_steps {w} must lie between 0 and --steps {args.steps}, and both must "
                                   f"be multiples of --iterations_per_epoch {args.iterations_per_epoch} (so that "
                                   f"warm source + A&D = exactly the budget). Fix: e.g. --steps 600 "
                                   f"--warm_start_steps 300 --iterations_per_epoch 50.")
            self.methods = (WARM_SOURCE,) + self.methods
        f = args.finetune_steps
        self.starts, self.baseline = ({"ad": WARM_SOURCE.key} if w else {}), "labeled_only"
        if f:
            if w or f < 0 or f % args.iterations_per_epoch or not args.finetune_lr > 0:
                raise ADInputError(f"--finetune_steps {f} must be a positive multiple of --iterations_per_epoch "
                                   f"{args.iterations_per_epoch}, with --finetune_lr > 0 and without "
                                   f"--warm_start_steps. Fix: e.g. --steps 1000 --finetune_steps 400 "
                                   f"--iterations_per_epoch 50.")
            order = ("labeled_only", CONTROL.key, "ad", FULL_SOURCE.key, "full")
            runs = {m.key: m for m in self.methods + (CONTROL, FULL_SOURCE)}
            self.methods = tuple(runs[k] for k in order if k in runs and (k != FULL_SOURCE.key or "full" in runs))
            self.starts = {k: ("full_source" if k == "full" else "labeled_only") for k in FINETUNED if k in runs}
            self.baseline = CONTROL.key
        extras = tuple(ladder_method(name) for name in dict.fromkeys(args.extra_trainers))
        if f:  # A&D variants continue the labeled-only model like A&D itself: rungs compared under one protocol
            self.starts.update({m.key: "labeled_only" for m in extras if m.kind == "ad"})
        self.methods += extras

    def _check_cases(self) -> None:
        for folder, what in ((self.test_images, "--test_images"), (self.test_labels, "--test_labels")):
            if not folder.is_dir():
                raise ADInputError(f"{what} {folder} is not a folder. Fix: pass the hold-out images/labels folder.")
        self.test = case_ids(self.test_images, self.ending, channel_suffix=True)
        if not self.test:
            raise ADInputError(f"No '*_0000{self.ending}' images in {self.test_images}. Fix: pass the hold-out "
                               f"images in nnU-Net's naming (<case>_0000{self.ending}).")
        no_label = [c for c in self.test if not (self.test_labels / f"{c}{self.ending}").is_file()]
        if no_label:
            raise ADInputError(f"Test case(s) {no_label[:5]} have no label {self.test_labels}/<case>{self.ending}. "
                               f"Fix: add the reference labels or remove those images.")
        train_ids = case_ids(self.raw / "imagesTr", self.ending, channel_suffix=True)
        unl_dir = self.raw / "imagesUnlabeled"
        unl_ids = case_ids(unl_dir, self.ending, channel_suffix=True) if unl_dir.is_dir() else []
        both = sorted(set(self.labeled) & set(self.unlabeled))
        if both:
            raise ADInputError(f"Case(s) {both[:5]} are in both --labeled and --unlabeled. Fix: make them disjoint.")
        missing = [c for c in self.labeled + self.unlabeled if c not in set(train_ids)]
        if missing:
            raise ADInputError(f"Case(s) {missing[:5]} of the lists are not in {self.raw / 'imagesTr'}. Fix: list "
                               f"imagesTr cases only (the unlabeled list names imagesTr cases whose labels are "
                               f"hidden).")
        leaked = sorted(set(self.test) & (set(train_ids) | set(unl_ids)))
        if leaked:
            raise ADInputError(f"Hold-out case(s) {leaked[:5]} are also in imagesTr/imagesUnlabeled of "
                               f"{self.dataset}: they would enter planning and training. Fix: remove them from the "
                               f"training folders (e.g. rebuild the dataset with adnnunet_prepare_la).")
        self.domains = self.dataset_json.get("ad_domains") or None
        if self.domains is not None:
            no_domain = [c for c in self.test if c not in self.domains]
            if no_domain:
                raise ADInputError(f"Test case(s) {no_domain[:5]} have no domain in {self.raw / 'dataset.json'} "
                                   f"'ad_domains', which maps the other cases. Fix: add them to 'ad_domains' (case "
                                   f"id -> domain) or remove 'ad_domains' to report without domains.")
        self.train_ids = train_ids
        # development cases: the first K unlabeled cases (A&D sees their images, never their labels; the all-labels
        # run trains on their labels, so it is not scored on them). Decisions are made on these, never on the test.
        self.dev = sorted(self.unlabeled)[:self.args.dev_cases]
        if self.args.dev_cases > len(self.unlabeled):
            raise ADInputError(f"--dev_cases {self.args.dev_cases} exceeds the {len(self.unlabeled)} unlabeled cases. "
                               f"Fix: pick fewer.")
        self.dev_interpolations = tuple(dict.fromkeys(self.args.dev_interpolations))
        if self.dev_interpolations and not (self.dev and (self.budget.finetune_steps or self.budget.warm_start_steps)):
            raise ADInputError("--dev_interpolations scores A&D's model at other interpolation weights on the "
                               "development cases, so it needs --dev_cases K and a warm-started A&D run. Fix: add "
                               "--dev_cases 8 and --finetune_steps F (with an A&D trainer that sets "
                               "final_interpolation, e.g. --ad_trainer ADTrainer_finetune).")
        outside = [a for a in self.dev_interpolations if not 0 <= a <= 1]
        if outside:
            raise ADInputError(f"--dev_interpolations {outside[0]:g}: must be in [0, 1] (0 = the model A&D started "
                               f"from, 1 = the trained model). Fix: pass e.g. --dev_interpolations 0.3 1.")
        self.unused = [c for c in train_ids if c not in set(self.labeled) | set(self.unlabeled)]
        self.extra_unlabeled = unl_ids

    def config(self) -> dict:
        """What determines the results; a rerun in the same --out must match it."""
        return {"dataset": self.dataset, "configuration": self.configuration, "preset": self.args.preset,
                "steps": self.budget.steps, "iterations_per_epoch": self.budget.iterations_per_epoch,
                "ddim_steps": self.budget.ddim_steps, "device": self.args.device, "tta": self.args.tta,
                "labeled": self.labeled, "unlabeled": self.unlabeled, "test": self.test,
                "test_images": str(self.test_images), "test_labels": str(self.test_labels),
                # only when used, so that states written before these options existed still resume
                **({"warm_start_steps": self.budget.warm_start_steps} if self.budget.warm_start_steps else {}),
                **({"finetune_steps": self.budget.finetune_steps, "finetune_lr": self.budget.finetune_lr}
                   if self.budget.finetune_steps else {}),
                **({"dev": self.dev} if self.dev else {}),
                # not --extra_trainers: like --methods, a rerun may add rungs (the report is rebuilt)
                **({"ad_trainer": self.args.ad_trainer} if self.args.ad_trainer != "ADTrainer" else {})}
