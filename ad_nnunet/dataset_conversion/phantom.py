"""Synthetic 3D phantom datasets in nnU-Net raw layout (for tests, demos and CI).

Each case is a random ellipsoidal "body" (soft tissue) in air (exact zeros, so nnU-Net's nonzero cropping acts)
containing three structures with very different sizes (class imbalance):

* label 1 ``organ``: a large ellipsoid ``E(c, r)``, ``{x : sum_i ((x_i - c_i) / r_i)^2 <= 1}`` (random ``c, r``),
* label 2 ``wall``: the shell ``E(c, r + t) \\ E(c, r)`` around it (thickness ``t`` = 1..2 voxels),
* label 3 ``lesion``: a small ellipsoid (radius 1.5..3 voxels) elsewhere in the body.

Intensities: tissue 100, organ 180, wall 60, lesion 260 (each +-10% per case), a smooth multiplicative bias field
``b(x) = 1 + 0.1 * sin(<w, x> + phi)`` and Gaussian noise ``N(0, sigma^2)``, sigma = 8, inside the body.

Domain shift: a domain name ``d`` maps (seeded by ``crc32(d)`` and ``seed``) to
``I' = scale * (I / 255)^gamma * 255 + offset + N(0, (noise_factor * sigma)^2)`` inside the body, with
scale in [0.6, 1.5], offset in [-40, 40], gamma in [0.7, 1.4], noise_factor in [0.5, 2]. Domain ``"A"`` is the
reference (scale 1, offset 0, gamma 1, noise_factor 1).
"""
import os
import zlib
from typing import Dict, Sequence, Tuple

import numpy as np

from ad_nnunet.data.raw import UNLABELED_DIRNAME
from ad_nnunet.errors import ADInputError
from ad_nnunet.publishing import new_dataset_folder, staged_dataset, write_json_atomic

LABELS = {"background": 0, "organ": 1, "wall": 2, "lesion": 3}
_BASE_INTENSITY = {0: 100.0, 1: 180.0, 2: 60.0, 3: 260.0}
_NOISE_SIGMA = 8.0


def domain_shift_params(domain: str, seed: int = 0) -> Dict[str, float]:
    """The intensity shift of one domain: ``scale, offset, gamma, noise_factor`` (``"A"`` is the identity)."""
    if domain == "A":
        return {"scale": 1.0, "offset": 0.0, "gamma": 1.0, "noise_factor": 1.0}
    # crc32, not hash(): Python's str hash is salted per process, which would break determinism.
    rs = np.random.RandomState((zlib.crc32(domain.encode()) + 7919 * seed) % (2 ** 32))
    return {"scale": float(rs.uniform(0.6, 1.5)), "offset": float(rs.uniform(-40, 40)),
            "gamma": float(rs.uniform(0.7, 1.4)), "noise_factor": float(rs.uniform(0.5, 2.0))}


