"""ADNet: A&D's network, built from nnU-Net's plans.

Topology, patch and feature sizes come from the plans: nnU-Net's own ``get_network_from_plans`` builds the U-Net
whose encoder and decoder become the shared encoder E and the unlabeled/inference decoder D_theta. Around it:

- ``stem_diffusion``: a second copy of the encoder's first block taking ``cat(image, x_t)`` (image channels +
  one channel per class). The image-only stem is the encoder's own first block, so ``forward(x)`` costs exactly
  what nnU-Net's U-Net costs.
- ``decoder_xi`` (D_xi, denoising, timestep-conditioned) and ``decoder_psi`` (D_psi, difficulty-aware): decoders
  of the same architecture as D_theta, so their parameters match D_theta's by name for the EMA update. All three
  start from the same weights: D_theta follows the parameter-wise mean of the other two, and the mean of two
  independently initialised networks is not a network that computes anything like either (their hidden units are
  arbitrarily permuted against each other). Started together, the three stay in one basin, as in weight averaging
  and mean-teacher models. (The official code initialises them independently; with that and the official DRS
  scale, D_theta reached 70.2 % Dice on LA development cases after 600 steps where plain nnU-Net reached 84.5 %.)
- ``time_embedding`` (sinusoidal 128 -> Linear(128, 512) -> SiLU -> Linear(512, 512)) and per-stage additive
  projections Linear(512, C_s) into the encoder stages and D_xi's stages, applied only when a timestep is given.
- ``difficulty``: the DRS state (buffers), so it is checkpointed with the weights and survives ``--c``.
- ``FrozenUNet``: a frozen copy of E and D_theta at given weights (the model a warm-started run started from, which
  ``start_model_vote`` lets vote in the pseudo-label); it holds no diffusion stream and no other decoder.
- ``ADNetWithoutDiffusion``: the paper's ablation without the diffusion stream (no D_xi, no noisy-label stem, no
  timestep embedding); it overrides the one hook that adds them, and D_theta then follows D_psi alone.
- Deep supervision: only D_psi, the decoder trained on the labels, may use it (``psi_deep_supervision``), so that
  the supervised half of A&D is trained exactly as nnU-Net trains its U-Net. D_theta and D_xi output full
  resolution only; their deep-supervision heads exist (same state dict as nnU-Net's U-Net) but are frozen.

The decoders hold no reference to the encoder as a submodule (dynamic-network-architectures' UNetDecoder
registers one), so the state dict has no duplicated encoder weights.

``forward(x)`` (mode ``"segment"``) is D_theta(E(x)) and returns one logits tensor: nnU-Net's predictor and its
final validation use it unchanged. All training outputs come from one ``forward(..., mode="train")`` call,
because DDP only averages gradients of work done inside forward.
"""
from __future__ import annotations

import copy
import math
from functools import partial
from typing import Callable, Dict, List, Mapping, Optional

import torch
from torch import nn

from ad_nnunet.method.difficulty import DifficultyWeights

TIME_FREQ_DIM = 128
TIME_EMBED_DIM = 512


def sinusoidal_embedding(t: torch.Tensor, dim: int = TIME_FREQ_DIM) -> torch.Tensor:
    """Transformer-style embedding of integer timesteps: [cos(t w_k), sin(t w_k)], w_k = 10000^(-k/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class TimestepEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, TIME_EMBED_DIM), nn.SiLU(),
                                 nn.Linear(TIME_EMBED_DIM, TIME_EMBED_DIM))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t))


def _detach_encoder_reference(decoder: nn.Module, encoder: nn.Module) -> None:
    """Keep ``decoder.encoder`` usable as an attribute without registering the encoder as its submodule."""
    if "encoder" in decoder._modules:
        del decoder._modules["encoder"]
    decoder.__dict__["encoder"] = encoder


def _freeze_deep_supervision_heads(decoder: nn.Module) -> None:
    """Only the last segmentation layer is used without deep supervision; freezing the others keeps the state dict
    identical to nnU-Net's U-Net while DDP (find_unused_parameters=False) sees no unused trainable parameter."""
    for layer in decoder.seg_layers[:-1]:
        layer.requires_grad_(False)


def _add_time(h: torch.Tensor, projection: nn.Linear, temb: torch.Tensor) -> torch.Tensor:
    return h + projection(temb).view(*temb.shape[:1], -1, *([1] * (h.ndim - 2)))


