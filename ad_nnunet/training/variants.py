"""Trainer variants, and the one way to make one: ``make_variant`` for settings, a subclass for a hook.

A variant that changes settings (attributes a trainer sets in ``__init__``: schedule, learning rate, DDIM steps, ...)
is one line, for ADTrainer and its variants as for nnU-Net's own trainers:

    ADTrainer_demo = make_variant("ADTrainer_demo", ADTrainer, num_epochs=20, ddim_steps=4)
    nnUNetTrainer_8epochs = make_variant("nnUNetTrainer_8epochs", nnUNetTrainer, num_epochs=8)

The values are checked here (SETTINGS), when the line runs. In a file in a folder on ``nnUNet_extTrainer`` the same
line makes a trainer that ``nnUNetv2_train -tr NAME`` finds. A variant that changes behaviour overrides one hook of
ADTrainer (listed in ad_trainer.py), as nnU-Net's ``nnUNetTrainerNoDA`` overrides one method: the paper's recipe and
its ablations below.
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, Optional, Tuple

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from ad_nnunet.errors import ADInputError
from ad_nnunet.method.rs_fusion import argmax_pseudo_label
from ad_nnunet.method.strong_view import strong_view
from ad_nnunet.method.svda import ALL_OPS
from ad_nnunet.training.ad_trainer import ADTrainer
from ad_nnunet.training.diffusion_stream import NoDiffusionStream

# ---- settings: what a variant may set, and the values each accepts ------------------------------------------------
Accepts = Tuple[str, Callable[[object], bool]]  # (the accepted values in words, for the error message; the test)


def _int(what: str, test: Callable[[int], bool]) -> Accepts:
    return what, lambda v: isinstance(v, int) and not isinstance(v, bool) and test(v)


def _number(what: str, test: Callable[[float], bool]) -> Accepts:
    return what, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and test(v)


def _or_none(accepts: Accepts) -> Accepts:
    what, test = accepts
    return what, lambda v: v is None or test(v)


COUNT = _int("an int >= 1", lambda v: v >= 1)
FRACTION = _number("a number in [0, 1]", lambda v: 0 <= v <= 1)
POSITIVE = _number("a number > 0", lambda v: v > 0)
NON_NEGATIVE = _number("a number >= 0", lambda v: v >= 0)
BOOL: Accepts = ("True or False", lambda v: isinstance(v, bool))

# attributes nnUNetTrainer.__init__ sets, which every trainer reads after it
NNUNET_SETTINGS: Dict[str, Accepts] = {
    "num_epochs": COUNT, "num_iterations_per_epoch": COUNT, "num_val_iterations_per_epoch": COUNT, "save_every": COUNT,
    "initial_lr": POSITIVE, "weight_decay": NON_NEGATIVE, "oversample_foreground_percent": FRACTION,
    "probabilistic_oversampling": BOOL,
}
# nnU-Net's deep supervision; an ADTrainer keeps it off (D_psi's is the class attribute psi_deep_supervision)
PLAIN_NNUNET_SETTINGS: Dict[str, Accepts] = {"enable_deep_supervision": BOOL}
# A&D's, set in ADTrainer.__init__
AD_SETTINGS: Dict[str, Accepts] = {
    "ema_momentum": FRACTION, "unlabeled_loss_weight": NON_NEGATIVE,
    "mu_rampup_epochs": _or_none(_number("None (the whole run) or a number >= 0", lambda v: v >= 0)),
    "diffusion_timesteps": _int("an int >= 20", lambda v: v >= 20),  # fewer steps make the rescaled betas > 1
    "ddim_steps": COUNT,
    "svda_num_ops": _int(f"an int in [1, {len(ALL_OPS)}]", lambda v: 1 <= v <= len(ALL_OPS)),
    "svda_p_op": FRACTION, "gumbel_tau": POSITIVE,
    "smoothing_kernel_size": _int("an odd int >= 1", lambda v: v >= 1 and v % 2 == 1),
    "smoothing_sigma": POSITIVE, "seed": _int("an int >= 0", lambda v: v >= 0),
    "final_interpolation": _or_none(FRACTION), "pseudo_label_min_confidence": _or_none(FRACTION),
    "pseudo_label_ignore_fraction": _or_none(FRACTION), "theta_supervised_weight": NON_NEGATIVE,
    "start_model_vote": NON_NEGATIVE,
}


def settings_of(base: type) -> Dict[str, Accepts]:
    """The settings a variant of trainer class ``base`` may set."""
    return {**NNUNET_SETTINGS, **(AD_SETTINGS if issubclass(base, ADTrainer) else PLAIN_NNUNET_SETTINGS)}


def make_variant(name: str, base: type, /, **overrides) -> type:
    """The trainer class ``name``: ``base`` with the settings ``overrides``, applied when it is constructed.

    Bind it to the same name at module level (``Name = make_variant("Name", base, ...)``), in this module or in a
    file on ``nnUNet_extTrainer``: its ``__module__`` is the calling module, so nnU-Net's trainer lookup and pickle
    find it. ``base`` is ADTrainer, one of its variants, nnUNetTrainer or one of nnU-Net's trainer variants. The
    settings of all make_variant classes on the way down from ``base`` add up in the class's ``overrides`` (the
    later one wins); an ADTrainer applies them at the end of its own settings (before seeding, so ``seed`` counts),
    an nnU-Net trainer right after its ``__init__``.

    Raises:
        ADInputError: ``name`` is not an identifier, ``base`` is not an nnU-Net trainer class, or a setting is not
            one ``base`` has (``settings_of``) or not a value it accepts; the message names it and the fix.
    """
    where = f"make_variant({name!r}, {getattr(base, '__name__', repr(base))})"
    if not (isinstance(name, str) and name.isidentifier()):
        raise ADInputError(f"{where}: the name is not a Python identifier, so nnU-Net could not find the trainer by "
                           f"it. Fix: use letters, digits and underscores, e.g. 'ADTrainer_short'.")
    if not (isinstance(base, type) and issubclass(base, nnUNetTrainer)):
        raise ADInputError(f"{where}: the base is not a trainer class. Fix: pass ADTrainer or one of its variants, "
                           f"nnUNetTrainer or one of nnU-Net's trainer variants.")
    settings = settings_of(base)
    for key, value in overrides.items():
        if key not in settings:
            raise ADInputError(
                f"{where}: {base.__name__} has no setting {key!r}. Fix: use one of {', '.join(sorted(settings))}; "
                f"a change of behaviour (SVDA, DRS, RS, the diffusion stream, the strong view) is a hook: subclass "
                f"and override it, as in ad_nnunet/training/variants.py.")
        what, accepts = settings[key]
        if not accepts(value):
            raise ADInputError(f"{where}: {key}={value!r} is not a valid value. Fix: pass {what}.")
    described = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "its own settings"
    namespace = {"__module__": sys._getframe(1).f_globals.get("__name__", __name__), "__qualname__": name,
                 "__doc__": f"{base.__name__} with {described}.",
                 "overrides": {**getattr(base, "overrides", {}), **overrides}}
    if not hasattr(base, "overrides"):  # a plain nnU-Net trainer: nothing in its __init__ applies them yet
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            # nnU-Net records its init arguments by this signature (my_init_kwargs): it must be nnU-Net's own
            super(variant, self).__init__(plans, configuration, fold, dataset_json, device)
            for key, value in self.overrides.items():
                setattr(self, key, value)

        __init__.__qualname__ = f"{name}.__init__"
        namespace["__init__"] = __init__
    variant = type(name, (base,), namespace)
    return variant


ADTrainer_50epochs = make_variant("ADTrainer_50epochs", ADTrainer, num_epochs=50)  # a fifth of the default budget
# the `adnnunet_demo` schedule: a few minutes on a CPU
ADTrainer_demo = make_variant("ADTrainer_demo", ADTrainer, num_epochs=20, num_iterations_per_epoch=10,
                              num_val_iterations_per_epoch=2, ddim_steps=4)
# for tests and CPU smoke runs: checkpoint every epoch
ADTrainer_tiny = make_variant("ADTrainer_tiny", ADTrainer, num_epochs=2, num_iterations_per_epoch=3,
                              num_val_iterations_per_epoch=1, ddim_steps=2, save_every=1)


# ---- the paper's recipe and its ablations, one hook each ----------------------------------------------------------
class ADTrainer_paper(ADTrainer):
    """The paper's recipe (with the fixes of docs/method.md): D_psi without deep supervision, trained on the
    DRS-weighted Dice+CE (background included), SVDA on labeled and unlabeled batches."""
    psi_deep_supervision = False

    def labeled_augmentation(self, transforms, patch_size):
        return self.svda_augmentation(transforms, patch_size)

    def class_weights(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.core.difficulty.update(logits.detach().float(), labels)


class ADTrainer_noSVDA(ADTrainer_paper):
    """The paper's ablation without SVDA: nnU-Net's default augmentation on labeled and unlabeled batches."""

    def svda_augmentation(self, transforms, patch_size):
        return transforms


class ADTrainer_noDiffusion(ADTrainer_paper):
    """The paper's ablation without the diffusion stream: no D_xi and no L_deno, DRS from D_psi, theta <- EMA of
    psi; so the pseudo-label is argmax(D_psi)."""
    diffusion_stream_class = NoDiffusionStream

    def pseudo_label(self, logits_xi: Optional[torch.Tensor], logits_psi: torch.Tensor,
                     unlabeled: torch.Tensor) -> torch.Tensor:
        return argmax_pseudo_label(logits_psi)


class ADTrainer_noDRS(ADTrainer_paper):
    """The paper's ablation without difficulty-aware re-weighting: D_psi's DiceCE is unweighted."""

    def class_weights(self, logits: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        return None


class ADTrainer_noRS(ADTrainer_paper):
    """The paper's ablation without Reparameterize & Smooth: pseudo-label = plain argmax of the DDIM logits."""

    def pseudo_label(self, logits_xi: torch.Tensor, logits_psi: torch.Tensor, unlabeled: torch.Tensor) -> torch.Tensor:
        return argmax_pseudo_label(logits_xi)