def _ellipsoid(grid, center, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def make_phantom_case(shape: Tuple[int, int, int], spacing: Tuple[float, float, float], domain: str,
                      rs: np.random.RandomState, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """One case: ``(image float32, label uint8)``, both of ``shape`` (numpy axis order z, y, x).

    Radii are drawn in millimetres and converted with ``spacing`` so that the anatomy is isotropic in world space.
    """
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=float)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    extent_mm = np.asarray(shape) * sp
    # body: ellipsoid filling 75..95% of the field of view
    body_r = extent_mm / 2 * rs.uniform(0.75, 0.95, 3) / sp
    body_c = np.asarray(shape) / 2 - 0.5 + rs.uniform(-0.05, 0.05, 3) * np.asarray(shape)
    body = _ellipsoid(grid, body_c, body_r)
    # organ: a large blob inside the body, offset from the body centre
    organ_r_mm = min(extent_mm) * rs.uniform(0.14, 0.22) * rs.uniform(0.8, 1.2, 3)
    organ_r = organ_r_mm / sp
    organ_c = body_c + rs.uniform(-0.25, 0.25, 3) * body_r
    thickness = rs.uniform(1.0, 2.0)
    organ = _ellipsoid(grid, organ_c, organ_r) & body
    shell = _ellipsoid(grid, organ_c, organ_r + thickness) & body & ~organ
    # lesion: small blob, placed in the body but away from the organ+shell (rejection sampling, deterministic)
    lesion_r = rs.uniform(1.5, 3.0) * min(sp) / sp
    lesion = np.zeros(shape, dtype=bool)
    for _ in range(50):
        c = body_c + rs.uniform(-0.6, 0.6, 3) * body_r
        cand = _ellipsoid(grid, c, lesion_r) & body
        if cand.any() and not (cand & (organ | shell)).any():
            lesion = cand
            break

    label = np.zeros(shape, dtype=np.uint8)
    label[shell] = LABELS["wall"]
    label[organ] = LABELS["organ"]
    label[lesion] = LABELS["lesion"]

    base = np.array([_BASE_INTENSITY[i] for i in range(4)], dtype=np.float32) * rs.uniform(0.9, 1.1, 4)
    image = base[label].astype(np.float32)
    w = rs.uniform(-0.15, 0.15, 3)
    bias = 1.0 + 0.1 * np.sin(sum(wi * g for wi, g in zip(w, grid)) + rs.uniform(0, 2 * np.pi))
    p = domain_shift_params(domain, seed)
    image = image * bias
    image = p["scale"] * 255.0 * np.clip(image / 255.0, 0, None) ** p["gamma"] + p["offset"]
    image = image + rs.normal(0, _NOISE_SIGMA * p["noise_factor"], shape)
    # air is exactly zero (nonzero cropping); shift tissue so no body voxel is accidentally zero
    image = np.where(body, np.maximum(image, 1.0), 0.0).astype(np.float32)
    return image, label


def _write(arr: np.ndarray, spacing, path: str) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(s) for s in spacing[::-1]])  # SimpleITK wants (x, y, z)
    sitk.WriteImage(img, path, True)


def make_phantom_dataset(raw_root: str, dataset_id: int = 990, name: str = "ADPhantom", num_labeled: int = 8,
                         num_unlabeled: int = 16, num_test: int = 4, shape: Sequence[int] = (32, 48, 48),
                         spacing: Sequence[float] = (2.0, 1.0, 1.0), domains: Sequence[str] = ("A",),
                         seed: int = 0, overwrite: bool = False) -> str:
    """Write ``<raw_root>/Dataset<id>_<name>`` and return its path.

    Layout: ``imagesTr``/``labelsTr`` (``phantom_XXX``), ``imagesUnlabeled`` (``unl_XXX``, no labels written anywhere),
    ``imagesTs``/``labelsTs`` (``test_XXX``), dataset.json with ``"ad_domains"`` for every case. Case ``i`` of each
    group belongs to ``domains[i % len(domains)]``. ``shape``/``spacing`` are in numpy order (z, y, x).
    Deterministic for a given ``seed``.
    """
    if num_labeled < 1:
        raise ADInputError(f"num_labeled={num_labeled}: a dataset needs at least one labeled case. Fix: use >= 1.")
    if len(domains) == 0:
        raise ADInputError("domains is empty. Fix: give at least one domain name, e.g. A.")
    target = new_dataset_folder(raw_root, dataset_id, name, overwrite)
    with staged_dataset(target) as staged:
        for sub in ("imagesTr", "labelsTr", UNLABELED_DIRNAME, "imagesTs", "labelsTs"):
            os.makedirs(staged / sub)
        rs = np.random.RandomState(seed)
        ad_domains = {}
        groups = (("phantom", num_labeled, "imagesTr", "labelsTr"), ("unl", num_unlabeled, UNLABELED_DIRNAME, None),
                  ("test", num_test, "imagesTs", "labelsTs"))
        for prefix, n, img_dir, lab_dir in groups:
            for i in range(n):
                case = f"{prefix}_{i:03d}"
                domain = domains[i % len(domains)]
                image, label = make_phantom_case(tuple(shape), tuple(spacing), domain, rs, seed)
                _write(image, spacing, os.path.join(staged, img_dir, f"{case}_0000.nii.gz"))
                if lab_dir is not None:
                    _write(label, spacing, os.path.join(staged, lab_dir, f"{case}.nii.gz"))
                ad_domains[case] = domain
        write_json_atomic(staged / "dataset.json", {
            "name": name, "description": "ad-nnunet synthetic phantom (organ, wall, lesion)",
            "channel_names": {"0": "MRI"}, "labels": dict(LABELS), "numTraining": num_labeled,
            "file_ending": ".nii.gz", "ad_domains": ad_domains})
    return str(target)
