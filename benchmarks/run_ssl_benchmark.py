"""Semi-supervised benchmark: A&D vs. nnU-Net on the labeled cases only vs. nnU-Net on all labels, same step budget.

Up to three runs, each trained with stock ``nnUNetv2_train`` for exactly ``E = ceil(steps / I)`` epochs of ``I``
iterations (``N = E * I`` optimizer steps), then ``nnUNetv2_predict`` on a held-out test folder with
``checkpoint_final.pth`` and scored with ``ad_nnunet.evaluation`` (Dice, Jaccard, HD95 and ASD, distances in mm on
the reference grid):

================  =======  =====  ==========================================================================
method            trainer  fold   training data
================  =======  =====  ==========================================================================
A&D               ADTrainer   0   labeled cases with labels + unlabeled cases as images only (ad_settings.json)
labeled only      nnUNet      0   labeled cases (splits_final.json fold 0 = the labeled list)
all labels        nnUNet      1   labeled + unlabeled cases, ALL labels (fully supervised upper bound)
================  =======  =====  ==========================================================================

Validation during training is on the labeled cases (the A&D paper's protocol); it influences nothing that is
evaluated (no checkpoint selection; nnU-Net's final validation is skipped). Gap closure:

.. math::

    g = \\frac{\\mathrm{Dice}_{A\\&D} - \\mathrm{Dice}_{labeled}}{\\mathrm{Dice}_{all} - \\mathrm{Dice}_{labeled}}

(undefined when the all-labels model is not better than the labeled-only one).

``--finetune_steps F`` measures the user who already has a labeled-only model: labeled-only (and all-labels) nnU-Net
train the budget, then A&D (``--ad_trainer``, e.g. ADTrainer_finetune) continues the labeled-only model for F steps,
and so does nnU-Net alone at the same learning rate (``--finetune_lr``): the matched control A&D is compared with
(paired, gap closure); the all-labels model is continued likewise. Each continuation starts from the model's
``checkpoint_final.pth`` through ``adnnunet_warm_start`` and ``nnUNetv2_train ... --c``.

``--methods`` picks the runs (default: all three). A&D and labeled only are mandatory; ``--methods ad labeled_only``
skips the all-labels upper bound when time is short, and the report then gives no gap closure (reported as not
computed). The selection is recorded in state.json; a rerun may add a method (its stages run, the report is rebuilt)
or drop one (left out of the rebuilt report).

Breakdowns in ``report.md``/``report.json``: Dice and HD95 per class (class names from dataset.json ``labels``) for
every method; when dataset.json has ``"ad_domains"``, the test cases are also scored per domain (mean Dice and HD95
per domain per method), and ``"ad_simulated": true`` puts "SIMULATED domains" in the title, a banner and the
per-domain heading. Each A&D run's ``ad_progress.png`` (losses, mu and the DRS difficulty weights per class per
epoch) is copied next to the report and linked as "difficulty weights trajectory". ``--setting {ssl, imbssl, uda,
semidg}`` only changes the titles (and, for ssl, shows the paper's LA numbers); the runs are the same in every
setting: for UDA "labeled only" is the source-only model and "all labels" the oracle with target labels.

Stages (each recorded in ``<out>/state.json`` when complete; a rerun skips completed stages and continues an
interrupted training with ``--c``; every subprocess writes to ``<out>/logs/<stage>.log``): plan, preprocess (preset),
settings, preprocess_unlabeled, trainers, train_*, predict_*, evaluate_*, report.

Example (LA 10 %, CPU tier)::

    python benchmarks/run_ssl_benchmark.py --dataset Dataset111_LA10bench \\
        --labeled $nnUNet_raw/Dataset111_LA10bench/splits/labeled.txt \\
        --unlabeled $nnUNet_raw/Dataset111_LA10bench/splits/unlabeled.txt \\
        --test_images $nnUNet_raw/Dataset111_LA10bench/imagesTs --test_labels $nnUNet_raw/Dataset111_LA10bench/labelsTs \\
        --preset la_cpu --steps 600 --device cpu --np 2 --out benchmark_runs/la10_cpu
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ad_nnunet.errors import ADInputError

REPO = Path(__file__).resolve().parents[1]
STATE_FORMAT = 1
PLANS = "nnUNetPlans"
# The A&D paper (Wang & Li, NeurIPS 2023), LA: Dice/Jaccard in %, HD95/ASD as the official code reports them
# (voxel distances, see ad_nnunet/evaluation/metrics.py).
PAPER_LA = {
    "10% (8 labeled)": {"A&D": (90.31, 82.40, 5.55, 1.64), "V-Net labeled only": (82.74, None, None, None),
                        "V-Net all labels": (91.47, None, None, None)},
    "5% (4 labeled)": {"A&D": (89.93, 81.82, 5.25, 1.86)},
}


# --setting: only the report titles depend on it.
SETTING_TITLES = {"ssl": "SSL benchmark", "imbssl": "Class-imbalanced SSL benchmark",
                  "uda": "UDA benchmark (unsupervised domain adaptation)",
                  "semidg": "SemiDG benchmark (semi-supervised domain generalisation)"}
# Copied next to the report from each A&D run's model folder.
AD_PROGRESS = "ad_progress.png"


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    kind: str  # "ad" or "nnunet"
    fold: int
    data: str
    base: Optional[str] = None  # trainer class the run subclasses (None: ADTrainer or nnUNetTrainer, by kind)
    base_module: Optional[str] = None  # where that class is defined


def ladder_method(trainer_class: str) -> Method:
    """A run of any nnU-Net or A&D trainer class on fold 0 with the benchmark's budget (--extra_trainers), e.g.
    nnUNetTrainerNoDeepSupervision or ADTrainer_paper: the rungs of an attribution ladder."""
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    import nnunetv2

    from ad_nnunet import ext_trainer_dir
    from ad_nnunet.training.ad_trainer import ADTrainer

    cls = recursive_find_python_class(ext_trainer_dir(), trainer_class, "ad_nnunet._nnunet_ext") or \
        recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), trainer_class,
                                    "nnunetv2.training.nnUNetTrainer")
    if cls is None:
        raise ADInputError(f"--extra_trainers {trainer_class}: no such trainer class in nnunetv2 or ad-nnunet. Fix: "
                           f"name an nnUNetTrainer or ADTrainer variant, e.g. nnUNetTrainerNoDeepSupervision.")
    ad = issubclass(cls, ADTrainer)
    return Method(trainer_class, trainer_class, "ad" if ad else "nnunet", 0,
                  "labeled (with labels) + unlabeled (images only)" if ad else "labeled cases only", base=trainer_class,
                  base_module=cls.__module__)


METHODS = (
    Method("ad", "A&D (ADTrainer)", "ad", 0, "labeled (with labels) + unlabeled (images only)"),
    Method("labeled_only", "nnU-Net, labeled only", "nnunet", 0, "labeled cases only"),
    Method("full", "nnU-Net, all labels (upper bound)", "nnunet", 1, "labeled + unlabeled, all labels"),
)
METHOD_KEYS = tuple(m.key for m in METHODS)
# With --warm_start_steps W, A&D starts from this run: nnU-Net on the labeled cases for steps - W steps.
WARM_SOURCE = Method("warm_source", "nnU-Net, labeled only, A&D's warm start", "nnunet", 0, "labeled cases only")
# With --finetune_steps F, A&D continues the labeled-only model for F steps, and so do these two with nnU-Net alone:
# the matched control (the comparison A&D must win) and the all-labels upper bound (continuing the all-labels model).
CONTROL = Method("control", "nnU-Net, labeled only, continued (A&D's matched control)", "nnunet", 0,
                 "labeled cases only")
FULL_SOURCE = Method("full_source", "nnU-Net, all labels, before continuing", "nnunet", 1,
                     "labeled + unlabeled, all labels")
FINETUNED = ("ad", CONTROL.key, "full")  # the runs that continue a model with --finetune_steps
# The comparison the benchmark exists for; only the upper bound ("full") may be left out.
REQUIRED_METHODS = ("ad", "labeled_only")


@dataclass(frozen=True)
class Budget:
    """Every run: ``num_epochs * iterations_per_epoch`` optimizer steps, ``num_epochs = ceil(steps / I)``.

    With ``warm_start_steps`` W > 0, A&D's total is still ``steps``: nnU-Net trains ``steps - W`` steps on the
    labeled cases (the warm source), then A&D trains W steps from that model.

    With ``finetune_steps`` F > 0, labeled-only and all-labels nnU-Net train ``steps``; then A&D, the matched
    control and the all-labels model each train F more steps at ``finetune_lr`` (totals ``steps + F``)."""
    steps: int
    iterations_per_epoch: int
    ddim_steps: int
    warm_start_steps: int = 0
    finetune_steps: int = 0
    finetune_lr: float = 1e-3

    def epochs(self, steps: int) -> int:
        return math.ceil(steps / self.iterations_per_epoch)

    @property
    def num_epochs(self) -> int:
        return self.epochs(self.steps)

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.iterations_per_epoch

    def run_steps(self, method_key: str) -> int:
        """Optimizer steps of one run: A&D's own steps after a warm start, the warm source's, or the budget."""
        if self.warm_start_steps and method_key == "ad":
            return self.warm_start_steps
        if method_key == WARM_SOURCE.key:
            return self.steps - self.warm_start_steps
        if self.finetune_steps and method_key in FINETUNED:
            return self.finetune_steps
        return self.total_steps

    def lr(self, method_key: str) -> Optional[float]:
        """The learning rate a run must use instead of its trainer's own (the fine-tuning runs), else None."""
        return self.finetune_lr if self.finetune_steps and method_key in FINETUNED else None

    @property
    def val_iterations(self) -> int:
        return max(1, min(5, self.iterations_per_epoch // 10))

    def trainer_name(self, kind: str, steps: Optional[int] = None, base: Optional[str] = None,
                     lr: Optional[float] = None) -> str:
        # Budget-specific names: runs with other budgets get other nnU-Net results folders, and --c never resumes
        # a checkpoint of another budget.
        tag = f"{self.epochs(self.steps if steps is None else steps)}x{self.iterations_per_epoch}"
        if lr is not None:  # e.g. 0.001 -> lr0p001, a valid class name
            tag += "_lr" + f"{lr:g}".replace(".", "p").replace("-", "m").replace("+", "")
        base = base or ("ADTrainer" if kind == "ad" else "nnUNetTrainer")
        return f"Bench{base}_{tag}_ddim{self.ddim_steps}" if kind == "ad" else f"Bench{base}_{tag}"


TRAINER_HEADER = '''"""Benchmark trainers generated by benchmarks/run_ssl_benchmark.py (regenerated on every run; do not edit).

Budget: {budget}; {V} validation iterations per epoch.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from ad_nnunet.training.ad_trainer import ADTrainer


class _BenchBudget:
    """The benchmark's schedule. nnU-Net's final validation is skipped: the benchmark scores the held-out test set."""

    def _set_budget(self, num_epochs: int):
        self.num_epochs = num_epochs
        self.num_iterations_per_epoch = {I}
        self.num_val_iterations_per_epoch = {V}
        self.save_every = 1  # checkpoint_latest every epoch, so an interrupted run resumes with --c

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("run_ssl_benchmark: nnU-Net's final validation skipped; checkpoint_final.pth is "
                               "evaluated on the held-out test folder instead.")
'''
TRAINER_CLASS = '''

class {name}(_BenchBudget, {base}):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._set_budget({E}){extra}
'''


class StageError(RuntimeError):
    """A stage failed; the message names the stage and its log file."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _read_ids(path: Path, what: str) -> List[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ADInputError(f"Cannot read the {what} list {path}: {e}. Fix: pass a text file, one case id per "
                           f"line.") from None
    ids = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    if not ids:
        raise ADInputError(f"The {what} list {path} is empty. Fix: list at least one case id.")
    return ids


def resolve_dataset(dataset: str, raw_root: Path) -> tuple[int, str]:
    """(id, DatasetXXX_Name) of a dataset given by name or id; its raw folder must exist."""
    if re.fullmatch(r"\d+", str(dataset)):
        prefix = f"Dataset{int(dataset):03d}_"
        found = sorted(p.name for p in raw_root.iterdir() if p.is_dir() and p.name.startswith(prefix)) \
            if raw_root.is_dir() else []
        if len(found) != 1:
            raise ADInputError(f"Dataset id {dataset}: {'no' if not found else 'several'} raw folder(s) {found} in "
                               f"{raw_root}. Fix: pass the dataset name (DatasetXXX_Name) or create the dataset.")
        name = found[0]
    else:
        name = str(dataset)
    m = re.fullmatch(r"Dataset(\d{3})_.+", name)
    if m is None or not (raw_root / name / "dataset.json").is_file():
        raise ADInputError(f"Dataset {dataset!r}: {raw_root / name / 'dataset.json'} not found. Fix: pass an "
                           f"existing raw dataset (DatasetXXX_Name or its id) under $nnUNet_raw.")
    return int(m.group(1)), name


def _case_ids(folder: Path, ending: str, channel_suffix: bool) -> List[str]:
    suffix = ("_0000" if channel_suffix else "") + ending
    return sorted(f.name[: -len(suffix)] for f in folder.iterdir() if f.is_file() and f.name.endswith(suffix))


def machine_info(device: str) -> dict:
    """CPU model, cores, torch version, device name (for the report)."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "device": device}
    try:
        from importlib.metadata import version
        info["nnunetv2"] = version("nnunetv2")
    except Exception:  # not installed as a distribution
        info["nnunetv2"] = "unknown"
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit() -> str:
    """``$AD_BENCH_COMMIT`` if set (a copy without .git), else ``git rev-parse HEAD`` of the repository."""
    if os.environ.get("AD_BENCH_COMMIT"):
        return os.environ["AD_BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=20)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def gap_closure(dice_ad: Optional[float], dice_labeled: Optional[float], dice_full: Optional[float]) -> Optional[float]:
    """``(D_ad - D_labeled) / (D_full - D_labeled)``; ``None`` when undefined (missing values or D_full <= D_labeled)."""
    if None in (dice_ad, dice_labeled, dice_full) or any(math.isnan(x) for x in (dice_ad, dice_labeled, dice_full)):
        return None
    denominator = dice_full - dice_labeled
    if denominator <= 1e-9:
        return None
    return (dice_ad - dice_labeled) / denominator


# Below this Dice difference between the all-labels and labeled-only models the gap closure's denominator is noise.
MEANINGFUL_GAP = 0.01


def report_gap_closure(dice: Dict[str, Optional[float]], baseline: str = "labeled_only"
                       ) -> tuple[Optional[float], Optional[str]]:
    """(gap closure, None); (None, why it is missing); or (gap closure, why it is not meaningful) when the
    all-labels model beats the labeled-only one (``baseline``: ``labeled_only`` or, when fine-tuning, the matched
    ``control``) by less than ``MEANINGFUL_GAP``; from ``{method key: mean Dice}``."""
    if "full" not in dice:
        return None, "not computed, because the all-labels run was skipped (--methods without full)"
    gap = gap_closure(dice["ad"], dice[baseline], dice["full"])
    if gap is None:
        return None, ("undefined, because the all-labels model is not better than the labeled-only model at this "
                      "budget")
    if dice["full"] - dice[baseline] < MEANINGFUL_GAP:
        return gap, (f"not meaningful: the all-labels model is only {100 * (dice['full'] - dice[baseline]):.2f} "
                     f"Dice points better than the labeled-only one at this budget, well within case-to-case noise")
    return gap, None


class Benchmark:
    def __init__(self, args: argparse.Namespace, command: str):
        self.args = args
        self.command = command
        self.t0 = time.time()
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            if not os.environ.get(var):
                raise ADInputError(f"{var} is not set. Fix: export nnUNet_raw, nnUNet_preprocessed and "
                                   f"nnUNet_results (nnU-Net's folders) before running the benchmark.")
        if args.steps < 1 or args.iterations_per_epoch < 1 or args.ddim_steps < 1 or args.np < 1:
            raise ADInputError("--steps, --iterations_per_epoch, --ddim_steps and --np must be >= 1.")
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
        # {run: the run whose final model it starts from}; the baseline: what A&D is compared with first
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
        self.methods += tuple(ladder_method(name) for name in dict.fromkeys(args.extra_trainers))
        self.raw_root = Path(os.environ["nnUNet_raw"])
        self.dataset_id, self.dataset = resolve_dataset(args.dataset, self.raw_root)
        self.raw = self.raw_root / self.dataset
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
                             args.finetune_steps, args.finetune_lr)
        if args.dev_cases < 0:
            raise ADInputError(f"--dev_cases {args.dev_cases} must be >= 0.")
        self.labeled = _read_ids(args.labeled, "labeled")
        self.unlabeled = _read_ids(args.unlabeled, "unlabeled")
        self.test_images, self.test_labels = Path(args.test_images).resolve(), Path(args.test_labels).resolve()
        self._check_cases()
        self.out = Path(args.out).resolve()
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / "state.json"
        self.state = self._load_state()

    # ---- inputs ------------------------------------------------------------------------------------------------
    def _check_cases(self) -> None:
        for folder, what in ((self.test_images, "--test_images"), (self.test_labels, "--test_labels")):
            if not folder.is_dir():
                raise ADInputError(f"{what} {folder} is not a folder. Fix: pass the hold-out images/labels folder.")
        self.test = _case_ids(self.test_images, self.ending, channel_suffix=True)
        if not self.test:
            raise ADInputError(f"No '*_0000{self.ending}' images in {self.test_images}. Fix: pass the hold-out "
                               f"images in nnU-Net's naming (<case>_0000{self.ending}).")
        no_label = [c for c in self.test if not (self.test_labels / f"{c}{self.ending}").is_file()]
        if no_label:
            raise ADInputError(f"Test case(s) {no_label[:5]} have no label {self.test_labels}/<case>{self.ending}. "
                               f"Fix: add the reference labels or remove those images.")
        train_ids = _case_ids(self.raw / "imagesTr", self.ending, channel_suffix=True)
        unl_dir = self.raw / "imagesUnlabeled"
        unl_ids = _case_ids(unl_dir, self.ending, channel_suffix=True) if unl_dir.is_dir() else []
        both = sorted(set(self.labeled) & set(self.unlabeled))
        if both:
            raise ADInputError(f"Case(s) {both[:5]} are in both --labeled and --unlabeled. Fix: make them disjoint.")
        missing = [c for c in self.labeled + self.unlabeled if c not in set(train_ids)]
        if missing:
            raise ADInputError(f"Case(s) {missing[:5]} of the lists are not in {self.raw / 'imagesTr'}. Fix: list "
                               f"imagesTr cases only (the unlabeled list names imagesTr cases whose labels are hidden).")
        leaked = sorted(set(self.test) & (set(train_ids) | set(unl_ids)))
        if leaked:
            raise ADInputError(f"Hold-out case(s) {leaked[:5]} are also in imagesTr/imagesUnlabeled of "
                               f"{self.dataset}: they would enter planning and training. Fix: remove them from the "
                               f"training folders (e.g. rebuild the dataset with benchmarks/prepare_la.py).")
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
                **({"extra_trainers": list(self.args.extra_trainers)} if self.args.extra_trainers else {}),
                **({"ad_trainer": self.args.ad_trainer} if self.args.ad_trainer != "ADTrainer" else {})}

    def _load_state(self) -> dict:
        methods = [m.key for m in self.methods]
        if self.state_path.is_file():
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            if state.get("format") != STATE_FORMAT:
                raise ADInputError(f"{self.state_path} has format {state.get('format')!r}, expected {STATE_FORMAT}. "
                                   f"Fix: use a new --out.")
            differs = sorted(k for k, v in self.config().items() if state["config"].get(k) != v)
            if differs:
                raise ADInputError(f"{self.out} holds a benchmark with other settings ({', '.join(differs)} differ). "
                                   f"Fix: use a new --out, or rerun with the original arguments to resume.")
            state["invocations"].append(self.command)
            previous = state.get("methods", list(METHOD_KEYS))  # states without "methods" ran all three
            if previous != methods:
                # Stages are keyed by method, so an added method's stages simply run and a dropped one's results
                # stay unused; only the report depends on the selection, so it is rebuilt.
                self.log(f"methods {previous} -> {methods}: the report will be rebuilt")
                state["stages"].pop("report", None)
        else:
            state = {"format": STATE_FORMAT, "config": self.config(), "invocations": [self.command], "stages": {}}
        state["methods"] = methods
        _atomic_write_json(self.state_path, state)
        return state

    def _save_state(self) -> None:
        _atomic_write_json(self.state_path, self.state)

    # ---- running -----------------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[{_fmt_time(time.time() - self.t0)}] {msg}", flush=True)

    def env(self, stage: str = "") -> Dict[str, str]:
        from ad_nnunet import ext_trainer_dir

        env = dict(os.environ)
        env["nnUNet_def_n_proc"] = str(self.args.np)
        # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0
        env["nnUNet_n_proc_DA"] = str(max(1, self.args.n_proc_da) if stage == "plan" else self.args.n_proc_da)
        # torch.compile: ADTrainer opts out unless nnUNet_compile=1; off for nnUNetTrainer too, for equal treatment
        env.setdefault("nnUNet_compile", "f")
        env["PYTHONUNBUFFERED"] = "1"
        ext = [str(self.out / "trainers"), ext_trainer_dir()]
        env["nnUNet_extTrainer"] = os.pathsep.join(ext + ([os.environ["nnUNet_extTrainer"]]
                                                         if os.environ.get("nnUNet_extTrainer") else []))
        return env

    def run_cmd(self, stage: str, cmd: List[str]) -> float:
        """Run ``cmd`` with its output appended to logs/<stage>.log; return its wall time. Raises StageError."""
        from ad_nnunet import console_command

        exe = shutil.which(console_command(cmd[0]))
        if exe is None:
            raise StageError(f"stage '{stage}': command {cmd[0]} not found on PATH. Fix: install nnunetv2 and "
                             f"ad-nnunet (pip install -e .) in this environment.")
        log_path = self.logs / f"{stage}.log"
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cmd)}\n")
            log.flush()
            t = time.time()
            rc = subprocess.run([exe] + cmd[1:], stdout=log, stderr=subprocess.STDOUT, env=self.env(stage)).returncode
            seconds = time.time() - t
        if rc != 0:
            tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
            raise StageError(f"stage '{stage}' failed: {shlex.join(cmd)} exited with {rc}. Full log: {log_path}\n"
                             f"--- last lines ---\n{tail}")
        return seconds

    def stage(self, name: str, fn: Callable[[dict], Optional[dict]]) -> dict:
        """Run ``fn(entry)`` unless ``name`` is complete in state.json; ``entry`` persists across attempts."""
        entry = self.state["stages"].setdefault(name, {"status": "pending"})
        if entry["status"] == "done":
            self.log(f"{name}: already complete, skipped")
            return entry
        resumed = entry["status"] == "started"
        entry["status"] = "started"
        self._save_state()
        self.log(f"{name}: {'resuming' if resumed else 'started'}")
        t = time.time()
        try:
            result = fn(entry) or {}
        except ADInputError as e:
            raise StageError(f"stage '{name}' failed: {e}") from None
        entry.update(result)
        entry["status"] = "done"
        entry["seconds"] = round(entry.get("seconds", 0.0) + time.time() - t, 2)
        self._save_state()
        self.log(f"{name}: done in {time.time() - t:.1f} s")
        return entry

    # ---- stages ------------------------------------------------------------------------------------------------
    def _data_folder(self) -> Optional[Path]:
        plans_file = self.pre / f"{PLANS}.json"
        if not plans_file.is_file():
            return None
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans = PlansManager(str(plans_file))
        if self.configuration not in plans.available_configurations:
            raise ADInputError(f"Configuration {self.configuration} is not in {plans_file} (available: "
                               f"{plans.available_configurations}). Fix: pick one of those with --configuration.")
        return self.pre / plans.get_configuration(self.configuration).data_identifier

    def plan(self, entry: dict) -> dict:
        if (self.pre / f"{PLANS}.json").is_file():
            self.log(f"plan: {self.pre / PLANS}.json exists, planning skipped")
            return {"skipped": True}
        # With a preset, its own --preprocess step preprocesses exactly what the preset's configuration reads.
        cmd = ["nnUNetv2_plan_and_preprocess", "-d", str(self.dataset_id), "-c", "3d_fullres",
               "-np", str(self.args.np)] + (["--no_pp"] if self.preset else [])
        return {"command": shlex.join(cmd), "wall_s": self.run_cmd("plan", cmd)}

    def _preprocessed_complete(self) -> bool:
        folder = self._data_folder()
        return folder is not None and folder.is_dir() and len(list(folder.glob("*.pkl"))) == len(self.train_ids)

    def preprocess(self, entry: dict) -> dict:
        if self.preset:
            cmd = ["adnnunet_apply_preset", "-d", self.dataset, "--preset", self.args.preset, "--preprocess",
                   "-np", str(self.args.np), "--overwrite"]
        else:
            cmd = ["nnUNetv2_preprocess", "-d", str(self.dataset_id), "-c", self.configuration,
                   "-np", str(self.args.np)]
            if self._preprocessed_complete():
                return {"skipped": True}
        wall = 0.0
        for _ in range(2):  # a folder left incomplete by an interrupted run is removed and preprocessed again
            wall += self.run_cmd("preprocess", cmd)
            if self._preprocessed_complete():
                return {"command": shlex.join(cmd), "wall_s": round(wall, 2)}
            if self._data_folder() is not None and self._data_folder().is_dir():
                shutil.rmtree(self._data_folder())
        raise StageError(f"stage 'preprocess': {self._data_folder()} does not hold all {len(self.train_ids)} "
                         f"imagesTr cases after preprocessing. See {self.logs / 'preprocess.log'}.")

    def settings(self, entry: dict) -> dict:
        cmd = ["adnnunet_make_settings", "-d", self.dataset, "--setting", "ssl",
               "--labeled_list", str(Path(self.args.labeled).resolve()),
               "--unlabeled_list", str(Path(self.args.unlabeled).resolve()), "--overwrite"]
        self.run_cmd("settings", cmd)
        splits_file = self.pre / "splits_final.json"
        splits = json.loads(splits_file.read_text(encoding="utf-8"))
        if len(splits) != 1 or sorted(splits[0]["train"]) != sorted(self.labeled):
            raise StageError(f"stage 'settings': {splits_file} fold 0 is not the labeled list after "
                             f"adnnunet_make_settings. See {self.logs / 'settings.log'}.")
        # fold 1: the fully supervised upper bound, trained on every label of labeled + unlabeled cases
        splits.append({"train": sorted(self.labeled + self.unlabeled), "val": list(splits[0]["val"])})
        _atomic_write_json(splits_file, splits)
        shutil.copy2(splits_file, self.out / "splits_final.json")
        shutil.copy2(self.pre / "ad_settings.json", self.out / "ad_settings.json")
        return {"command": shlex.join(cmd), "splits_final": str(splits_file)}

    def preprocess_unlabeled(self, entry: dict) -> dict:
        cmd = ["adnnunet_preprocess_unlabeled", "-d", self.dataset, "-c", self.configuration,
               "-np", str(self.args.np)]
        return {"command": shlex.join(cmd), "wall_s": self.run_cmd("preprocess_unlabeled", cmd)}

    def write_trainers(self, entry: dict) -> dict:
        b = self.budget
        folder = self.out / "trainers"
        folder.mkdir(exist_ok=True)
        runs = {self.trainer(m): (m, b.run_steps(m.key)) for m in self.methods}
        budget = "; ".join(f"{name}: {b.epochs(steps)} epochs x {b.iterations_per_epoch} iterations"
                           for name, (_, steps) in runs.items())
        text = TRAINER_HEADER.format(budget=budget, I=b.iterations_per_epoch, V=b.val_iterations)
        text += "".join(f"from {m.base_module} import {m.base}\n" for m in self.methods if m.base)
        for name, (m, steps) in runs.items():
            base = m.base or ("ADTrainer" if m.kind == "ad" else "nnUNetTrainer")
            extra = f"\n        self.ddim_steps = {b.ddim_steps}" if m.kind == "ad" else ""
            if b.lr(m.key) is not None:
                extra += f"\n        self.initial_lr = {b.lr(m.key)!r}"
            text += TRAINER_CLASS.format(name=name, base=base, E=b.epochs(steps), extra=extra)
        _atomic_write_text(folder / "bench_trainers.py", text)
        return {"file": str(folder / "bench_trainers.py")}

    def trainer(self, m: Method) -> str:
        return self.budget.trainer_name(m.kind, self.budget.run_steps(m.key), m.base, self.budget.lr(m.key))

    @property
    def dev_methods(self) -> tuple:
        """Runs scored on the development cases: all but the all-labels runs, which trained on their labels."""
        return tuple(m for m in self.methods if m.fold != 1)

    def model_folder(self, m: Method) -> Path:
        return self.results / f"{self.trainer(m)}__{PLANS}__{self.configuration}" / f"fold_{m.fold}"

    @staticmethod
    def warm_start_stage(m: Method) -> str:
        return "warm_start" if m.key == "ad" else f"warm_start_{m.key}"  # "warm_start": states of older versions

    def warm_start(self, m: Method) -> Callable[[dict], dict]:
        """The epoch-0 checkpoint of run ``m`` from the final model of the run it starts from (adnnunet_warm_start:
        A&D with every decoder computing that model, an nnU-Net run with the model itself)."""
        def run(entry: dict) -> dict:
            source_run = next(s for s in self.methods if s.key == self.starts[m.key])
            source = self.model_folder(source_run) / "checkpoint_final.pth"
            cmd = ["adnnunet_warm_start", "-d", self.dataset, "-c", self.configuration, "-f", str(m.fold),
                   "-i", str(source), "-tr", self.trainer(m), "-p", PLANS, "--overwrite"]
            return {"command": shlex.join(cmd), "wall_s": round(self.run_cmd(self.warm_start_stage(m), cmd), 2)}
        return run

    def dev_folders(self, entry: dict) -> dict:
        """``<out>/dev/{images,labels}``: links to the development cases' raw image and label files."""
        for sub, src, suffix in (("images", "imagesTr", "_0000"), ("labels", "labelsTr", "")):
            folder = self.out / "dev" / sub
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for c in self.dev:
                os.symlink(self.raw / src / f"{c}{suffix}{self.ending}", folder / f"{c}{suffix}{self.ending}")
        return {"cases": self.dev}

    def train(self, m: Method) -> Callable[[dict], dict]:
        def run(entry: dict) -> dict:
            attempts = entry.setdefault("attempts_s", [])
            cmd = ["nnUNetv2_train", self.dataset, self.configuration, str(m.fold), "-tr",
                   self.trainer(m), "-p", PLANS, "-device", self.args.device]
            # continue an interrupted attempt, or a warm-started run from its epoch-0 checkpoint
            if attempts or m.key in self.starts:
                cmd.append("--c")
            attempts.append(None)  # marks the attempt before it starts
            self._save_state()
            seconds = self.run_cmd(f"train_{m.key}", cmd)
            attempts[-1] = round(seconds, 2)
            final = self.model_folder(m) / "checkpoint_final.pth"
            if not final.is_file():
                raise StageError(f"stage 'train_{m.key}': {final} is missing after training. "
                                 f"See {self.logs / f'train_{m.key}.log'}.")
            # Attempts killed mid-way have no time (None); only completed attempts are summed.
            return {"command": shlex.join(cmd), "wall_s": round(sum(a for a in attempts if a), 2),
                    "checkpoint": str(final), **self._checkpoint_facts(final)}
        return run

    @staticmethod
    def _checkpoint_facts(path: Path) -> dict:
        from ad_nnunet.checkpoints import load_checkpoint

        ckpt = load_checkpoint(path)
        log = ckpt.get("logging", {})
        starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
        facts = {"epochs_completed": len(ends),
                 "epoch_time_s": round(float(sum(e - s for s, e in zip(starts, ends))), 2)}
        if "ad_state" in ckpt:
            facts["skipped_steps"] = int(ckpt["ad_state"].get("skipped_steps", 0))
        return facts

    def split_folders(self, split: str) -> tuple[Path, Path, List[str], str]:
        """(images, labels, cases, suffix of stage names and output folders) of "test" or "dev"."""
        if split == "test":
            return self.test_images, self.test_labels, self.test, ""
        return self.out / "dev" / "images", self.out / "dev" / "labels", self.dev, "_dev"

    def predict(self, m: Method, split: str = "test") -> Callable[[dict], dict]:
        images, _, cases, suffix = self.split_folders(split)

        def run(entry: dict) -> dict:
            final = self.out / f"predictions{suffix}" / m.key
            tmp = self.out / f"predictions{suffix}" / f".{m.key}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(exist_ok=True)
            cmd = ["nnUNetv2_predict", "-i", str(images), "-o", str(tmp), "-d", self.dataset,
                   "-c", self.configuration, "-tr", self.trainer(m), "-p", PLANS,
                   "-f", str(m.fold), "-chk", "checkpoint_final.pth", "-device", self.args.device,
                   "-npp", str(self.args.np), "-nps", str(self.args.np)] + ([] if self.args.tta else ["--disable_tta"])
            stage = f"predict{suffix}_{m.key}"
            seconds = self.run_cmd(stage, cmd)
            missing = [c for c in cases if not (tmp / f"{c}{self.ending}").is_file()]
            if missing:
                raise StageError(f"stage '{stage}': no prediction for {missing[:5]}. "
                                 f"See {self.logs / f'{stage}.log'}.")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            return {"command": shlex.join(cmd), "wall_s": round(seconds, 2), "folder": str(final)}
        return run

    def evaluate(self, m: Method, split: str = "test") -> Callable[[dict], dict]:
        _, labels, _, suffix = self.split_folders(split)

        def run(entry: dict) -> dict:
            from ad_nnunet.evaluation.evaluate import foreground_labels
            from ad_nnunet.evaluation.metrics import evaluate_folders, write_reports

            results = evaluate_folders(self.out / f"predictions{suffix}" / m.key, labels,
                                       foreground_labels(self.dataset_json, str(self.raw / "dataset.json")),
                                       file_ending=self.ending, domains=self.domains, num_processes=self.args.np,
                                       progress=False)
            paths = write_reports(results, self.out / f"evaluation{suffix}" / m.key)
            fg = results["summary"]["foreground_mean"]
            return {"n_cases": results["summary"]["n_cases"], "json": str(paths["json"]),
                    "metrics": {k: {"mean": None if math.isnan(v["mean"]) else v["mean"],
                                    "std": None if math.isnan(v["std"]) else v["std"], "n": v["n"]}
                                for k, v in fg.items()}}
        return run

    # ---- report ------------------------------------------------------------------------------------------------
    def report(self, entry: dict) -> dict:
        st = self.state["stages"]
        b = self.budget
        rows = []
        for m in self.methods:
            metrics = st[f"evaluate_{m.key}"]["metrics"]
            train, pred = st[f"train_{m.key}"], st[f"predict_{m.key}"]
            label = m.label
            if b.warm_start_steps and m.key in ("ad", WARM_SOURCE.key):
                label += (f", {b.run_steps(m.key)} steps" if m.key != "ad" else
                          f" (warm start: {b.run_steps(WARM_SOURCE.key)} nnU-Net + {b.run_steps('ad')} A&D steps)")
            elif m.key in self.starts:
                label += f" ({b.run_steps(self.starts[m.key])} + {b.run_steps(m.key)} steps)"
            elif b.finetune_steps and m.key in ("labeled_only", FULL_SOURCE.key):
                label += f", {b.run_steps(m.key)} steps"
            rows.append({"key": m.key, "method": label, "trainer": self.trainer(m), "fold": m.fold,
                         "optimizer_steps": b.run_steps(m.key),
                         "training_data": m.data, "metrics": metrics, "train_wall_s": train["wall_s"],
                         "train_epoch_time_s": train.get("epoch_time_s"), "predict_wall_s": pred["wall_s"],
                         "skipped_steps": train.get("skipped_steps"), "train_attempts": len(train["attempts_s"]),
                         "model_folder": str(self.model_folder(m))})
        class_names = self.class_names()
        for row in rows:
            row.update(self._breakdown(st[f"evaluate_{row['key']}"], class_names))
        dice = {r["key"]: r["metrics"]["Dice"]["mean"] for r in rows}
        gap, gap_reason = report_gap_closure(dice, self.baseline)
        paired = {f"ad_vs_{other}": self.paired("ad", other)
                  for other in dict.fromkeys((self.baseline, "labeled_only", WARM_SOURCE.key)) if other in dice}
        dev = {m.key: {"Dice": st[f"evaluate_dev_{m.key}"]["metrics"]["Dice"],
                       "paired_vs_baseline": None if m.key == self.baseline else self.paired(m.key, self.baseline,
                                                                                               "dev")}
               for m in self.dev_methods} if self.dev else None
        report = {
            "dataset": self.dataset, "configuration": self.configuration, "preset": self.args.preset,
            "setting": self.args.setting, "class_names": {str(k): v for k, v in class_names.items()},
            "domains": None if self.domains is None else {
                "source": "dataset.json ad_domains",
                # True / False as dataset.json states it; None where it does not say
                "simulated": None if "ad_simulated" not in self.dataset_json
                else bool(self.dataset_json["ad_simulated"]),
                "test_cases_per_domain": {d: sum(self.domains[c] == d for c in self.test)
                                          for d in sorted({self.domains[c] for c in self.test})}},
            "ad_progress": self.copy_ad_progress(),
            "baseline": self.baseline, "paired": paired,
            "equal_wall_time": self.equal_wall_time(rows, self.starts.get("ad")),
            "dev": None if dev is None else {"cases": self.dev, "methods": dev},
            "budget": {"requested_steps": b.steps, "num_epochs": b.num_epochs, "warm_start_steps": b.warm_start_steps,
                       "finetune_steps": b.finetune_steps, "finetune_lr": b.finetune_lr,
                       "iterations_per_epoch": b.iterations_per_epoch, "optimizer_steps_per_run": b.total_steps,
                       "val_iterations_per_epoch": b.val_iterations, "ddim_steps": b.ddim_steps},
            "split": {"labeled": self.labeled, "unlabeled": self.unlabeled, "test": self.test,
                      "imagesUnlabeled": self.extra_unlabeled, "imagesTr_unused": self.unused},
            "methods": rows, "gap_closure": gap, "gap_closure_reason": gap_reason,
            "ad_beats_baseline": None if None in (dice["ad"], dice[self.baseline])
            else dice["ad"] > dice[self.baseline],
            "paper_LA": {split: {k: dict(zip(("Dice", "Jaccard", "HD95", "ASD"), v)) for k, v in d.items()}
                         for split, d in PAPER_LA.items()},
            "machine": machine_info(self.args.device), "commit": git_commit(), "command": self.state["invocations"][0],
            "invocations": self.state["invocations"], "tta": self.args.tta, "note": self.args.note,
            "env": {k: self.env()[k] for k in ("nnUNet_def_n_proc", "nnUNet_n_proc_DA", "nnUNet_compile")},
        }
        _atomic_write_json(self.out / "report.json", report)
        _atomic_write_text(self.out / "report.md", render_markdown(report))
        return {"report": str(self.out / "report.md")}

    def paired(self, key: str, other: str, split: str = "test") -> Optional[dict]:
        """Per-case paired difference ``key - other`` (foreground-mean Dice) with its bootstrap interval."""
        from ad_nnunet.evaluation.paired import paired_bootstrap, per_case_foreground_mean

        suffix = self.split_folders(split)[3]
        scores = [per_case_foreground_mean(json.loads(Path(self.state["stages"][f"evaluate{suffix}_{k}"]["json"])
                                                      .read_text(encoding="utf-8"))) for k in (key, other)]
        return paired_bootstrap(*scores)

    @staticmethod
    def equal_wall_time(rows: List[dict], ad_start: Optional[str] = None) -> Optional[dict]:
        """A&D's training time (the run it starts from included) against labeled-only nnU-Net's time per step: how many
        steps labeled-only nnU-Net would have had in the same time (an estimate from its measured speed). Times are
        nnU-Net's epoch times (training and validation iterations, without process start-up), which are also
        correct for runs that were interrupted and resumed."""
        by_key = {r["key"]: r for r in rows}
        if "ad" not in by_key or "labeled_only" not in by_key or not by_key["labeled_only"]["train_epoch_time_s"]:
            return None
        ad_s = sum(by_key[k]["train_epoch_time_s"] or 0.0 for k in ("ad", ad_start) if k in by_key)
        lab = by_key["labeled_only"]
        steps = ad_s / (lab["train_epoch_time_s"] / lab["optimizer_steps"])
        return {"ad_train_s": round(ad_s, 1), "labeled_only_train_s": lab["train_epoch_time_s"],
                "labeled_only_steps": lab["optimizer_steps"], "labeled_only_steps_in_ad_time": int(steps)}

    def class_names(self) -> Dict[int, str]:
        """``{label: name}`` of the scored foreground labels, from dataset.json's ``labels``."""
        from ad_nnunet.evaluation.evaluate import foreground_labels

        names = {v: k for k, v in self.dataset_json["labels"].items() if isinstance(v, int)}
        return {lab: names[lab] for lab in foreground_labels(self.dataset_json, str(self.raw / "dataset.json"))}

    @staticmethod
    def _breakdown(evaluation: dict, class_names: Dict[int, str]) -> dict:
        """Per-class and per-domain summaries of one method, read from its evaluation JSON (write_reports)."""
        results = json.loads(Path(evaluation["json"]).read_text(encoding="utf-8"))

        def per_class(summary: dict) -> dict:
            return {name: {**{k: summary["per_class"][str(lab)][k] for k in ("Dice", "Jaccard", "HD95", "ASD")},
                           "label": lab, "n_empty": summary["per_class"][str(lab)]["n_empty"]}
                    for lab, name in class_names.items()}

        per_domain = None
        if "per_domain" in results:
            per_domain = {d: {"n_cases": s["n_cases"], **s["foreground_mean"], "per_class": per_class(s)}
                          for d, s in results["per_domain"].items()}
        return {"per_class": per_class(results["summary"]), "per_domain": per_domain}

    def copy_ad_progress(self) -> Dict[str, Optional[str]]:
        """Copy each A&D run's ad_progress.png (losses, mu, DRS difficulty weights per class per epoch) into --out;
        returns ``{method key: file name in --out, or None when the run wrote none}``."""
        copied = {}
        for m in self.methods:
            if m.kind != "ad":
                continue
            src = self.model_folder(m) / AD_PROGRESS
            name = AD_PROGRESS if m.key == "ad" else f"{m.key}_{AD_PROGRESS}"
            copied[m.key] = None
            if src.is_file():
                tmp = self.out / f".{name}.tmp{os.getpid()}"
                shutil.copy2(src, tmp)
                os.replace(tmp, self.out / name)
                copied[m.key] = name
        return copied

    def run(self) -> Path:
        self.log(f"benchmark {self.dataset} ({self.configuration}), runs {', '.join(m.key for m in self.methods)}, "
                 f"{self.budget.total_steps} optimizer steps per run, out {self.out}")
        self.stage("plan", self.plan)
        self.stage("preprocess", self.preprocess)
        self.stage("settings", self.settings)
        self.stage("preprocess_unlabeled", self.preprocess_unlabeled)
        self.stage("trainers", self.write_trainers)
        for m in sorted(self.methods, key=lambda m: m.key in self.starts):  # a warm start needs its source
            if m.key in self.starts:
                self.stage(self.warm_start_stage(m), self.warm_start(m))
            self.stage(f"train_{m.key}", self.train(m))
        for m in self.methods:
            self.stage(f"predict_{m.key}", self.predict(m))
        for m in self.methods:
            self.stage(f"evaluate_{m.key}", self.evaluate(m))
        if self.dev:
            self.stage("dev_folders", self.dev_folders)
            for m in self.dev_methods:
                self.stage(f"predict_dev_{m.key}", self.predict(m, "dev"))
                self.stage(f"evaluate_dev_{m.key}", self.evaluate(m, "dev"))
        self.stage("report", self.report)
        self.log(f"report: {self.out / 'report.md'}")
        return self.out / "report.md"


