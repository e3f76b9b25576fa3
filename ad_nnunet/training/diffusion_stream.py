"""The trainer's side of A&D's diffusion stream, and the paper's ablation without it.

In one A&D step (ad_trainer.py) the stream contributes, on the labeled batch (x_l, y_l) and the unlabeled x_u:

    x_t    = q_sample(2 onehot(y_l) - 1, t),  t ~ U{0..T-1}       noisy_labels: D_xi's input in the train forward
    L_deno = DiceCE(D_xi(x_l, x_t, t), y_l)                         loss (x0-prediction)
    DDIM(x_u)                                                       sample: D_xi's x0 logits, the pseudo-label's
                                                                    first input (no gradient)

and D_xi's labeled prediction is what DRS scores (labeled_prediction). ``ADTrainer.diffusion_stream_class`` names the
stream, and the stream names its network (``network_class``), since ADTrainer builds the network as a class method.
``NoDiffusionStream`` is the ablation: ADNetWithoutDiffusion, no noisy labels, no DDIM sample, L_deno = 0, and DRS
scores D_psi instead.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ad_nnunet.method.diffusion import LinearDiffusionSchedule, encode_labels
from ad_nnunet.method.losses import dice_ce_loss
from ad_nnunet.network.ad_net import ADNet, ADNetWithoutDiffusion


class DiffusionStream:
    network_class = ADNet

    def __init__(self, trainer):
        """``trainer``: the ADTrainer this stream belongs to (its network, device, classes and ``ddim_steps``)."""
        self.trainer = trainer
        self.schedule = LinearDiffusionSchedule(trainer.diffusion_timesteps)

    def noisy_labels(self, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """q(x_t | x_0) for x_0 = 2 onehot(y) - 1 at uniformly drawn timesteps (the train forward's x_t and t)."""
        x0 = encode_labels(labels, self.trainer.label_manager.num_segmentation_heads)
        t = self.schedule.sample_timesteps(x0.shape[0], self.trainer.device)
        return {"x_t": self.schedule.q_sample(x0, t), "t": t}

    @torch.no_grad()
    def sample(self, unlabeled: torch.Tensor) -> Optional[torch.Tensor]:
        """DDIM sampling of D_xi's x0 logits on the unlabeled batch (no gradient)."""
        trainer = self.trainer
        shape = (unlabeled.shape[0], trainer.label_manager.num_segmentation_heads, *unlabeled.shape[2:])
        return self.schedule.ddim_sample(
            lambda x_t, t: trainer.network(unlabeled, mode="denoise", x_t=x_t, t=t), shape,
            num_steps=trainer.ddim_steps, device=trainer.device)

    def loss(self, out: Dict, labels: torch.Tensor) -> torch.Tensor:
        """L_deno of the train forward's outputs ``out``."""
        return dice_ce_loss(out["xi"], labels)

    def labeled_prediction(self, out: Dict) -> torch.Tensor:
        """The labeled batch's logits that DRS scores: D_xi's."""
        return out["xi"]


class NoDiffusionStream(DiffusionStream):
    network_class = ADNetWithoutDiffusion

    def noisy_labels(self, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {}

    def sample(self, unlabeled: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def loss(self, out: Dict, labels: torch.Tensor) -> torch.Tensor:
        return out["theta_u"].new_zeros(())

    def labeled_prediction(self, out: Dict) -> torch.Tensor:
        return ADNet.full_resolution(out["psi"])