# ---- after a trained nnU-Net model (adnnunet_warm_start) ---------------------------------------------------------
class ADTrainer_strongView(ADTrainer):
    """D_theta learns the pseudo-label on a strong view of the unlabeled batch the teacher saw (strong_view.py): the
    teacher (DDIM on D_xi, and D_psi) labels the batch in a no-gradient pass of its own."""

    def forward_and_pseudo_label(self, image, noisy_labels, unlabeled, logits_xi_u):
        with torch.no_grad():
            pseudo = self.pseudo_label(logits_xi_u, self.network(unlabeled, mode="psi"), unlabeled)
        student, pseudo = strong_view(unlabeled, pseudo)  # global torch RNG: seeded, saved on resume
        return self.network(image, mode="train", **noisy_labels, x_unlabeled=student, psi_on_unlabeled=False,
                            theta_on_labeled=self.theta_on_labeled), pseudo


# A&D as a fine-tuning phase of a trained nnU-Net model (start it with adnnunet_warm_start, then --c): a learning
# rate of 1e-3 (the model is trained already), the unlabeled loss at full weight from the start, the strong view;
# 50 x 150 steps; the saved model halfway between the start and the trained weights (chosen on development cases).
ADTrainer_finetune = make_variant("ADTrainer_finetune", ADTrainer_strongView, initial_lr=1e-3, mu_rampup_epochs=0,
                                  num_epochs=50, final_interpolation=0.5)