def _pct(stat: dict) -> str:
    return "n/a" if stat["mean"] is None else f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def _mm(stat: dict) -> str:
    return "n/a" if stat["mean"] is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


# One line under the title of a non-ssl report: what the three runs mean in that setting.
SETTING_ROLES = {
    "imbssl": "Class-imbalanced SSL: few labeled cases, classes of very different size; the per-class tables show "
              "whether the small classes profit.",
    "uda": "UDA: labeled = source-domain cases, unlabeled = target-domain training cases (images only for A&D), "
           "test = held-out target-domain cases. 'labeled only' = source only; 'all labels' = source + target "
           "labels (an oracle).",
    "semidg": "SemiDG: labeled and unlabeled cases come from the training domains; the test domain is unseen (not in "
              "training, planning or fingerprint). 'all labels' = every training-domain label.",
}


def _paired_line(p: Optional[dict], what: str) -> str:
    if p is None:
        return f"- {what}: no case scored by both."
    lo, hi = p["ci95"]
    verdict = ("above 0: larger than the noise" if lo > 0 else "below 0" if hi < 0 else "includes 0: not "
               "distinguishable from noise")
    return (f"- {what}: **{100 * p['mean_diff']:+.2f}** Dice points per case, bootstrap 95 % interval "
            f"[{100 * lo:+.2f}, {100 * hi:+.2f}] ({verdict}); better on {p['wins']} of {p['n']} cases, worse on "
            f"{p['losses']}.")