class ADNet(nn.Module):
    def __init__(self, unet: nn.Module, noisy_unet: Callable[[], nn.Module], num_classes: int,
                 psi_deep_supervision: bool = False):
        """``unet``: nnU-Net's U-Net (E and D_theta); ``noisy_unet()`` builds one that takes image + x_t channels
        (only its first block is kept, as the noisy-label stem)."""
        super().__init__()
        if not (hasattr(unet, "encoder") and hasattr(unet, "decoder") and hasattr(unet.encoder, "stages")
                and hasattr(unet.decoder, "transpconvs")):
            raise TypeError(f"ADNet needs an nnU-Net U-Net with encoder.stages and a UNetDecoder; got "
                            f"{type(unet).__name__}. Use a PlainConvUNet or ResidualEncoderUNet configuration.")
        self.num_classes = num_classes
        self.encoder = unet.encoder
        self.decoder = unet.decoder  # D_theta
        _detach_encoder_reference(self.decoder, self.encoder)
        self.decoder.deep_supervision = False
        _freeze_deep_supervision_heads(self.decoder)
        self.decoder_psi = self._twin(self.decoder)
        self.psi_deep_supervision = psi_deep_supervision
        if psi_deep_supervision:
            self.decoder_psi.seg_layers.requires_grad_(True)
            self.decoder_psi.deep_supervision = True
        self.difficulty = DifficultyWeights(num_classes)
        self.add_diffusion_stream(noisy_unet)

    def add_diffusion_stream(self, noisy_unet: Callable[[], nn.Module]) -> None:
        """D_xi, the image+noisy-label stem and the timestep embedding with its per-stage projections."""
        self.decoder_xi = self._twin(self.decoder)
        noisy_encoder = noisy_unet().encoder
        self.stem_diffusion = noisy_encoder.stem if getattr(noisy_encoder, "stem", None) is not None \
            else noisy_encoder.stages[0]
        self.time_embedding = TimestepEmbedding()
        self.temb_encoder = nn.ModuleList(nn.Linear(TIME_EMBED_DIM, c) for c in self.encoder.output_channels)
        self.temb_decoder_xi = nn.ModuleList(
            nn.Linear(TIME_EMBED_DIM, c) for c in list(self.encoder.output_channels[:-1])[::-1])

    @property
    def ema_sources(self) -> List[nn.Module]:
        """The decoders D_theta follows: theta <- m theta + (1 - m) mean(their parameters)."""
        return [self.decoder_xi, self.decoder_psi]

    def _twin(self, decoder: nn.Module) -> nn.Module:
        """A decoder with ``decoder``'s weights (module docstring: why the decoders start identical).

        The memo keeps the shared encoder (an attribute of ``decoder``, not a submodule) shared instead of copying it;
        frozen deep-supervision heads stay frozen, since deepcopy keeps ``requires_grad``."""
        return copy.deepcopy(decoder, memo={id(self.encoder): self.encoder})

    @property
    def has_separate_stem(self) -> bool:
        """ResidualEncoderUNet has an encoder ``stem`` before its stages; PlainConvUNet's first stage is the stem."""
        return getattr(self.encoder, "stem", None) is not None

    # ---- building blocks -------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Shared encoder on the image stem: the skips of nnU-Net's encoder."""
        return self.encoder(x)

    def encode_noisy(self, x: torch.Tensor, x_t: torch.Tensor, temb: torch.Tensor) -> List[torch.Tensor]:
        """Shared encoder on the image+noisy-label stem, with the timestep added after every stage."""
        h = self.stem_diffusion(torch.cat([x, x_t], dim=1))
        stages = list(self.encoder.stages) if self.has_separate_stem else list(self.encoder.stages)[1:]
        skips = []
        if not self.has_separate_stem:
            h = _add_time(h, self.temb_encoder[0], temb)
            skips.append(h)
        for stage in stages:
            h = _add_time(stage(h), self.temb_encoder[len(skips)], temb)
            skips.append(h)
        return skips

    def decode_xi(self, skips: List[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        """D_xi: UNetDecoder's computation with the timestep added after every decoder stage."""
        dec = self.decoder_xi
        h = skips[-1]
        for s in range(len(dec.stages)):
            h = dec.transpconvs[s](h)
            h = dec.stages[s](torch.cat((h, skips[-(s + 2)]), 1))
            h = _add_time(h, self.temb_decoder_xi[s], temb)
        return dec.seg_layers[-1](h)

    def denoise(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D_xi's x0 prediction (class logits) from image x, noisy label x_t and timestep t."""
        temb = self.time_embedding(t)
        return self.decode_xi(self.encode_noisy(x, x_t, temb), temb)

    @staticmethod
    def full_resolution(output):
        """The full-resolution logits of a decoder output (the first of a deep-supervision list)."""
        return output[0] if isinstance(output, (list, tuple)) else output

    # ---- the one entry point ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, mode: str = "segment", x_t: Optional[torch.Tensor] = None,
                t: Optional[torch.Tensor] = None, x_unlabeled: Optional[torch.Tensor] = None,
                psi_on_unlabeled: bool = True, theta_on_labeled: bool = False):
        """
        mode "segment": D_theta(E(x)), one logits tensor (inference, nnU-Net validation).
        mode "psi":     D_psi(E(x)) at full resolution (the teacher's logits on an unlabeled batch).
        mode "denoise": D_xi(E_noisy(x, x_t, t)) logits (DDIM sampling).
        mode "train":   dict with the gradient-carrying outputs of one A&D step:
            "xi":      D_xi on the labeled batch's noisy labels (when ``x_t`` and ``t`` are given),
            "psi":     D_psi(E(x)) on the labeled batch (with ``psi_deep_supervision``: nnU-Net's list of
                       outputs, full resolution first),
            "theta":   D_theta on the SAME labeled skips (only with ``theta_on_labeled``),
            "theta_u": D_theta(E(x_u)) on the unlabeled batch,
            "psi_u":   D_psi on the SAME unlabeled skips, without gradient (one encoder pass serves both; left out
                       with ``psi_on_unlabeled=False``, when the teacher saw another view of the batch).
        """
        if mode == "segment":
            return self.decoder(self.encode(x))
        if mode == "psi":
            return self.full_resolution(self.decoder_psi(self.encode(x)))
        if mode == "denoise":
            return self.denoise(x, x_t, t)
        if mode == "train":
            skips = self.encode(x)
            out: Dict[str, torch.Tensor] = {"psi": self.decoder_psi(skips)}
            if theta_on_labeled:
                out["theta"] = self.decoder(skips)
            if x_t is not None:
                out["xi"] = self.denoise(x, x_t, t)
            if x_unlabeled is not None:
                skips_u = self.encode(x_unlabeled)
                out["theta_u"] = self.decoder(skips_u)
                if psi_on_unlabeled:
                    with torch.no_grad():
                        out["psi_u"] = self.full_resolution(self.decoder_psi([s.detach() for s in skips_u]))
            return out
        raise ValueError(f"unknown ADNet mode {mode!r}; expected 'segment', 'psi', 'denoise' or 'train'")


class FrozenUNet(nn.Module):
    """E and D_theta of ``network`` copied with ``unet_weights`` (the ``encoder.*``/``decoder.*`` entries of an ADNet
    state dict) and frozen: ``forward(x)`` is what nnU-Net would predict with those weights, and nothing that trains
    ``network`` moves it. ValueError names the entries when the weights do not fit the network's U-Net."""

    def __init__(self, network: ADNet, unet_weights: Mapping[str, torch.Tensor]):
        super().__init__()
        self.encoder = copy.deepcopy(network.encoder)
        self.decoder = copy.deepcopy(network.decoder, memo={id(network.encoder): self.encoder})
        missing, unexpected = self.load_state_dict(unet_weights, strict=False)
        state = self.state_dict()
        missing = [k for k in missing if state[k].is_floating_point()]
        if missing or unexpected:
            raise ValueError(f"the weights do not fit the network's U-Net (missing: {missing[:3]}, unexpected: "
                             f"{list(unexpected)[:3]})")
        self.zero_grad(set_to_none=True)  # the copies would keep the live network's gradients
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ADNetWithoutDiffusion(ADNet):
    """ADNet without the diffusion stream (the paper's ablation): E, D_theta and D_psi; theta <- EMA of psi."""

    def add_diffusion_stream(self, noisy_unet: Callable[[], nn.Module]) -> None:
        """Adds nothing (and builds no second U-Net)."""

    @property
    def ema_sources(self) -> List[nn.Module]:
        return [self.decoder_psi]

    def denoise(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this ADNet was built without the diffusion stream")


def build_ad_network(plans_manager, configuration_manager, num_input_channels: int, num_classes: int,
                     psi_deep_supervision: bool = False, network_class: type = ADNet) -> ADNet:
    """``network_class`` (ADNet or ADNetWithoutDiffusion) from nnU-Net's plans: nnU-Net builds the U-Net (and,
    for the diffusion stream, a second one whose first block becomes the image+label stem)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    def unet(in_channels: int) -> nn.Module:
        return get_network_from_plans(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, in_channels, num_classes,
            allow_init=True, deep_supervision=False)

    return network_class(unet(num_input_channels), partial(unet, num_input_channels + num_classes), num_classes,
                         psi_deep_supervision=psi_deep_supervision)
