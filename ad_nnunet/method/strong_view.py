r"""The strong view of an unlabeled batch on which D_theta learns the pseudo-label (weak/strong consistency).

The pseudo-label :math:`\hat y` is made on the unlabeled batch :math:`x_u` as the loader gives it (SVDA applied).
D_theta then learns :math:`\hat y` on a harder view of the same voxels, so that L_u asks for the same answer under a
perturbation instead of repeating the teacher's answer on the teacher's input (the idea of FixMatch / UniMatch; the
A&D paper trains D_theta on the same input). Per sample :math:`i`, with :math:`\bar x_i` its mean:

.. math::
    x'_i = b_i \left( c_i (x_i - \bar x_i) + \bar x_i \right) + \sigma_i \varepsilon_i, \qquad
    c_i, b_i \sim U(1 - r, 1 + r), \quad \sigma_i \sim U(0, \sigma_{\max}), \quad \varepsilon_i \sim N(0, I),

(contrast, brightness, Gaussian noise; intensities are nnU-Net-normalized, so :math:`\sigma_{\max}` is in units of
the foreground standard deviation). Then CutMix: with probability :math:`p`, a box :math:`B_i` (each side a
:math:`U(0.3, 0.7)` fraction of the patch, uniformly placed) of sample :math:`i` is replaced, in the image and in
the pseudo-label alike, by the same box of sample :math:`i + 1 \bmod B`. The spatial grid is unchanged, so the mixed
pseudo-label stays aligned with the mixed image.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def strong_view(x: torch.Tensor, pseudo: torch.Tensor, intensity_range: float = 0.25, max_noise: float = 0.1,
                p_cutmix: float = 0.5, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x', y')``: the strong view of ``x`` ``(B, C, *spatial)`` and the pseudo-label ``pseudo`` ``(B, 1,
    *spatial)`` mixed alike (module docstring). Inputs are not modified; ``generator`` (CPU) makes it repeatable."""
    if x.ndim < 3 or pseudo.shape[0] != x.shape[0] or pseudo.shape[2:] != x.shape[2:] or pseudo.shape[1] != 1:
        raise ValueError(f"x {tuple(x.shape)} and pseudo {tuple(pseudo.shape)} must be (B, C, *spatial) and "
                         f"(B, 1, *spatial)")
    if not 0 <= intensity_range < 1 or max_noise < 0 or not 0 <= p_cutmix <= 1:
        raise ValueError(f"need 0 <= intensity_range < 1, max_noise >= 0, 0 <= p_cutmix <= 1; got {intensity_range}, "
                         f"{max_noise}, {p_cutmix}")
    b = x.shape[0]
    per_sample = (b,) + (1,) * (x.ndim - 1)

    def uniform(low: float, high: float, shape=per_sample) -> torch.Tensor:
        return (low + (high - low) * torch.rand(shape, generator=generator)).to(x.device, x.dtype)

    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    contrast = uniform(1 - intensity_range, 1 + intensity_range)
    brightness = uniform(1 - intensity_range, 1 + intensity_range)
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype) * uniform(0.0, max_noise)
    out = brightness * (contrast * (x - mean) + mean) + noise
    mixed = pseudo.clone()
    if b > 1:
        source = out.clone()  # boxes come from the partner's perturbed image, before any box is pasted
        for i in range(b):
            if float(torch.rand((), generator=generator)) >= p_cutmix:
                continue
            box = []
            for n in x.shape[2:]:
                size = max(1, int(n * (0.3 + 0.4 * float(torch.rand((), generator=generator)))))
                start = int(torch.randint(0, n - size + 1, (), generator=generator))
                box.append(slice(start, start + size))
            j = (i + 1) % b
            out[(i, slice(None), *box)] = source[(j, slice(None), *box)]
            mixed[(i, slice(None), *box)] = pseudo[(j, slice(None), *box)]
    return out, mixed