def labels_of(r: dict) -> Dict[str, str]:
    """``{method key: its row's label}`` of a report."""
    return {row["key"]: row["method"] for row in r["methods"]}


def _paired_markdown(r: dict) -> List[str]:
    """Paired per-case differences, the equal-wall-time line and the development-case table."""
    labels = labels_of(r)
    lines = []
    paired = r.get("paired") or {}
    if paired:
        lines += ["", "## Paired comparison on the test cases", "",
                  "Per-case difference of the foreground-mean Dice, mean over cases, percentile bootstrap "
                  "(10,000 resamples of the cases, seed 0)."]
        for key, p in paired.items():
            other = key.split("_vs_", 1)[1]
            lines.append(_paired_line(p, f"A&D minus {labels.get(other, other)}"))
    eq = r.get("equal_wall_time")
    if eq:
        lines += ["", f"Equal wall time: A&D trained for {_fmt_time(eq['ad_train_s'])} (sum of epoch times, warm "
                  f"source included); "
                  f"labeled-only nnU-Net took {_fmt_time(eq['labeled_only_train_s'])} for "
                  f"{eq['labeled_only_steps']} steps, so in A&D's time it would have had about "
                  f"{eq['labeled_only_steps_in_ad_time']} steps (an estimate from its measured speed, not a run)."]
    dev = r.get("dev")
    if dev:
        lines += ["", f"## Development cases ({len(dev['cases'])} unlabeled training cases, for decisions)", "",
                  "The first unlabeled cases of the split: A&D saw their images (never their labels); the all-labels "
                  "run trained on their labels and is not scored here. Methods are chosen on these, never on the "
                  "test cases.", "", "| Method | Dice (%) |", "|---|---|"]
        for key, entry in dev["methods"].items():
            lines.append(f"| {labels.get(key, key)} | {_pct(entry['Dice'])} |")
        baseline = r.get("baseline", "labeled_only")
        for key, entry in dev["methods"].items():
            if entry["paired_vs_baseline"] is not None:
                lines.append(_paired_line(entry["paired_vs_baseline"],
                                          f"dev: {labels.get(key, key)} minus {labels.get(baseline, baseline)}"))
    return lines


