r"""Sampling-based volumetric data augmentation (SVDA) as a batchgeneratorsv2 transform.

For every sample, :math:`k` = ``num_ops`` distinct operations are drawn uniformly without replacement from the
:math:`N` available ones, and each drawn operation is then kept with probability :math:`p` = ``p_op``. Each op is
therefore active with probability :math:`\frac{k}{N} p`, and at most :math:`k` are active. A&D uses
:math:`k = 3`, :math:`p = 0.7` over the six ops

====================  ============================================================================================
``rotation``          angle :math:`\alpha \sim U(-15°, 15°)` about the first spatial axis only (3D: the plane of
                      axes 1 and 2, nnU-Net's in-plane rotation for anisotropic data; 2D: the only rotation)
``scaling``           isotropic zoom factor :math:`s \sim U(0.7, 1.0)` (batchgeneratorsv2 convention: :math:`s < 1`
                      samples a smaller region, so structures get larger)
``blur``              Gaussian blur, :math:`\sigma \sim U(0.7, 1.3)` voxels, same on all axes, per channel
``brightness``        :math:`x \leftarrow b\,x`, :math:`b \sim U(0.7, 1.3)` per channel
``contrast``          :math:`x \leftarrow \mathrm{clip}(\bar x + c (x - \bar x), \min x, \max x)`,
                      :math:`c \sim U(0.7, 1.3)` per channel
``gamma``             :math:`x \leftarrow \big(\frac{x - \min}{\max - \min}\big)^{\gamma} (\max - \min) + \min`,
                      :math:`\gamma \sim U(0.7, 1.3)` per channel, then mean and std restored; no inversion
====================  ============================================================================================

The spatial ops are merged into one batchgeneratorsv2 ``SpatialTransform`` that also center-crops nnU-Net's larger
loader patch to ``patch_size`` (nnU-Net's loader has already placed that patch randomly). It always runs, so with no
spatial op active it is a plain center crop. The segmentation follows the spatial op only; outside the image it is
padded with -1, which nnU-Net's ``RemoveLabelTansform(-1, 0)`` later maps to background, as in nnU-Net's own
pipeline. The intensity ops then run on the cropped image, in the order they were drawn.

As in batchgeneratorsv2, :meth:`SVDATransform.get_parameters` samples everything (from ``numpy.random`` and
``torch``'s global generators, which nnU-Net seeds per worker) and :meth:`SVDATransform.apply` only applies it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform

ALL_OPS: Tuple[str, ...] = ("rotation", "scaling", "blur", "brightness", "contrast", "gamma")
SPATIAL_OPS: Tuple[str, ...] = ("rotation", "scaling")
MAX_ROTATION = math.radians(15.0)
SCALING_RANGE = (0.7, 1.0)
INTENSITY_RANGE = (0.7, 1.3)

# batchgeneratorsv2 modules whose transforms are randomized intensity/noise augmentations: SVDA replaces them.
_INTENSITY_MODULE_PREFIXES = (
    "batchgeneratorsv2.transforms.intensity.",
    "batchgeneratorsv2.transforms.noise.",
    "batchgeneratorsv2.transforms.local.",
)


def _rotation_about_first_axis(image: torch.Tensor, dim: int) -> float:
    """SpatialTransform's per-axis angle sampler: U(-15°, 15°) for the rotation about the first spatial axis, else 0.

    batchgeneratorsv2 rotates about axis 0 with angle[0] in 3D; in 2D it uses only the last angle.
    """
    spatial_dims = image.ndim - 1
    rotating_angle_index = 0 if spatial_dims == 3 else spatial_dims - 1
    return float(np.random.uniform(-MAX_ROTATION, MAX_ROTATION)) if dim == rotating_angle_index else 0.0


def _spatial_transform(patch_size: Tuple[int, ...], rotate: bool, scale: bool) -> SpatialTransform:
    return SpatialTransform(
        patch_size, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
        p_rotation=float(rotate), rotation=_rotation_about_first_axis, p_rot_per_axis=1,
        p_scaling=float(scale), scaling=SCALING_RANGE, p_synchronize_scaling_across_axes=1,
        bg_style_seg_sampling=False, border_mode_seg="constant", padding_value_seg=-1,
    )


def _intensity_transform(name: str) -> BasicTransform:
    if name == "blur":
        return GaussianBlurTransform(blur_sigma=INTENSITY_RANGE, synchronize_channels=False, synchronize_axes=True,
                                     p_per_channel=1)
    if name == "brightness":
        return MultiplicativeBrightnessTransform(multiplier_range=INTENSITY_RANGE, synchronize_channels=False,
                                                 p_per_channel=1)
    if name == "contrast":
        return ContrastTransform(contrast_range=INTENSITY_RANGE, preserve_range=True, synchronize_channels=False,
                                 p_per_channel=1)
    if name == "gamma":
        return GammaTransform(gamma=INTENSITY_RANGE, p_invert_image=0, synchronize_channels=False, p_per_channel=1,
                              p_retain_stats=1)
    raise ValueError(f"unknown SVDA op {name!r}; choose from {ALL_OPS}")


class SVDATransform(BasicTransform):
    r"""SVDA: :math:`k`-of-:math:`N` random ops, each kept with probability :math:`p`, plus the crop to ``patch_size``.

    Takes ``image`` ``(C, X, Y[, Z])`` and optionally ``segmentation`` / ``regression_target`` torch tensors as
    nnU-Net's loader passes them (``transforms(image=..., segmentation=...)``); see the module docstring.

    Args:
        patch_size: output spatial size (2 or 3 entries); the input may be larger (it is center-cropped).
        num_ops: :math:`k`, how many distinct ops are drawn per sample (1..len(ops)).
        p_op: :math:`p`, probability that each drawn op is applied.
        ops: subset of ``ALL_OPS`` to draw from; default all six.
    """

    def __init__(self, patch_size: Sequence[int], num_ops: int = 3, p_op: float = 0.7,
                 ops: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        ops = tuple(ALL_OPS if ops is None else ops)
        unknown = [o for o in ops if o not in ALL_OPS]
        if unknown or len(set(ops)) != len(ops) or not ops:
            raise ValueError(f"ops must be distinct names from {ALL_OPS}, got {ops}")
        if not 1 <= num_ops <= len(ops):
            raise ValueError(f"num_ops must lie in [1, {len(ops)}], got {num_ops}")
        if not 0.0 <= p_op <= 1.0:
            raise ValueError(f"p_op must lie in [0, 1], got {p_op}")
        if len(patch_size) not in (2, 3):
            raise ValueError(f"patch_size must have 2 or 3 entries, got {tuple(patch_size)}")
        self.patch_size = tuple(int(s) for s in patch_size)
        self.num_ops = num_ops
        self.p_op = p_op
        self.ops = ops
        # one SpatialTransform per (rotate, scale) combination: each has fixed probabilities, so the per-sample op
        # choice only selects an instance and never mutates one
        self._spatial: Dict[Tuple[bool, bool], SpatialTransform] = {
            (r, s): _spatial_transform(self.patch_size, r, s) for r in (False, True) for s in (False, True)}
        self._intensity: Dict[str, BasicTransform] = {o: _intensity_transform(o) for o in ops if o not in SPATIAL_OPS}

    def get_parameters(self, **data_dict) -> dict:
        """Sample the active ops and all their random parameters.

        Returns ``{'ops': active op names in application order (spatial ones first), 'spatial_key': (rotate, scale),
        'spatial': SpatialTransform parameters, 'intensity': [(name, parameters), ...]}``.
        """
        image = data_dict["image"]
        if image.ndim - 1 != len(self.patch_size):
            raise ValueError(f"image has {image.ndim - 1} spatial dims, patch_size {self.patch_size} has "
                             f"{len(self.patch_size)}")
        drawn = [self.ops[i] for i in np.random.choice(len(self.ops), self.num_ops, replace=False)]
        active = [o for o in drawn if np.random.uniform() < self.p_op]
        spatial_key = ("rotation" in active, "scaling" in active)
        spatial_params = self._spatial[spatial_key].get_parameters(**data_dict)
        # intensity parameters depend only on the channel count, which cropping keeps
        intensity = [(o, self._intensity[o].get_parameters(**data_dict)) for o in active if o not in SPATIAL_OPS]
        ordered = [o for o in SPATIAL_OPS if o in active] + [o for o, _ in intensity]
        return {"ops": tuple(ordered), "spatial_key": spatial_key, "spatial": spatial_params, "intensity": intensity}

    def apply(self, data_dict: dict, **params) -> dict:
        data_dict = self._spatial[params["spatial_key"]].apply(data_dict, **params["spatial"])
        for name, op_params in params["intensity"]:
            data_dict = self._intensity[name].apply(data_dict, **op_params)
        return data_dict


def _is_random_intensity(transform: BasicTransform) -> bool:
    """True for nnU-Net's randomized intensity / noise / low-resolution augmentations, wrapped or bare."""
    inner = transform.transform if isinstance(transform, RandomTransform) else transform
    return isinstance(inner, SimulateLowResolutionTransform) or type(inner).__module__.startswith(
        _INTENSITY_MODULE_PREFIXES)


