"""Simulated scanners ("vendors"): :class:`ShiftParams` (one acquisition-like shift), the named presets of
:func:`vendor_presets` and :func:`apply_shift`, the shift applied to one image.
:mod:`ad_nnunet.dataset_conversion.domain_dataset` builds domain-shift datasets with them (docs/domains.md).
"""
import dataclasses
from itertools import product
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from numpy.polynomial import legendre
from scipy.ndimage import gaussian_filter

from ad_nnunet.errors import ADInputError

_BIAS_ORDER = 3  # Legendre degree of the bias field: smooth over the field of view, like a receive-coil profile.


@dataclasses.dataclass(frozen=True)
class ShiftParams:
    """Parameters of one acquisition-like shift (a simulated scanner/"vendor"); applied by :func:`apply_shift`.

    As in batchgeneratorsv2, sampling/choosing parameters is separate from applying them: a domain is one
    ``ShiftParams``; the only per-case randomness (the noise) comes from :func:`apply_shift`'s ``rng_seed``.

    * ``gamma`` (> 0): non-linear contrast change of the normalised intensities, ``u -> u ** gamma``
      (< 1 brightens mid-tones, > 1 darkens them).
    * ``bias_field_strength`` (>= 0) and ``bias_field_seed``: multiplicative field ``exp(strength * f)`` with
      ``f`` a fixed (by the seed) smooth field, ``max |f| = 1``; the field is a property of the "scanner", so it is
      the same for every case of a domain.
    * ``noise_std`` (>= 0): std of additive Gaussian noise as a fraction of the image's intensity std.
    * ``blur_sigma_mm`` (>= 0): Gaussian point-spread function in millimetres (resolution loss), converted per axis
      with the voxel spacing.
    * ``contrast_inversion``: ``u -> 1 - u`` (an extreme shift, e.g. opposite tissue polarity).
    * ``intensity_scale``, ``intensity_offset``: final affine change ``u -> scale * u + offset`` in normalised units
      (receiver gain / windowing; z-score normalisation removes it almost entirely).
    """

    gamma: float = 1.0
    bias_field_strength: float = 0.0
    bias_field_seed: int = 0
    noise_std: float = 0.0
    blur_sigma_mm: float = 0.0
    contrast_inversion: bool = False
    intensity_scale: float = 1.0
    intensity_offset: float = 0.0

    def __post_init__(self):
        def bad(name, rule):
            raise ADInputError(f"ShiftParams.{name}={getattr(self, name)!r} is invalid: it must be {rule}. "
                               f"Fix: pass a {rule} value for {name}.")

        for name in ("gamma", "bias_field_strength", "noise_std", "blur_sigma_mm", "intensity_scale",
                     "intensity_offset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                bad(name, "finite number")
        if self.gamma <= 0:
            bad("gamma", "positive")
        for name in ("bias_field_strength", "noise_std", "blur_sigma_mm"):
            if getattr(self, name) < 0:
                bad(name, "non-negative")
        if isinstance(self.bias_field_seed, bool) or not isinstance(self.bias_field_seed, (int, np.integer)):
            bad("bias_field_seed", "integer")
        if not isinstance(self.contrast_inversion, (bool, np.bool_)):
            bad("contrast_inversion", "boolean (true/false)")

    @property
    def is_identity(self) -> bool:
        """True if :func:`apply_shift` would return the image unchanged (up to float rounding)."""
        return (self.gamma == 1 and self.bias_field_strength == 0 and self.noise_std == 0
                and self.blur_sigma_mm == 0 and not self.contrast_inversion and self.intensity_scale == 1
                and self.intensity_offset == 0)


def vendor_presets() -> Dict[str, ShiftParams]:
    """Named, plausible simulated scanners ("vendors"), from mild to extreme.

    * ``identity``: the reference scanner, no change.
    * ``vendorB``: gamma 0.7, bias field 0.3 (seed 1), noise 0.03 -- brighter mid-tones and strong coil shading
      (surface-coil receive profile), mildly noisier.
    * ``vendorC``: gamma 1.4, blur 1.0 mm, noise 0.05 -- darker mid-tones, lower in-plane resolution and more
      noise (a low-field / fast-protocol scanner).
    * ``vendorD``: contrast inversion -- an extreme polarity shift (bright structures become dark), a stress test
      that intensity augmentation alone cannot bridge.
    * ``vendorE``: intensity scale 0.6, offset 0.1, bias field 0.15 (seed 2) -- mostly a receiver-gain/windowing
      change, which nnU-Net's z-score normalisation largely removes: a control where models should barely degrade.
    * ``vendorF``: gamma 1.2, bias field 0.4 (seed 3), blur 2.0 mm, noise 0.08 -- a severely degraded protocol.
    """
    return {
        "identity": ShiftParams(),
        "vendorB": ShiftParams(gamma=0.7, bias_field_strength=0.3, bias_field_seed=1, noise_std=0.03),
        "vendorC": ShiftParams(gamma=1.4, blur_sigma_mm=1.0, noise_std=0.05),
        "vendorD": ShiftParams(contrast_inversion=True),
        "vendorE": ShiftParams(intensity_scale=0.6, intensity_offset=0.1, bias_field_strength=0.15,
                               bias_field_seed=2),
        "vendorF": ShiftParams(gamma=1.2, bias_field_strength=0.4, bias_field_seed=3, blur_sigma_mm=2.0,
                               noise_std=0.08),
    }


def _bias_field(shape: Sequence[int], seed: int) -> np.ndarray:
    """``f(r) = g(r) / max|g|``, ``g = h - mean(h)``, ``h(r) = sum_{|k| <= 3} c_k prod_i P_{k_i}(r_i)``.

    ``P_n`` are Legendre polynomials, ``r_i`` in [-1, 1] the voxel centres over the field of view of axis ``i``
    and ``c_k ~ U(-1, 1)`` drawn from ``seed``: a smooth field that depends on the field of view, not the voxel size.
    """
    rng = np.random.default_rng(seed)
    coords = [(np.arange(n) + 0.5) / n * 2 - 1 for n in shape]
    basis = [np.stack([legendre.legval(c, np.eye(_BIAS_ORDER + 1)[d]) for d in range(_BIAS_ORDER + 1)])
             for c in coords]
    field = np.zeros(tuple(shape))
    for degrees in product(range(_BIAS_ORDER + 1), repeat=len(shape)):
        if sum(degrees) > _BIAS_ORDER:
            continue
        term = np.ones(())
        for axis, d in enumerate(degrees):
            term = np.multiply.outer(term, basis[axis][d])
        field += rng.uniform(-1, 1) * term
    field -= field.mean()
    peak = np.abs(field).max()
    return field / peak if peak > 0 else field


def apply_shift(image: np.ndarray, spacing: Sequence[float], params: ShiftParams, rng_seed: int) -> np.ndarray:
    """Apply one acquisition-like shift to a single-channel image; same inputs and seed give bit-identical output.

    ``spacing`` is in millimetres in the axis order of ``image`` (numpy order: z, y, x for a SimpleITK array).
    With ``p1, p99`` the 1st/99th intensity percentiles of ``x = image`` (min/max if they coincide, range 1 for a
    constant image) and ``R = p99 - p1``:

    1. robust min-max normalisation ``u0 = (x - p1) / R`` (98% of voxels in [0, 1]; the tails are kept, not clipped);
    2. gamma ``u1 = sign(u0) |u0| ** gamma`` (monotone, maps [0, 1] onto itself);
    3. bias field ``u2 = u1 * exp(s * f(r))``, ``s = bias_field_strength`` and ``f`` the smooth Legendre field of
       degree 3 fixed by ``bias_field_seed`` with ``max |f| = 1`` (so the gain lies in ``[e^-s, e^s]``);
    4. blur ``u3 = G_sigma * u2``, Gaussian with ``sigma_i = blur_sigma_mm / spacing_i`` voxels (anisotropic-aware:
       a 1 mm blur hardly touches 10 mm slices);
    5. noise ``u4 = u3 + n``, ``n ~ N(0, (noise_std * std(u0))^2)`` i.i.d. from ``rng_seed`` (Gaussian, not Rician);
    6. inversion ``u5 = 1 - u4`` if ``contrast_inversion`` else ``u4``;
    7. affine ``u6 = intensity_scale * u5 + intensity_offset``;
    8. back to the original scale ``y = p1 + R * u6`` (so the noise std is ``noise_std * std(x) * intensity_scale``
       in image units), cast to ``image.dtype``: integer images are rounded and clipped to their dtype's range
       (noise on a zero background of an unsigned image is half-rectified), float images are not clipped.
    """
    image = np.asarray(image)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != image.ndim or any(s <= 0 for s in spacing):
        raise ADInputError(f"apply_shift got spacing {spacing} for an image of shape {image.shape}. "
                           f"Fix: pass one positive spacing (mm) per image axis, in the array's axis order.")
    x = image.astype(np.float64)
    p1, p99 = np.percentile(x, [1, 99])
    if p99 <= p1:
        p1, p99 = x.min(), x.max()
    scale = p99 - p1 if p99 > p1 else 1.0
    u0 = (x - p1) / scale
    u = np.sign(u0) * np.abs(u0) ** params.gamma if params.gamma != 1 else u0
    if params.bias_field_strength > 0:
        u = u * np.exp(params.bias_field_strength * _bias_field(u.shape, params.bias_field_seed))
    if params.blur_sigma_mm > 0:
        u = gaussian_filter(u, sigma=[params.blur_sigma_mm / s for s in spacing], mode="nearest")
    if params.noise_std > 0:
        u = u + np.random.default_rng(rng_seed).normal(0.0, params.noise_std * u0.std(), size=u.shape)
    if params.contrast_inversion:
        u = 1.0 - u
    y = p1 + scale * (params.intensity_scale * u + params.intensity_offset)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(image.dtype)
    return y.astype(image.dtype)


def resolve_shift(name: str, value) -> Tuple[Optional[str], ShiftParams]:
    """``(preset name or None, ShiftParams)`` of domain ``name`` from a ShiftParams, a preset name or a dict of
    ShiftParams fields."""
    if isinstance(value, ShiftParams):
        return None, value
    presets = vendor_presets()
    if isinstance(value, str):
        if value not in presets:
            raise ADInputError(f"Domain {name!r}: unknown preset {value!r}. Fix: use one of {sorted(presets)} or "
                               f"explicit ShiftParams fields.")
        return value, presets[value]
    if isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(ShiftParams)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ADInputError(f"Domain {name!r}: unknown shift parameter(s) {unknown}. Fix: use only "
                               f"{sorted(fields)}.")
        return None, ShiftParams(**value)
    raise ADInputError(f"Domain {name!r}: cannot use {value!r} as shift. Fix: pass a ShiftParams, a preset name "
                       f"({sorted(presets)}) or a dict of ShiftParams fields.")
