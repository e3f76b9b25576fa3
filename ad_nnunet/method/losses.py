r"""Loss pieces shared by A&D's three terms: (class-weighted) Dice + CE and the sigmoid ramp-up of :math:`\mu`.

**Dice + CE.** With :math:`p = \mathrm{softmax}(\ell)` over the class axis, :math:`g` the one-hot target and sums
running over the whole batch and all voxels (nnU-Net's *batch Dice*),

.. math::
    \mathrm{Dice}_c = \frac{2 \sum p_c g_c + s}{\max(\sum p_c + \sum g_c + s,\ 10^{-8})}, \qquad s = 10^{-5},

.. math::
    L = \mathrm{CE}_w(\ell, y) - \frac{1}{C - 1} \sum_{c=1}^{C-1} w_c\, \mathrm{Dice}_c .

The Dice term is *minus* the mean Dice, as in nnU-Net (not :math:`1 - \text{mean}`; the constant does not change
gradients but does change the logged value). Background (:math:`c = 0`) is left out of the Dice term.

:math:`\mathrm{CE}_w` is ``torch.nn.functional.cross_entropy`` with ``weight=w``: per voxel
:math:`-w_{y}\log p_{y}`, averaged with the normaliser :math:`\sum_{\text{voxels}} w_{y}` (computed in float32).

**Class weights.** A&D weights only :math:`D_\psi`'s loss, with the same vector :math:`w` in CE (all classes) and in
Dice (foreground, :math:`w_{1:}`). The Dice weighting follows the official A&D code: each foreground Dice is scaled
by its weight and the plain mean is taken, :math:`\frac{1}{C-1}\sum_c w_c \mathrm{Dice}_c` — *not* the normalised
:math:`\sum_c w_c \mathrm{Dice}_c / \sum_c w_c`, so the weights also scale the Dice term's magnitude.
With ``class_weights=None`` (or all ones) the loss equals nnU-Net's ``DC_and_CE_loss`` with
``MemoryEfficientSoftDiceLoss``, ``batch_dice=True``, ``do_bg=False``, ``smooth=1e-5`` on one process.
Under DDP the Dice sums stay per process (no all-gather), as in the single-GPU official code.

**Ignored voxels.** Target voxels equal to ``IGNORE_LABEL`` (-1; A&D's pseudo-labels where the RS fusion is not
confident, rs_fusion.py) count nowhere: CE averages over the other voxels (``ignore_index``), and every Dice sum
runs over them only (:math:`p_c` and :math:`g_c` multiplied by the mask), as nnU-Net's ignore label does. A batch
with every voxel ignored gives a loss of 0 with zero gradient.

**Ramp-up.** :math:`\mu(t) = \mu \cdot \exp(-5 (1 - \mathrm{clip}(t / T, 0, 1))^2)`, 1 for :math:`T = 0`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_LABEL = -1


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: Optional[torch.Tensor] = None,
                 smooth: float = 1e-5) -> torch.Tensor:
    r"""Cross-entropy plus negative foreground batch soft Dice (module docstring), optionally class-weighted.

    Args:
        logits: ``(B, C, *spatial)`` raw network output, :math:`C \ge 2`.
        target: ``(B, 1, *spatial)`` integer labels in ``[0, C)``, or ``IGNORE_LABEL`` for voxels left out.
        class_weights: optional ``(C,)`` weights :math:`w` (detached by the caller; used as given).
        smooth: :math:`s` in the Dice formula.

    Returns:
        scalar loss tensor.
    """
    if logits.ndim < 3 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (B, C>=2, *spatial), got {tuple(logits.shape)}")
    if target.shape != (logits.shape[0], 1, *logits.shape[2:]):
        raise ValueError(f"target must have shape {(logits.shape[0], 1, *logits.shape[2:])}, got {tuple(target.shape)}")
    num_classes = logits.shape[1]
    if class_weights is not None and class_weights.shape != (num_classes,):
        raise ValueError(f"class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}")
    labels = target[:, 0].long()
    kept = labels != IGNORE_LABEL
    if not kept.any():
        return logits.sum() * 0.0

    # float32 like autocast does for cross_entropy; also lets float32 weights meet half-precision logits
    weight = None if class_weights is None else class_weights.to(device=logits.device, dtype=torch.float32)
    ce = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=IGNORE_LABEL)

    probs = torch.softmax(logits, dim=1)[:, 1:]
    axes = (0,) + tuple(range(2, logits.ndim))
    with torch.no_grad():
        onehot = F.one_hot(labels.clamp_min(0), num_classes).movedim(-1, 1)[:, 1:].to(torch.float32)
        mask = None if kept.all() else kept[:, None].to(torch.float32)
        if mask is not None:
            onehot = onehot * mask
        sum_gt = onehot.sum(axes, dtype=torch.float32)
    if mask is not None:
        probs = probs * mask
    intersect = (probs * onehot).sum(axes, dtype=torch.float32)
    sum_pred = probs.sum(axes, dtype=torch.float32)
    dice = (2 * intersect + smooth) / (sum_gt + sum_pred + smooth).clamp_min(1e-8)
    if class_weights is not None:
        dice = dice * class_weights[1:].to(dice.dtype)
    return ce - dice.mean()


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    r"""Sigmoid-shaped ramp :math:`\exp(-5 (1 - \mathrm{clip}(t/T, 0, 1))^2)`; 1.0 when ``rampup_length`` is 0."""
    if rampup_length < 0:
        raise ValueError(f"rampup_length must be >= 0, got {rampup_length}")
    if rampup_length == 0:
        return 1.0
    phase = 1.0 - min(max(current / rampup_length, 0.0), 1.0)
    return float(math.exp(-5.0 * phase * phase))