def _breakdown_markdown(r: dict) -> List[str]:
    """Per-class Dice/HD95 tables, the per-domain table and the link to A&D's difficulty-weight plot."""
    rows = r["methods"]
    names = list(r["class_names"].values())
    lines = []
    for metric, unit, fmt in (("Dice", "%", _pct), ("HD95", "mm", _mm)):
        lines += ["", f"## Per class: {metric} ({unit})", "",
                  "| Method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for row in rows:
            lines.append(f"| {row['method']} | " + " | ".join(fmt(row["per_class"][n][metric]) for n in names) + " |")
    empty = {n: max(row["per_class"][n]["n_empty"] for row in rows) for n in names}
    if any(empty.values()):
        lines += ["", "Cases where both prediction and reference are empty for a class are excluded from that "
                  "class's mean (at most " + ", ".join(f"{n}: {k}" for n, k in empty.items() if k) + " per method)."]
    if r.get("domains"):
        dom = r["domains"]
        lines += ["", "## Per domain" + (" (SIMULATED domains)" if dom["simulated"] else ""), "",
                  "Test cases grouped by dataset.json `ad_domains`"
                  + {True: " (simulated scanner shifts)", False: " (real domains)", None: ""}[dom["simulated"]]
                  + "; mean ± std over the domain's cases of the per-case foreground mean over classes.", "",
                  "| Domain | test cases | Method | Dice (%) | HD95 (mm) |", "|---|---|---|---|---|"]
        for d, n in dom["test_cases_per_domain"].items():
            for row in rows:
                pd = (row["per_domain"] or {}).get(d)
                cells = (_pct(pd["Dice"]), _mm(pd["HD95"])) if pd else ("n/a (evaluated without domains)", "n/a")
                lines.append(f"| {d} | {n} | {row['method']} | {cells[0]} | {cells[1]} |")
    progress = r.get("ad_progress") or {}
    if progress:
        legend = ", ".join(["0 = background"] + [f"{k} = {n}" for k, n in r["class_names"].items()])
        lines += ["", "## A&D training curves", "", f"In the plot, class k is label k ({legend}).", ""]
        for row in rows:
            if row["key"] in progress:
                name = progress[row["key"]]
                lines.append(f"- {row['method']}: [difficulty weights trajectory]({name}) (`{name}`: losses, mu, "
                             f"pseudo-label foreground fraction and the DRS difficulty weights per class per epoch)"
                             if name else f"- {row['method']}: no {AD_PROGRESS} in {row['model_folder']}")
    return lines


def render_markdown(r: dict) -> str:
    b, s, mach = r["budget"], r["split"], r["machine"]
    setting = r.get("setting", "ssl")
    simulated = bool(r.get("domains") and r["domains"]["simulated"])
    lines = [f"# {SETTING_TITLES[setting]}: {r['dataset']} ({r['configuration']})"
             + (" on SIMULATED domains" if simulated else ""), ""]
    if simulated:
        lines += ["> **SIMULATED domains.** The domains of this dataset are simulated scanner shifts (dataset.json "
                  "`\"ad_simulated\": true`; parameters in the dataset's `domain_shift_recipe.json`), not real "
                  "scanners or vendors. Every number below was measured on simulated domains and must be reported "
                  "as such.", ""]
    if setting in SETTING_ROLES:
        lines += [SETTING_ROLES[setting], ""]
    lines += [f"{len(s['test'])} held-out test cases; mean ± std over cases; Dice/Jaccard in %, distances in mm at "
              f"the test labels' own (original) resolution. Final checkpoint of every run, "
              f"{'with mirroring test-time augmentation' if r['tta'] else 'no test-time augmentation'}.", "",
              "| Method | Dice (%) | Jaccard (%) | HD95 (mm) | ASD (mm) | train wall time | predict time |",
              "|---|---|---|---|---|---|---|"]
    for row in r["methods"]:
        m = row["metrics"]
        lines.append(f"| {row['method']} | {_pct(m['Dice'])} | {_pct(m['Jaccard'])} | {_mm(m['HD95'])} | "
                     f"{_mm(m['ASD'])} | {_fmt_time(row['train_wall_s'])} | {row['predict_wall_s']:.0f} s |")
    lines += _paired_markdown(r)
    lines += _breakdown_markdown(r)
    d = {row["key"]: row["metrics"]["Dice"]["mean"] for row in r["methods"]}
    lines += ["", "## Gap closure", ""]
    baseline = r.get("baseline", "labeled_only")
    formula = f"Gap closure (Dice_A&D - Dice_{baseline}) / (Dice_all_labels - Dice_{baseline})"
    if r["gap_closure"] is None:
        lines.append(f"{formula}: {r['gap_closure_reason']}.")
    else:
        caution = f" Caution, {r['gap_closure_reason']}." if r.get("gap_closure_reason") else ""
        lines.append(f"{formula} = **{100 * r['gap_closure']:.1f} %**.{caution}")
    if r["ad_beats_baseline"] is False:
        lines.append(f"\n**A&D does NOT beat {labels_of(r)[baseline]} here** (Dice {100 * d['ad']:.2f} % vs. "
                     f"{100 * d[baseline]:.2f} %).")
    if setting == "ssl":
        lines += ["", "## The paper's LA numbers (for orientation only)", "",
                  "| Split | Method | Dice (%) | Jaccard (%) | HD95 | ASD |", "|---|---|---|---|---|---|"]
        for split, methods in r["paper_LA"].items():
            for name, v in methods.items():
                cells = ["–" if v[k] is None else f"{v[k]:.2f}" for k in ("Dice", "Jaccard", "HD95", "ASD")]
                lines.append(f"| {split} | {name} | " + " | ".join(cells) + " |")
        lines += ["", "Paper gap closure at 10 %: (90.31 - 82.74) / (91.47 - 82.74) = 86.7 % (V-Net baselines). "
                  "Not comparable one to one: the paper trains for tens of thousands of steps, tests on the 20 "
                  "official test cases (here: a hold-out of training cases), and reports HD95/ASD as voxel distances "
                  "(here: mm; on LA's 0.625 mm grid, 1 voxel = 0.625 mm)."]
    lines += ["", "## Budget", "",
              f"- Requested {b['requested_steps']} optimizer steps; every run trains {b['num_epochs']} epochs x "
              f"{b['iterations_per_epoch']} iterations = **{b['optimizer_steps_per_run']} optimizer steps** "
              f"(one step = one labeled batch; A&D adds one unlabeled batch and {b['ddim_steps']} DDIM passes "
              f"without gradient per step)."
              + (f" With warm start, A&D's total is the same: nnU-Net on the labeled cases for "
                 f"{b['optimizer_steps_per_run'] - b['warm_start_steps']} steps, then {b['warm_start_steps']} A&D "
                 f"steps from that model (`adnnunet_warm_start`, then `nnUNetv2_train ... --c`)."
                 if b.get("warm_start_steps") else "")
              + (f" With fine-tuning, labeled-only (and all-labels) nnU-Net train {b['optimizer_steps_per_run']} "
                 f"steps; then A&D, the matched control (nnU-Net alone on the labeled cases) and the all-labels "
                 f"model each continue that model for {b['finetune_steps']} more steps at learning rate "
                 f"{b['finetune_lr']:g} (`adnnunet_warm_start`, then `nnUNetv2_train ... --c`)."
                 if b.get("finetune_steps") else ""),
              f"- {b['val_iterations_per_epoch']} validation iterations per epoch on the labeled cases (logged only; "
              f"no checkpoint selection). nnU-Net's final validation is skipped: the benchmark evaluates "
              f"checkpoint_final.pth on the hold-out test folder instead.",
              "- Train wall time: the whole `nnUNetv2_train` process (start-up, data loaders, training, "
              "checkpoints), summed over resumed attempts; predict time: the whole `nnUNetv2_predict` process.",
              f"- Environment: " + ", ".join(f"{k}={v}" for k, v in r["env"].items()) + "."]
    for row in r["methods"]:
        extra = f", {row['skipped_steps']} non-finite steps skipped" if row["skipped_steps"] is not None else ""
        if row["train_attempts"] > 1:
            extra += (f"; trained in {row['train_attempts']} attempts (resumed with --c; the wall time of "
                      f"interrupted attempts is not counted, the epoch time covers all epochs)")
        lines.append(f"- {row['method']}: `{row['trainer']}` fold {row['fold']} ({row['training_data']}); "
                     f"epoch time {row['train_epoch_time_s']} s{extra}; model {row['model_folder']}")
    lines += ["", "## Split", "",
              f"- labeled (fold 0 train and validation): {len(s['labeled'])} cases",
              f"- unlabeled (imagesTr cases with hidden labels; A&D sees their images only): {len(s['unlabeled'])}"
              + (f", plus {len(s['imagesUnlabeled'])} imagesUnlabeled cases" if s["imagesUnlabeled"] else ""),
              f"- test (hold-out, never in planning, fingerprint or training): {len(s['test'])}: "
              + ", ".join(s["test"]),
              "- splits_final.json: fold 0 = {train: labeled, val: labeled} (written by `adnnunet_make_settings "
              "--setting ssl`, the paper's protocol: validation measures training fit, not generalization); fold 1 "
              "= {train: labeled + unlabeled, val: labeled}, appended by this benchmark for the fully supervised "
              "upper bound (it is the only run that reads the unlabeled cases' labels)."]
    if s["imagesTr_unused"]:
        lines.append(f"- imagesTr cases in neither list (unused): {len(s['imagesTr_unused'])}")
    lines += ["", "## Machine and provenance", "",
              f"- CPU: {mach['cpu']}, {mach['cores']} cores ({mach['usable_cores']} usable); device: {mach['device']}"
              + (f" ({mach['gpu']})" if mach.get("gpu") else ""),
              f"- Python {mach['python']}, torch {mach['torch']}, nnunetv2 {mach['nnunetv2']}",
              f"- commit: {r['commit']}", f"- command: `{r['command']}`"]
    if len(r["invocations"]) > 1:
        lines.append(f"- resumed {len(r['invocations']) - 1} time(s)")
    if r["note"]:
        lines.append(f"- note: {r['note']}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="raw dataset name or id (nnU-Net raw layout)")
    p.add_argument("--labeled", required=True, type=Path, help="text file: labeled imagesTr case ids")
    p.add_argument("--unlabeled", required=True, type=Path, help="text file: imagesTr case ids whose labels are "
                                                                 "hidden from A&D (used by the all-labels run)")
    p.add_argument("--test_images", required=True, type=Path, help="hold-out images (<case>_0000<ending>)")
    p.add_argument("--test_labels", required=True, type=Path, help="hold-out reference labels")
    p.add_argument("--preset", help="plans preset (e.g. la_cpu, tiny); optional")
    p.add_argument("-c", "--configuration", help="default: the preset's configuration, else 3d_fullres")
    p.add_argument("--steps", type=int, required=True, help="optimizer-step budget, the same for every run")
    p.add_argument("--iterations_per_epoch", type=int, default=50)
    p.add_argument("--ddim_steps", type=int, default=10, help="A&D's DDIM steps for its pseudo-labels")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--out", required=True, type=Path, help="output folder (state, logs, predictions, report)")
    p.add_argument("--np", type=int, default=2, help="processes for preprocessing, prediction and evaluation")
    p.add_argument("--n_proc_da", type=int, default=None,
                   help="nnU-Net data augmentation workers per loader (default: $nnUNet_n_proc_DA, else --np)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                   help="mirroring test-time augmentation (default: off)")
    p.add_argument("--note", default="", help="free text copied into the report (e.g. 'shared machine')")
    p.add_argument("--setting", choices=tuple(SETTING_TITLES), default="ssl",
                   help="label for the report titles only (ssl, imbssl, uda, semidg; default ssl); the runs, the "
                        "splits and the metrics do not depend on it")
    p.add_argument("--warm_start_steps", type=int, default=0,
                   help="A&D starts from nnU-Net trained on the labeled cases for steps - W steps and trains W "
                        "steps (adnnunet_warm_start); 0 (default): A&D trains all steps from scratch")
    p.add_argument("--finetune_steps", type=int, default=0,
                   help="fine-tuning protocol: labeled-only nnU-Net trains --steps, then A&D continues that model for "
                        "F steps and so does nnU-Net alone (the matched control A&D is compared with; the all-labels "
                        "model likewise); 0 (default): off")
    p.add_argument("--finetune_lr", type=float, default=1e-3,
                   help="learning rate of the --finetune_steps runs, A&D and nnU-Net alike (default 1e-3)")
    p.add_argument("--dev_cases", type=int, default=0,
                   help="also score every run but the all-labels one on the first K unlabeled cases (development "
                        "cases for decisions; default 0)")
    p.add_argument("--ad_trainer", default="ADTrainer", metavar="TRAINER",
                   help="the A&D trainer class of the ad method (default ADTrainer), e.g. ADTrainer_finetune with "
                        "--warm_start_steps: its hyperparameters with the benchmark's budget")
    p.add_argument("--extra_trainers", nargs="+", default=[], metavar="TRAINER",
                   help="more runs with the same budget on fold 0, one per trainer class (nnU-Net or A&D variants, "
                        "e.g. nnUNetTrainerNoDeepSupervision ADTrainer_paper): the rungs of an attribution ladder")
    p.add_argument("--methods", nargs="+", choices=METHOD_KEYS, default=list(METHOD_KEYS),
                   help="runs to train, predict, evaluate and report (default: all three); ad and labeled_only are "
                        "required, drop full (the all-labels upper bound, needed for the gap closure) when time is "
                        "short: --methods ad labeled_only")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.n_proc_da is None:
        args.n_proc_da = int(os.environ.get("nnUNet_n_proc_DA", args.np))
    script = os.path.relpath(__file__) if not os.path.relpath(__file__).startswith("..") else __file__
    command = shlex.join(["python", script] + argv)
    try:
        Benchmark(args, command).run()
    except (ADInputError, StageError) as e:
        print(f"run_ssl_benchmark: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ADInputError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