# Experimental: L_u only where the RS fusion is confident (rs_fusion.py), to spare the boundaries of scans the warm
# model already segments well. k = 0.8 suits two classes (LA); with more classes kappa stays lower (docs/method.md).
ADTrainer_finetune_confident = make_variant("ADTrainer_finetune_confident", ADTrainer_finetune,
                                            pseudo_label_min_confidence=0.8)
# Experimental: L_u without each unlabeled sample's 5 % least confident voxels (rs_fusion.py), the same for any class
# count; 5 % is about what k = 0.8 leaves out on LA's and k = 0.6 on ACDC's development patches (docs/method.md).
ADTrainer_finetune_dropunsure = make_variant("ADTrainer_finetune_dropunsure", ADTrainer_finetune,
                                             pseudo_label_ignore_fraction=0.05)
# The recommended recipe (chosen on development cases, docs/benchmarks.md): D_theta, the decoder that predicts, also
# learns the labeled batch (as the matched control does) next to the pseudo-labels; in the paper it sees labels only
# through the EMA of D_psi and D_xi, which lags them.
ADTrainer_finetune_thetaSupervised = make_variant("ADTrainer_finetune_thetaSupervised", ADTrainer_finetune,
                                                  theta_supervised_weight=1.0)
# Experimental: the recommended recipe with the warm start's own model voting in RS (rs_fusion.py). On LA's
# development cases the teacher of a finished run labels six of seven typical scans 0.9-4.3 points below the model it
# started from, and D_theta follows it (docs/benchmarks.md, session 16); the start's vote is to hold them there.
ADTrainer_finetune_anchored = make_variant("ADTrainer_finetune_anchored", ADTrainer_finetune_thetaSupervised,
                                           start_model_vote=1.0)
