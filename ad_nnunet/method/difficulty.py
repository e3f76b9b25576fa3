r"""Difficulty-aware class re-weighting (A&D's "DRS"), applied to :math:`D_\psi`'s loss.

Every iteration the weights are updated from the diffusion decoder :math:`D_\xi`'s prediction on the labeled batch.
Per class :math:`c` (background included), from the hard-argmax prediction :math:`P_c` and ground truth :math:`G_c`
summed over the whole batch (and over all DDP ranks):

.. math::
    \mathrm{Dice}_c = \max\Big(\frac{2 |P_c \cap G_c|}{|P_c| + |G_c|},\ \varepsilon\Big)

(the clamp keeps :math:`\log` finite when a class is missed completely). With :math:`m = (N-1)/N`,
:math:`N` = ``accumulate_iters`` and :math:`\mathrm{EMA}(v, x) = m v + (1 - m) x`:

.. math::
    \Delta_c = \mathrm{Dice}_c - \mathrm{Dice}^{\text{last}}_c, \qquad
    r_c = \log(\mathrm{Dice}_c / \mathrm{Dice}^{\text{last}}_c),

.. math::
    \text{learn}_c \leftarrow \mathrm{EMA}(\text{learn}_c, [\Delta_c > 0]\, \Delta_c r_c), \qquad
    \text{unlearn}_c \leftarrow \mathrm{EMA}(\text{unlearn}_c, [\Delta_c \le 0]\, \Delta_c r_c),

.. math::
    d_c = \Big(\frac{\text{unlearn}_c + \varepsilon}{\text{learn}_c + \varepsilon}\Big)^{\gamma}, \qquad
    \text{dw}_c \leftarrow \mathrm{EMA}(\text{dw}_c, 1 - \mathrm{Dice}_c), \qquad
    w_c = C\, d_c\, \text{dw}_c,

and :math:`\mathrm{Dice}^{\text{last}} \leftarrow \mathrm{Dice}`. Defaults: :math:`N = 50`, :math:`\gamma = 1/5`,
:math:`\varepsilon = 10^{-8}`; initial state :math:`\mathrm{Dice}^{\text{last}} = \varepsilon`, learn = unlearn = 0,
dw = 1, w = 1.

**Normalisation (default, a deliberate deviation).** The official code uses :math:`w_c = C d_c \text{dw}_c` as it
is. Its overall scale is arbitrary: the first update sees every class "learn" from :math:`\varepsilon` to its Dice
(:math:`\log(\mathrm{Dice}/\varepsilon) \approx 18`) while unlearn is still 0, so :math:`d_c` starts near 0.03, and
:math:`\text{dw}_c \to 1 - \mathrm{Dice}_c` shrinks as training succeeds. Measured on LA (3d_cpu, 600 steps) the
weights fell to [0.03, 0.19]; since they scale the Dice term, :math:`D_\psi` trained about five times slower than an
unweighted decoder and (with the decoders also initialised independently, see ad_net.py) reached 70.8 % Dice on
development cases where plain nnU-Net reached 84.5 %. With
``normalize=True`` the weights are rescaled to mean 1,

.. math:: w_c = C\, \frac{d_c\, \text{dw}_c}{\sum_k d_k\, \text{dw}_k},

which keeps the *relative* difficulty weighting (the part DRS is about) and gives the loss the scale of an
unweighted one. (DHC divides by :math:`\max_c w_c` instead; A&D drops that step.) ``normalize=False`` is the official
formula.

**Absent classes.** A class with :math:`|P_c| + |G_c| = 0` in the batch (on all ranks) has no defined Dice and the
batch says nothing about it, so its state (last Dice, learn, unlearn, dw) is left unchanged for that update and its
weight is recomputed from the unchanged state. (The official code instead gets an arbitrary Dice of 0.5 there from
its smoothing constants.)

All state lives in registered buffers, so it is saved in and restored from the owning network's ``state_dict``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class DifficultyWeights(nn.Module):
    r"""Per-class difficulty-aware weights :math:`w \in \mathbb R^C` (module docstring); state in buffers.

    Args:
        num_classes: :math:`C`, background included.
        accumulate_iters: :math:`N`; the EMA momentum is :math:`(N-1)/N`.
        exponent: :math:`\gamma` in :math:`d_c`.
        eps: :math:`\varepsilon`.
        normalize: rescale :math:`w` to mean 1 (module docstring); ``False`` is the official formula.
    """

    last_dice: torch.Tensor
    learn: torch.Tensor
    unlearn: torch.Tensor
    dice_weight: torch.Tensor
    weights: torch.Tensor
    num_updates: torch.Tensor

    def __init__(self, num_classes: int, accumulate_iters: int = 50, exponent: float = 0.2, eps: float = 1e-8,
                 normalize: bool = True) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if accumulate_iters < 1:
            raise ValueError(f"accumulate_iters must be >= 1, got {accumulate_iters}")
        self.num_classes = num_classes
        self.accumulate_iters = accumulate_iters
        self.exponent = exponent
        self.eps = eps
        self.normalize = normalize
        self.register_buffer("last_dice", torch.full((num_classes,), eps))
        self.register_buffer("learn", torch.zeros(num_classes))
        self.register_buffer("unlearn", torch.zeros(num_classes))
        self.register_buffer("dice_weight", torch.ones(num_classes))
        self.register_buffer("weights", torch.ones(num_classes))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def _dice_counts(self, logits: torch.Tensor, target: torch.Tensor) -> tuple:
        """Per-class |P ∩ G| and |P| + |G| of the hard prediction, summed over the batch and, under DDP, all ranks."""
        pred = logits.argmax(1).flatten()
        gt = target.flatten().long()
        lo, hi = (int(v) for v in torch.aminmax(gt))
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"target values must lie in [0, {self.num_classes}), found range [{lo}, {hi}]")
        # bincount instead of one-hot: no (B, C, *spatial) temporaries
        intersection = torch.bincount(pred[pred == gt], minlength=self.num_classes)
        cardinality = torch.bincount(pred, minlength=self.num_classes) + torch.bincount(gt, minlength=self.num_classes)
        # float64 keeps voxel counts exact far beyond float32's 2**24
        counts = torch.stack([intersection, cardinality]).to(torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        return counts[0], counts[1]

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One EMA update from ``logits`` ``(B, C, *spatial)`` and ``target`` ``(B, 1, *spatial)``; returns a copy of w.

        Under ``torch.distributed`` every rank must call this in the same iteration (it all-reduces).
        """
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (B, {self.num_classes}, *spatial), got {tuple(logits.shape)}")
        if target.shape != (logits.shape[0], 1, *logits.shape[2:]):
            raise ValueError(f"target must have shape {(logits.shape[0], 1, *logits.shape[2:])}, "
                             f"got {tuple(target.shape)}")
        intersection, cardinality = self._dice_counts(logits, target)
        present = (cardinality > 0).to(self.last_dice.device)
        dice = (2 * intersection / cardinality.clamp_min(1)).clamp_min(self.eps).to(self.last_dice)

        m = (self.accumulate_iters - 1) / self.accumulate_iters
        delta = dice - self.last_dice
        log_ratio = torch.log(dice / self.last_dice)
        learn = m * self.learn + (1 - m) * torch.where(delta > 0, delta * log_ratio, 0.0)
        unlearn = m * self.unlearn + (1 - m) * torch.where(delta <= 0, delta * log_ratio, 0.0)
        dice_weight = m * self.dice_weight + (1 - m) * (1 - dice)

        self.learn.copy_(torch.where(present, learn, self.learn))
        self.unlearn.copy_(torch.where(present, unlearn, self.unlearn))
        self.dice_weight.copy_(torch.where(present, dice_weight, self.dice_weight))
        self.last_dice.copy_(torch.where(present, dice, self.last_dice))

        difficulty = ((self.unlearn + self.eps) / (self.learn + self.eps)) ** self.exponent
        raw = difficulty * self.dice_weight
        if self.normalize:  # all-zero raw weights (every Dice exactly 1 for ~N updates) mean "no preference"
            raw = raw / raw.sum() if raw.sum() > 0 else torch.full_like(raw, 1.0 / self.num_classes)
        self.weights.copy_(self.num_classes * raw)
        self.num_updates += 1
        return self.weights.clone()
