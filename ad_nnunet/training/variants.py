"""ADTrainer variants, nnU-Net style: each differs from ADTrainer only in the attributes it overrides.

``overrides`` is applied at the end of ``ADTrainer.__init__``; a user variant may equally override ``__init__``
the nnU-Net way and set attributes after ``super().__init__``.
"""
from ad_nnunet.training.ad_trainer import ADTrainer


class ADTrainer_50epochs(ADTrainer):
    """Short schedule (50 x 150 steps, a fifth of the default budget)."""
    overrides = {"num_epochs": 50}


class ADTrainer_demo(ADTrainer):
    """The `adnnunet_demo` schedule: 20 epochs x 10 steps with 4 DDIM steps, a few minutes on a CPU."""
    overrides = {"num_epochs": 20, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 2,
                 "ddim_steps": 4}


class ADTrainer_tiny(ADTrainer):
    """For tests and CPU smoke runs: 2 epochs x 3 steps, 2 DDIM steps, checkpoint every epoch."""
    overrides = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1,
                 "ddim_steps": 2, "save_every": 1}


# ---- the paper's recipe and its ablations -------------------------------------------------------------------------
class ADTrainer_paper(ADTrainer):
    """The paper's recipe (with the fixes of docs/method.md): D_psi without deep supervision, trained on the
    DRS-weighted Dice+CE (background included), SVDA on labeled and unlabeled batches."""
    psi_deep_supervision = False
    overrides = {"svda_labeled": True, "use_difficulty_weights": True}


class ADTrainer_noSVDA(ADTrainer_paper):
    """The paper's ablation without SVDA: nnU-Net's default augmentation on labeled and unlabeled batches."""
    overrides = {**ADTrainer_paper.overrides, "svda_labeled": False, "svda_unlabeled": False}


class ADTrainer_noDiffusion(ADTrainer_paper):
    """The paper's ablation without the diffusion stream: no D_xi, DRS from D_psi, pseudo-labels argmax(D_psi),
    theta <- EMA of psi."""
    with_diffusion_stream = False


class ADTrainer_noDRS(ADTrainer_paper):
    """The paper's ablation without difficulty-aware re-weighting: D_psi's DiceCE is unweighted."""
    overrides = {**ADTrainer_paper.overrides, "use_difficulty_weights": False}


class ADTrainer_noRS(ADTrainer_paper):
    """The paper's ablation without Reparameterize & Smooth: pseudo-label = plain argmax of the DDIM logits."""
    overrides = {**ADTrainer_paper.overrides, "use_rs_fusion": False}


# ---- after a trained nnU-Net model (adnnunet_warm_start) ---------------------------------------------------------
class ADTrainer_finetune(ADTrainer):
    """A&D as a fine-tuning phase of a trained nnU-Net model (start it with adnnunet_warm_start, then --c): a
    learning rate of 1e-3 (the model is trained already), the unlabeled loss at full weight from the start, and
    D_theta learning the pseudo-labels on a strong view of the unlabeled batch (strong_view.py); 50 x 150 steps."""
    overrides = {"initial_lr": 1e-3, "mu_rampup_epochs": 0, "strong_unlabeled_view": True, "num_epochs": 50}
