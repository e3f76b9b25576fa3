"""The benchmark's runs (:class:`Method`), its step budget (:class:`Budget`) and the trainer class name of each run."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

from ad_nnunet.errors import ADInputError

# the trainer class a run of each kind subclasses unless it names another (Method.base)
DEFAULT_BASE = {"ad": "ADTrainer", "nnunet": "nnUNetTrainer"}


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    kind: str  # "ad" or "nnunet"
    fold: int
    data: str
    base: Optional[str] = None  # trainer class the run subclasses (None: ADTrainer or nnUNetTrainer, by kind)
    base_module: Optional[str] = None  # where that class is defined

    @property
    def base_class(self) -> str:
        """The name of the trainer class the run subclasses."""
        return self.base or DEFAULT_BASE[self.kind]


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


def interpolation_key(a: float) -> str:
    """The name (stages, folders, report) of A&D's model exported at interpolation weight ``a``
    (--dev_interpolations)."""
    return f"ad_a{a:g}"


# The comparison the benchmark exists for; only the upper bound ("full") may be left out.
REQUIRED_METHODS = ("ad", "labeled_only")


@dataclass(frozen=True)
class Budget:
    """Every run: ``num_epochs * iterations_per_epoch`` optimizer steps, ``num_epochs = ceil(steps / I)``.

    With ``warm_start_steps`` W > 0, A&D's total is still ``steps``: nnU-Net trains ``steps - W`` steps on the
    labeled cases (the warm source), then A&D trains W steps from that model.

    With ``finetune_steps`` F > 0, labeled-only and all-labels nnU-Net train ``steps``; then the runs in
    ``finetuned`` (A&D, the matched control, the all-labels model, and A&D variants of ``--extra_trainers``) each
    train F more steps at ``finetune_lr`` (totals ``steps + F``)."""
    steps: int
    iterations_per_epoch: int
    ddim_steps: int
    warm_start_steps: int = 0
    finetune_steps: int = 0
    finetune_lr: float = 1e-3
    finetuned: tuple = FINETUNED

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
        if self.finetune_steps and method_key in self.finetuned:
            return self.finetune_steps
        return self.total_steps

    def run_epochs(self, method_key: str) -> int:
        """Epochs of one run (its trainer's num_epochs, and what its checkpoint must show after training)."""
        return self.epochs(self.run_steps(method_key))

    def lr(self, method_key: str) -> Optional[float]:
        """The learning rate a run must use instead of its trainer's own (the fine-tuning runs), else None."""
        return self.finetune_lr if self.finetune_steps and method_key in self.finetuned else None

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
        base = base or DEFAULT_BASE[kind]
        return f"Bench{base}_{tag}_ddim{self.ddim_steps}" if kind == "ad" else f"Bench{base}_{tag}"

    def run_trainer(self, m: Method) -> str:
        """The trainer class name of run ``m``: its steps, its learning rate and its base class in the name."""
        return self.trainer_name(m.kind, self.run_steps(m.key), m.base, self.lr(m.key))
