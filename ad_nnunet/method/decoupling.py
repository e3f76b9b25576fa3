r"""Decoupled decoder update: :math:`D_\theta` follows the mean of :math:`D_\xi` and :math:`D_\psi` by EMA.

Once per iteration, before the forward pass, every parameter :math:`\theta_k` of the target decoder that also exists,
with the same name and shape, in every source decoder :math:`s = 1..S` is blended in place:

.. math:: \theta_k \leftarrow m\,\theta_k + (1 - m)\,\frac{1}{S}\sum_{s=1}^{S} \phi^{(s)}_k, \qquad m = 0.99 .

Buffers (BatchNorm running statistics) are not blended, and parameters found only in some sources (e.g. the
timestep projections of :math:`D_\xi`) are skipped. The target keeps its ``requires_grad`` and its ``.grad``:
:math:`D_\theta` is also trained by gradient descent on the unlabeled loss.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


@torch.no_grad()
def ema_blend_(target: nn.Module, sources: Sequence[nn.Module], momentum: float = 0.99) -> int:
    r"""In place :math:`\theta \leftarrow m\theta + (1-m)\,\mathrm{mean}_s(\phi^{(s)})` over matching parameters.

    Args:
        target: module whose parameters are updated (:math:`D_\theta`).
        sources: modules averaged into it (:math:`D_\xi`, :math:`D_\psi`); not modified.
        momentum: :math:`m \in [0, 1]`.

    Returns:
        the number of parameter tensors blended.

    Raises:
        ValueError: if ``sources`` is empty, ``momentum`` is outside [0, 1], or no parameter matches (a wiring bug).
    """
    if len(sources) == 0:
        raise ValueError("sources must not be empty")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    source_params = [dict(s.named_parameters()) for s in sources]
    blended = 0
    for name, theta in target.named_parameters():
        matches = [p.get(name) for p in source_params]
        if any(p is None or p.shape != theta.shape for p in matches):
            continue
        mean = torch.stack([p.to(device=theta.device, dtype=theta.dtype) for p in matches]).mean(0)
        theta.mul_(momentum).add_(mean, alpha=1.0 - momentum)
        blended += 1
    if blended == 0:
        raise ValueError(f"no parameter of {type(target).__name__} matches all sources by name and shape")
    return blended
