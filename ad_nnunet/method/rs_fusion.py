r"""Reparameterize & Smooth (RS): A&D's pseudo-label for unlabeled images.

The diffusion decoder's DDIM logits :math:`\ell^\xi` are *reparameterized* with a Gumbel-softmax sample, *smoothed*
with a small Gaussian kernel, and added to the softmax of the plain decoder's logits :math:`\ell^\psi`:

.. math::
    \hat y = \arg\max_c \Big[ (G_\sigma * \mathrm{GS}_\tau(\mathrm{clip}(\ell^\xi, -1, 1)))_c
        + \mathrm{softmax}(\ell^\psi)_c + w\,\mathrm{softmax}(\ell^0)_c \Big],

.. math::
    \mathrm{GS}_\tau(\ell)_c = \frac{\exp((\ell_c + g_c)/\tau)}{\sum_k \exp((\ell_k + g_k)/\tau)}, \qquad
    g_c = -\log(-\log u_c),\ u_c \sim U(0, 1),

with :math:`\tau = 1` (soft sample, ``hard=False``) and :math:`G_\sigma` a normalised, depthwise Gaussian kernel
(size 3, :math:`\sigma = 1`): :math:`k(\mathbf x) \propto \exp(-\lVert \mathbf x \rVert^2 / 2\sigma^2)` on the
offsets :math:`\{-1, 0, 1\}^d`, :math:`\sum k = 1`. The last term is not the paper's (:math:`w = 0` there and by
default): :math:`\ell^0` are the logits of the model a fine-tuning run started from (the warm start, frozen), which
then votes with weight :math:`w` next to the two streams.

**Confidence.** The fused score :math:`s_c` (the bracket above) sums to :math:`V = 2 + w` over the classes, so
:math:`\kappa = \max_c s_c / V \in [1/C, 1]` is how strongly the voters agree on :math:`\hat y`. The paper and
the official code use every voxel (no threshold; ``min_confidence=None`` here). With ``min_confidence`` set, voxels
with :math:`\kappa <` ``min_confidence`` get ``IGNORE_LABEL`` (losses.py) and drop out of :math:`L_u`: typically the
object's boundary, where :math:`D_\psi` is near 50/50 and the smoothed Gumbel sample is soft. A fixed threshold
means different things for different class counts (:math:`\kappa \ge 1/C`, and its ceiling falls with :math:`C`);
``ignore_fraction`` :math:`q` does not: in each sample, the :math:`\lfloor qN + 1/2 \rfloor` voxels of lowest
:math:`\kappa` (of its :math:`N`) get ``IGNORE_LABEL``, whatever their values.

**Clipping.** The Gumbel-softmax gets the diffusion stream's ``pred_xstart`` as the official code does: its DDIM
sampler runs with ``clip_denoised=True``, so the last step's :math:`x_0` output is clamped to :math:`[-1, 1]` before
the fusion. With two classes the logit gap is then at most 2, the Gumbel sample stays soft, and the diffusion
stream *votes* rather than decides; unclipped logits of magnitude 10+ would make the sample one-hot, so that the
softmax of :math:`D_\psi` could almost never change the pseudo-label.

**Borders.** The output keeps the input's size. The image is extended by *replicating* its border voxels rather
than by zeros (the official code zero-pads), so a constant field is preserved up to the border and the smoothed
Gumbel probabilities still sum to 1 there: near the border the diffusion branch keeps its full say instead of
fading in favour of :math:`D_\psi`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ad_nnunet.method.losses import IGNORE_LABEL

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class GaussianSmoothing(nn.Module):
    r"""Depthwise Gaussian smoothing :math:`G_\sigma * x` per channel, same output size, replicate-padded borders.

    The kernel :math:`k = \bigotimes_{i=1}^{d} k_1`, :math:`k_1(o) \propto \exp(-o^2 / 2\sigma^2)` for
    :math:`o \in \{-(K-1)/2, \dots, (K-1)/2\}`, normalised to sum 1, is built once and kept as a non-persistent
    buffer (it moves with ``.to(device)`` but is not written to ``state_dict``).

    Args:
        channels: number of channels (classes) smoothed independently.
        kernel_size: odd kernel edge length :math:`K`.
        sigma: standard deviation in voxels.
        dim: number of spatial dimensions (1, 2 or 3).
    """

    weight: torch.Tensor

    def __init__(self, channels: int, kernel_size: int = 3, sigma: float = 1.0, dim: int = 3) -> None:
        super().__init__()
        if dim not in _CONV:
            raise ValueError(f"dim must be 1, 2 or 3, got {dim}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.channels = channels
        self.dim = dim
        self.kernel_size = kernel_size
        offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
        k1 = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
        kernel = k1
        for _ in range(dim - 1):
            kernel = kernel[..., None] * k1
        kernel = (kernel / kernel.sum()).to(torch.float32)
        self.register_buffer("weight", kernel.expand(channels, 1, *kernel.shape).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Smooth ``x`` of shape ``(B, channels, *spatial)``; returns the same shape and dtype."""
        if x.ndim != self.dim + 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}) + {self.dim} spatial dims, got {tuple(x.shape)}")
        half = self.kernel_size // 2
        padded = F.pad(x, (half, half) * self.dim, mode="replicate")
        return _CONV[self.dim](padded, self.weight.to(x.dtype), groups=self.channels)