def svda_training_transforms(base: ComposeTransforms, patch_size: Sequence[int], num_ops: int = 3,
                             p_op: float = 0.7) -> ComposeTransforms:
    """Rewrite nnU-Net's training pipeline to use SVDA.

    Removes nnU-Net's ``SpatialTransform`` (with its dummy-2D ``Convert3DTo2DTransform`` /
    ``Convert2DTo3DTransform`` pair) and every randomized intensity, noise and low-resolution transform
    (``RandomTransform``-wrapped or bare), puts one :class:`SVDATransform` first, and keeps every other transform
    (mirroring, masking, ``RemoveLabelTansform``, cascade and region conversions, deep-supervision downsampling, ...)
    in its original order. ``base`` is not modified.

    Raises:
        ValueError: if ``base`` contains no ``SpatialTransform``: it is then not nnU-Net's training pipeline, and
            SVDA would add a crop where none was.
    """
    if not isinstance(base, ComposeTransforms):
        raise ValueError(f"base must be a ComposeTransforms, got {type(base).__name__}")
    kept: List[BasicTransform] = []
    found_spatial = False
    for t in base.transforms:
        if isinstance(t, SpatialTransform):
            found_spatial = True
        elif not isinstance(t, (Convert3DTo2DTransform, Convert2DTo3DTransform)) and not _is_random_intensity(t):
            kept.append(t)
    if not found_spatial:
        raise ValueError("base has no SpatialTransform; pass nnUNetTrainer.get_training_transforms' pipeline")
    return ComposeTransforms([SVDATransform(patch_size, num_ops=num_ops, p_op=p_op)] + kept)
