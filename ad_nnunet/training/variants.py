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


# ---- ablations: one per row of the paper's ablation table -------------------------------------------------------
class ADTrainer_noSVDA(ADTrainer):
    """Without SVDA: nnU-Net's default augmentation on labeled and unlabeled batches."""
    overrides = {"use_svda": False}


class ADTrainer_noDiffusion(ADTrainer):
    """Without the diffusion stream: no D_xi, DRS from D_psi, pseudo-labels argmax(D_psi), theta <- EMA of psi."""
    with_diffusion_stream = False


class ADTrainer_noDRS(ADTrainer):
    """Without difficulty-aware re-weighting: D_psi's DiceCE is unweighted."""
    overrides = {"use_difficulty_weights": False}


class ADTrainer_noRS(ADTrainer):
    """Without Reparameterize & Smooth: pseudo-label = plain argmax of the diffusion stream's DDIM logits."""
    overrides = {"use_rs_fusion": False}
