"""ADTrainer variants, nnU-Net style: each differs from ADTrainer in the attributes it names and nothing else."""
import torch

from ad_nnunet.training.ad_trainer import ADTrainer


class ADTrainer_50epochs(ADTrainer):
    """Short schedule (50 x 150 steps, about a fifth of the default budget)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 50


class ADTrainer_tiny(ADTrainer):
    """For tests and CPU smoke runs: 2 epochs x 3 steps, 2 DDIM steps, checkpoint every epoch."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1
        self.ddim_steps = 2
        self.save_every = 1


class ADTrainer_demo(ADTrainer):
    """The `adnnunet_demo` schedule: 20 epochs x 10 steps with 4 DDIM steps, a few minutes on a CPU."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 20
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 2
        self.ddim_steps = 4


# ---- ablations: one per row of the paper's ablation table -------------------------------------------------------
class ADTrainer_noSVDA(ADTrainer):
    """Without SVDA: nnU-Net's default augmentation on labeled and unlabeled batches."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.use_svda = False


class ADTrainer_noDiffusion(ADTrainer):
    """Without the diffusion stream: no D_xi, DRS from D_psi, pseudo-labels argmax(D_psi), theta <- EMA of psi."""
    with_diffusion_stream = False


class ADTrainer_noDRS(ADTrainer):
    """Without difficulty-aware re-weighting: D_psi's DiceCE is unweighted."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.use_difficulty_weights = False


class ADTrainer_noRS(ADTrainer):
    """Without Reparameterize & Smooth: pseudo-label = plain argmax of the diffusion stream's DDIM logits."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.use_rs_fusion = False