def _gumbel_softmax(logits: torch.Tensor, tau: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    r"""Soft Gumbel-softmax sample over dim 1, :math:`\mathrm{softmax}((\ell + g)/\tau)`, with a seedable generator."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    # torch.rand lies in [0, 1); u = 0 would give an infinite Gumbel sample
    gumbel = -torch.log(-torch.log(u.clamp_min_(torch.finfo(torch.float32).tiny)))
    return torch.softmax((logits.float() + gumbel) / tau, dim=1)


@torch.no_grad()
def rs_score(logits_xi: torch.Tensor, logits_psi: torch.Tensor, smoothing: GaussianSmoothing, tau: float = 1.0,
             generator: Optional[torch.Generator] = None, xstart_clip: Optional[float] = 1.0,
             logits_start: Optional[torch.Tensor] = None, start_weight: float = 0.0) -> torch.Tensor:
    r"""The fused score :math:`s` (the bracket in the module docstring), ``(B, C, *spatial)`` float32, summing to
    :math:`V =` :func:`votes` over the classes, without grad.

    Args:
        logits_xi: DDIM :math:`x_0` logits of :math:`D_\xi`, ``(B, C, *spatial)``.
        logits_psi: logits of :math:`D_\psi`, same shape.
        smoothing: :class:`GaussianSmoothing` with ``channels == C`` and matching ``dim``.
        tau: Gumbel-softmax temperature :math:`\tau > 0`.
        generator: optional ``torch.Generator`` on the logits' device for the Gumbel noise.
        xstart_clip: :math:`\ell^\xi` is clamped to ``[-xstart_clip, xstart_clip]`` before the Gumbel-softmax
            (module docstring); None leaves it unclipped.
        logits_start: logits :math:`\ell^0` of the model the run started from, same shape; None: no such vote.
        start_weight: its weight :math:`w \ge 0` (ignored without ``logits_start``).
    """
    if logits_xi.shape != logits_psi.shape:
        raise ValueError(f"logits_xi {tuple(logits_xi.shape)} and logits_psi {tuple(logits_psi.shape)} differ")
    if logits_start is not None and logits_start.shape != logits_psi.shape:
        raise ValueError(f"logits_start {tuple(logits_start.shape)} and logits_psi {tuple(logits_psi.shape)} differ")
    if start_weight < 0 or not math.isfinite(start_weight):
        raise ValueError(f"start_weight must be a finite number >= 0, got {start_weight}")
    if tau <= 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a positive finite number, got {tau}")
    if xstart_clip is not None:
        if xstart_clip <= 0 or not math.isfinite(xstart_clip):
            raise ValueError(f"xstart_clip must be a positive finite number or None, got {xstart_clip}")
        logits_xi = logits_xi.clamp(-xstart_clip, xstart_clip)
    score = smoothing(_gumbel_softmax(logits_xi, tau, generator)) + torch.softmax(logits_psi.float(), dim=1)
    if logits_start is not None and start_weight:
        score += start_weight * torch.softmax(logits_start.float(), dim=1)
    return score


def votes(logits_start: Optional[torch.Tensor] = None, start_weight: float = 0.0) -> float:
    """:math:`V`, what the fused score sums to over the classes: 2 (the two streams) plus the start model's weight."""
    return 2.0 + (start_weight if logits_start is not None else 0.0)


@torch.no_grad()
def label_of_score(score: torch.Tensor, min_confidence: Optional[float] = None,
                   ignore_fraction: Optional[float] = None, num_votes: float = 2.0) -> torch.Tensor:
    r""":math:`\hat y = \arg\max_c s_c` as a LongTensor ``(B, 1, *spatial)``; with ``min_confidence``, the voxels whose
    confidence :math:`\kappa = \max_c s_c / V` (``num_votes`` :math:`V`, :func:`votes`) is below it get
    ``IGNORE_LABEL``; with ``ignore_fraction``, the share of each sample's voxels with the lowest :math:`\kappa` does
    (module docstring; both: the union)."""
    for name, value in (("min_confidence", min_confidence), ("ignore_fraction", ignore_fraction)):
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1] or None, got {value}")
    best, label = score.max(dim=1, keepdim=True)
    if min_confidence is not None:
        label[best / num_votes < min_confidence] = IGNORE_LABEL
    if ignore_fraction:
        per_sample = best.flatten(1)
        count = int(ignore_fraction * per_sample.shape[1] + 0.5)
        if count:
            lowest = per_sample.topk(count, dim=1, largest=False).indices
            label.view(label.shape[0], -1).scatter_(1, lowest, IGNORE_LABEL)
    return label


@torch.no_grad()
def rs_pseudo_label(logits_xi: torch.Tensor, logits_psi: torch.Tensor, smoothing: GaussianSmoothing,
                    tau: float = 1.0, generator: Optional[torch.Generator] = None,
                    xstart_clip: Optional[float] = 1.0, min_confidence: Optional[float] = None,
                    ignore_fraction: Optional[float] = None, logits_start: Optional[torch.Tensor] = None,
                    start_weight: float = 0.0) -> torch.Tensor:
    r"""RS pseudo-label :math:`\hat y` (module docstring) as a LongTensor ``(B, 1, *spatial)`` without grad:
    :func:`label_of_score` of :func:`rs_score` (arguments there)."""
    score = rs_score(logits_xi, logits_psi, smoothing, tau, generator, xstart_clip, logits_start, start_weight)
    return label_of_score(score, min_confidence, ignore_fraction, votes(logits_start, start_weight))


@torch.no_grad()
def argmax_pseudo_label(logits: torch.Tensor) -> torch.Tensor:
    r""":math:`\hat y = \arg\max_c \ell_c` as a LongTensor ``(B, 1, *spatial)`` without grad (the "w/o RS" ablation)."""
    return logits.argmax(dim=1, keepdim=True)
