r"""The diffusion stream's math: label encoding, the linear noise schedule, forward noising and DDIM sampling.

A&D's diffusion decoder :math:`D_\xi` denoises *label maps*. A label map :math:`y` with :math:`C` classes is
encoded as

.. math:: x_0 = 2\,\mathrm{onehot}(y) - 1 \in \{-1, 1\}^{C \times \text{spatial}}.

**Schedule** (guided-diffusion's linear schedule, rescaled to :math:`T` steps): with :math:`s = 1000 / T`,

.. math::
    \beta_t = \mathrm{linspace}(s \cdot 10^{-4},\ s \cdot 0.02,\ T)_t, \qquad
    \alpha_t = 1 - \beta_t, \qquad \bar\alpha_t = \prod_{i \le t} \alpha_i,

computed in float64. :math:`\bar\alpha` decreases monotonically from :math:`\bar\alpha_0 = 1 - s\cdot 10^{-4}`.

**Forward noising** (training): :math:`t \sim U\{0, \dots, T-1\}` and

.. math:: x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon, \qquad \epsilon \sim \mathcal N(0, I).

**DDIM sampling** (inference on unlabeled images). The network predicts :math:`x_0` as class logits
:math:`\ell = D(x_t, t)`; it is mapped back to the label encoding and clipped,

.. math:: \hat x_0 = \mathrm{clip}(2\,\mathrm{softmax}(\ell) - 1, -1, 1), \qquad
          \hat\epsilon = \frac{x_t - \sqrt{\bar\alpha_t}\,\hat x_0}{\sqrt{1 - \bar\alpha_t}}.

Over the respaced timesteps :math:`t_1 > t_2 > \dots > t_K` (see :meth:`LinearDiffusionSchedule.ddim_timesteps`)
each step moves to the next one, :math:`t' = t_{k+1}`:

.. math::
    \sigma = \eta \sqrt{\frac{1 - \bar\alpha_{t'}}{1 - \bar\alpha_t}} \sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_{t'}}},
    \qquad
    x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1 - \bar\alpha_{t'} - \sigma^2}\,\hat\epsilon + \sigma z,

with :math:`z \sim \mathcal N(0, I)`. After the last step (:math:`t_K`, :math:`\bar\alpha_{t'} = 1`) the update would
return :math:`\hat x_0` itself, so the trajectory ends at :math:`\hat x_0`. Sampling starts from
:math:`x_{t_1} \sim \mathcal N(0, I)` and returns the last step's :math:`x_0` logits, which is what A&D fuses into the
pseudo-label.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def encode_labels(seg: torch.Tensor, num_classes: int) -> torch.Tensor:
    r"""Encode a label map as the diffusion target :math:`x_0 = 2\,\mathrm{onehot}(y) - 1`.

    Args:
        seg: integer label map of shape ``(B, 1, *spatial)`` with values in ``[0, num_classes)``.
        num_classes: number of classes :math:`C`.

    Returns:
        float32 tensor of shape ``(B, C, *spatial)`` with values in :math:`\{-1, 1\}`.

    Raises:
        ValueError: if ``seg`` is not ``(B, 1, *spatial)``, not an integer tensor, or holds a value outside
            ``[0, num_classes)``.
    """
    if seg.ndim < 3 or seg.shape[1] != 1:
        raise ValueError(f"seg must have shape (B, 1, *spatial), got {tuple(seg.shape)}")
    if seg.is_floating_point() or seg.is_complex():
        raise ValueError(f"seg must be an integer label map, got dtype {seg.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    lo, hi = int(seg.min()), int(seg.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"seg values must lie in [0, {num_classes}), found range [{lo}, {hi}]")
    onehot = F.one_hot(seg[:, 0].long(), num_classes).movedim(-1, 1)
    return onehot.to(torch.float32).mul_(2).sub_(1)


class LinearDiffusionSchedule:
    r"""guided-diffusion's linear :math:`\beta` schedule rescaled to ``num_timesteps`` steps (module docstring).

    Attributes (float64, CPU, length :math:`T`): ``betas``, ``alphas``, ``alphas_cumprod`` (:math:`\bar\alpha_t`),
    ``alphas_cumprod_prev`` (:math:`\bar\alpha_{t-1}`, with 1 for :math:`t = 0`), ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``.
    """

    def __init__(self, num_timesteps: int = 1000) -> None:
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        scale = 1000.0 / num_timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
        if bool((betas > 1).any()):
            # beta > 1 makes alpha negative and sqrt(abar) undefined: the rescaled schedule needs T >= 20
            raise ValueError(f"num_timesteps={num_timesteps} gives betas > 1; use num_timesteps >= 20")
        self.num_timesteps = num_timesteps
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self._device_cache: Dict[torch.device, tuple] = {}

    def _coefficients_on(self, device: torch.device) -> tuple:
        """(sqrt(abar), sqrt(1-abar)) on ``device``, copied once per device so q_sample never syncs with the host."""
        device = torch.device(device)
        if device not in self._device_cache:
            self._device_cache[device] = (self.sqrt_alphas_cumprod.to(device),
                                          self.sqrt_one_minus_alphas_cumprod.to(device))
        return self._device_cache[device]

    def sample_timesteps(self, batch_size: int, device: Union[str, torch.device] = "cpu",
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
        r"""Draw :math:`t \sim U\{0, \dots, T-1\}` independently per batch element: LongTensor ``(batch_size,)``.

        ``generator`` (optional) must live on ``device``.
        """
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        r"""Forward noising :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon`.

        Args:
            x0: clean sample ``(B, C, *spatial)``.
            t: LongTensor ``(B,)`` of timesteps in ``[0, T)``, one per batch element.
            noise: :math:`\epsilon` with the shape of ``x0``; drawn from :math:`\mathcal N(0, I)` when None.
        """
        if t.ndim != 1 or t.shape[0] != x0.shape[0]:
            raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        sqrt_ab, sqrt_1m_ab = self._coefficients_on(x0.device)
        view = (-1,) + (1,) * (x0.ndim - 1)
        a = sqrt_ab[t].to(x0.dtype).view(view)
        b = sqrt_1m_ab[t].to(x0.dtype).view(view)
        return a * x0 + b * noise

    def ddim_timesteps(self, num_steps: int) -> List[int]:
        r"""The respaced timesteps visited by DDIM, in descending order.

        For ``num_steps`` :math:`K \ge 2` this is guided-diffusion's ``space_timesteps(T, [K])``: the indices
        :math:`\mathrm{round}(k (T-1)/(K-1))`, :math:`k = 0..K-1`, so both :math:`0` and :math:`T-1` are included;
        :math:`T = 1000, K = 10` gives ``[999, 888, ..., 111, 0]``. The position is accumulated in float steps of
        :math:`(T-1)/(K-1)` as guided-diffusion does, so ties at .5 round identically.

        For :math:`K = 1` guided-diffusion keeps ``[0]``, i.e. it would ask the network to denoise pure noise while
        telling it the input is almost clean. Here :math:`K = 1` gives ``[T-1]``: a single step from pure noise.

        Raises:
            ValueError: unless :math:`1 \le K \le T`.
        """
        if not isinstance(num_steps, int) or not 1 <= num_steps <= self.num_timesteps:
            raise ValueError(f"num_steps must be an int in [1, {self.num_timesteps}], got {num_steps!r}")
        if num_steps == 1:
            return [self.num_timesteps - 1]
        stride = (self.num_timesteps - 1) / (num_steps - 1)
        steps, position = [], 0.0
        for _ in range(num_steps):
            steps.append(round(position))
            position += stride
        return sorted(set(steps), reverse=True)

    @torch.no_grad()
    def ddim_sample(self, denoise_fn: DenoiseFn, shape: Sequence[int], num_steps: int = 10, eta: float = 0.0,
                    device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        r"""DDIM sampling of a label map (module docstring); returns the last step's :math:`x_0` logits.

        Args:
            denoise_fn: ``denoise_fn(x_t, t)`` with ``x_t`` of ``shape`` and ``t`` a LongTensor ``(B,)`` of original
                (not respaced) timesteps; returns :math:`x_0` logits ``(B, C, *spatial)``.
            shape: ``(B, C, *spatial)`` of :math:`x_t`.
            num_steps: number of respaced steps :math:`K` (A&D uses 10).
            eta: DDIM stochasticity; 0 is deterministic given :math:`x_T`.
            device, dtype: where and in which precision :math:`x_t` lives. Everything stays on ``device``.
            generator: optional ``torch.Generator`` on ``device`` for :math:`x_T` and the :math:`\eta > 0` noise.
        """
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        timesteps = self.ddim_timesteps(num_steps)
        abar = self.alphas_cumprod.tolist()
        x = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        logits = None
        for i, t in enumerate(timesteps):
            logits = denoise_fn(x, torch.full((x.shape[0],), t, device=device, dtype=torch.long))
            if i + 1 == len(timesteps):
                # the update after the last step (abar_prev = 1) would just return x0_hat
                break
            abar_t, abar_prev = abar[t], abar[timesteps[i + 1]]
            x0_hat = (2 * torch.softmax(logits.float(), dim=1) - 1).clamp_(-1, 1).to(dtype)
            eps_hat = (x - abar_t ** 0.5 * x0_hat) / (1 - abar_t) ** 0.5
            sigma = eta * ((1 - abar_prev) / (1 - abar_t)) ** 0.5 * (1 - abar_t / abar_prev) ** 0.5
            x = abar_prev ** 0.5 * x0_hat + max(1 - abar_prev - sigma ** 2, 0.0) ** 0.5 * eps_hat
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
        return logits
