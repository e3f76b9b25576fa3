"""The exported model of a fine-tuning run, interpolated towards the model it started from (weight-space ensembling,
Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022).

A fine-tuning run (``ADTrainer_finetune``) starts from a trained nnU-Net model with weights :math:`\\theta_0`
(``adnnunet_warm_start``) and ends at :math:`\\theta_T`. The model it saves as ``checkpoint_final.pth`` is

.. math::

    \\theta = (1 - a)\\,\\theta_0 + a\\,\\theta_T, \\qquad a \\in [0, 1]

for the parameters of the U-Net nnU-Net predicts with (the shared encoder E and D_theta); D_xi and D_psi are kept
as trained. :math:`a = 1` keeps the fine-tuned model, :math:`a = 0` the start. Both ends are the same network, so
the interpolated model costs exactly what either costs to predict. Why, and how ``a`` was chosen: docs/method.md.
The final checkpoint records both ends (``ad_state`` ``start_unet``, ``trained_unet``), so a model at another ``a``
can be exported afterwards without training again (``adnnunet_export --interpolation``).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

from ad_nnunet.errors import ADInputError

# the parameters nnU-Net's predictor uses: the shared encoder and D_theta (ADNet's ``encoder`` and ``decoder``)
UNET_PREFIXES = ("encoder.", "decoder.")


def unet_state(network_state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Copies of the U-Net's floating-point entries (``encoder.*``, ``decoder.*``) of an ADNet state dict."""
    return {k: v.detach().clone() for k, v in network_state.items()
            if k.startswith(UNET_PREFIXES) and v.is_floating_point()}


def interpolated(start: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor],
                 a: float) -> Dict[str, torch.Tensor]:
    """``(1 - a) * start + a * trained`` entry by entry, on ``trained``'s device and dtype (module docstring).

    The two must have the same keys (ValueError naming the difference otherwise)."""
    if not 0 <= a <= 1:
        raise ValueError(f"the interpolation weight a = {a} must be in [0, 1]")
    if set(trained) != set(start):
        diff = sorted(set(trained) ^ set(start))
        raise ValueError(f"the start weights do not match the network's U-Net ({len(diff)} keys differ, e.g. "
                         f"{diff[:3]})")
    return {k: torch.lerp(start[k].to(v.device, v.dtype), v, a) for k, v in trained.items()}


def interpolate_towards(network: torch.nn.Module, start: Mapping[str, torch.Tensor], a: float) -> None:
    """Set every U-Net entry of ``network``'s state to ``(1 - a) * start + a * current``.

    ``start``: :func:`unet_state` of the model the run started from; its keys must be exactly the network's U-Net
    entries (ValueError naming the difference otherwise)."""
    network.load_state_dict(interpolated(start, unet_state(network.state_dict()), a), strict=False)


def recorded_unet(ad_state: Optional[Mapping], a: float, source: str) -> Dict[str, torch.Tensor]:
    """The U-Net at another weight ``a`` of a finished ``final_interpolation`` run, from the ``ad_state`` of its
    ``checkpoint_final.pth`` (``source``, for the message), which records both ends: the start and the trained
    weights. ``a = 1`` is the trained model, ``a = 0`` the start."""
    ends = ad_state or {}
    if ends.get("start_unet") is None or ends.get("trained_unet") is None:
        raise ADInputError(f"{source} does not record the start and trained weights of a final_interpolation run. "
                           f"Fix: use a checkpoint_final.pth of a warm-started run with final_interpolation set "
                           f"(ADTrainer_finetune), trained with this version of ad-nnunet; or leave out the "
                           f"interpolation weight.")
    return interpolated(ends["start_unet"], ends["trained_unet"], a)


def weights_as_trained(network_weights: Mapping[str, torch.Tensor],
                       ad_state: Optional[Mapping]) -> Dict[str, torch.Tensor]:
    """A checkpoint's network weights as training left them: a ``final_interpolation`` run saves a mix of the start and
    the trained U-Net and records the trained one (``ad_state["trained_unet"]``), which replaces the mix."""
    return {**network_weights, **((ad_state or {}).get("trained_unet") or {})}
