"""Plan presets: add a smaller configuration to an already planned nnU-Net dataset via ``"inherits_from"``.

A preset (``plans/<name>.json``, or any JSON file) has the keys

===================  ==========================================================================================
``description``      what the preset is for (free text)
``configuration_name``  name of the new configuration, e.g. ``"3d_tiny"``
``inherits_from``    the planned parent configuration, e.g. ``"3d_fullres"``
``spacing_factor``   optional, default 1: target spacing = parent spacing x factor (2 halves the resolution)
``max_patch_size``   int (every axis) or list in the configuration's axis order (the order of ``patch_size`` in
                     the plans file, i.e. after nnU-Net's transpose)
``max_stages``       most resolution stages of the U-Net (>= 2)
``base_features``    features of the first stage; stage i has ``min(base_features * 2**i, max_features)``
``max_features``     cap on the features per stage
``batch_size``       batch size
===================  ==========================================================================================

Derivation, with parent spacing :math:`s_P`, parent patch :math:`p_P`, parent median image size :math:`m_P` (voxels)
and spacing factor f:

.. math::

    s = f\\,s_P, \\qquad m = m_P \\odot s_P / s, \\qquad
    b = \\min\\big(\\text{max\\_patch\\_size},\\ \\lfloor m \\rfloor,\\ \\lfloor p_P \\odot s_P / s \\rfloor\\big)

per axis (at least 1): the patch never exceeds the preset, the resampled median image, or the physical extent of
the parent's patch. The topology (strides, kernel sizes) comes from nnU-Net's planner rule
``get_pool_and_conv_props(s, b, min_feature_map_size=4)``, truncated to ``max_stages``; the patch is then rounded
down to a multiple of the product of the strides and the topology recomputed until patch and topology agree (the
patch only shrinks, so this terminates). All other settings (normalization, resampling, network class, norm and
nonlinearity, ``n_conv_per_stage`` values) come from the parent through nnU-Net's own inheritance.

``data_identifier``: the parent's when f == 1 (same spacing and normalization, so the parent's preprocessed data is
reused), otherwise ``"<plans_identifier>_<configuration_name>"``, which nnU-Net must preprocess for this
configuration (``apply_preset(..., preprocess=True)`` / ``--preprocess``).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from pathlib import Path
from typing import Union

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.utilities.dataset_name_id_conversion import (convert_dataset_name_to_id,
                                                           maybe_convert_to_dataset_name)
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ad_nnunet.errors import ADInputError
from ad_nnunet.publishing import write_json_atomic

_REQUIRED = {"configuration_name": str, "inherits_from": str, "max_patch_size": (int, list), "max_stages": int,
             "base_features": int, "max_features": int, "batch_size": int}
_OPTIONAL = {"description": str, "spacing_factor": (int, float)}
# nnU-Net's planner default (ExperimentPlanner.UNet_featuremap_min_edge_length): no pooling below 4 voxels per axis.
_MIN_FEATURE_MAP = 4


def presets_dir() -> Path:
    """The folder with the shipped presets: the installed package data ``ad_nnunet._plans`` if present, else the
    repository's top-level ``plans/`` (source checkout)."""
    spec = importlib.util.find_spec("ad_nnunet._plans")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parents[1] / "plans"


def available_presets() -> list[str]:
    """Names of the shipped presets (file names in :func:`presets_dir` without ``.json``)."""
    return sorted(p.stem for p in presets_dir().glob("*.json"))


def load_preset(preset: Union[str, os.PathLike]) -> dict:
    """Load and validate a preset given by name (``tiny``, ``tiny_2d``, ``la_cpu``, ...) or by path to a JSON file."""
    path = Path(preset)
    if not path.is_file():
        path = presets_dir() / f"{preset}.json"
        if not path.is_file():
            raise ADInputError(f"Unknown preset '{preset}': it is neither a file nor one of the available presets "
                               f"{available_presets()}; pass one of those names or the path to a preset JSON.")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ADInputError(f"Preset file '{path}' is not valid JSON ({e}); fix the file.") from None
    if not isinstance(cfg, dict):
        raise ADInputError(f"Preset file '{path}' must hold a JSON object with the keys "
                           f"{sorted(_REQUIRED)}; fix the file.")
    unknown = set(cfg) - set(_REQUIRED) - set(_OPTIONAL)
    missing = set(_REQUIRED) - set(cfg)
    if unknown or missing:
        raise ADInputError(f"Preset '{path}': missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; "
                           f"a preset has {sorted(_REQUIRED)} and optionally {sorted(_OPTIONAL)}.")
    for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
        if key in cfg and (not isinstance(cfg[key], typ) or isinstance(cfg[key], bool)):
            expected = " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise ADInputError(f"Preset '{path}': '{key}' = {cfg[key]!r} has the wrong type; expected {expected}.")
    mps = cfg["max_patch_size"]
    if not all(isinstance(v, int) and v >= 1 for v in (mps if isinstance(mps, list) else [mps])):
        raise ADInputError(f"Preset '{path}': max_patch_size {mps!r} must be a positive int or a list of them.")
    for key in ("max_stages", "base_features", "max_features", "batch_size"):
        if cfg[key] < (2 if key == "max_stages" else 1):
            raise ADInputError(f"Preset '{path}': '{key}' = {cfg[key]} is too small; a U-Net needs max_stages >= 2 "
                               f"and positive features and batch size.")
    if cfg.get("spacing_factor", 1) <= 0:
        raise ADInputError(f"Preset '{path}': spacing_factor {cfg['spacing_factor']} must be > 0.")
    return cfg


def preprocessed_dataset_folder(dataset_name_or_id: Union[int, str]) -> Path:
    """``$nnUNet_preprocessed/<DatasetXXX_Name>`` of a dataset name or id (nnU-Net's own name resolution)."""
    if not os.environ.get("nnUNet_preprocessed"):
        raise ADInputError("nnUNet_preprocessed is not set; export it (and nnUNet_raw) as for nnU-Net itself.")
    try:
        name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:
        raise ADInputError(f"Dataset '{dataset_name_or_id}' not found ({e}); pass an existing dataset id or "
                           f"name.") from None
    return Path(os.environ["nnUNet_preprocessed"]) / name


def _topology(spacing: list[float], bound: list[int], max_stages: int) -> tuple[list[int], list, list]:
    """Patch size, strides and kernel sizes: nnU-Net's rule on ``bound``, truncated, at its fixed point."""
    patch = list(bound)
    while True:
        _, strides, kernels, _, _ = get_pool_and_conv_props(spacing, patch, _MIN_FEATURE_MAP, 999999)
        strides = [list(map(int, s)) for s in strides[:max_stages]]
        kernels = [list(map(int, k)) for k in kernels[:max_stages]]
        divisor = np.prod(np.array(strides), axis=0)
        new_patch = [int(p // d * d) for p, d in zip(patch, divisor)]
        if new_patch == patch:
            return patch, strides, kernels
        patch = new_patch


def _resize(values, n: int) -> list[int]:
    """The parent's per-stage values for n stages: truncated, or extended by repeating the last one."""
    values = list(values)
    return (values + values[-1:] * n)[:n]


def derive_configuration(plans: dict, preset: dict, plans_identifier: str = "nnUNetPlans") -> dict:
    """The new configuration entry (to store under ``plans['configurations'][preset['configuration_name']]``).

    See the module docstring for the math. Raises ADInputError when the parent does not exist or the preset does
    not fit it.
    """
    parent_name = preset["inherits_from"]
    if parent_name not in plans["configurations"]:
        raise ADInputError(f"Preset '{preset['configuration_name']}' inherits from '{parent_name}', which these plans "
                           f"do not have (configurations: {list(plans['configurations'])}); pick a preset whose "
                           f"inherits_from is one of them (e.g. tiny_2d for '2d').")
    # Resolve the parent's own inheritance with nnU-Net's manager (the parent may itself inherit).
    parent = PlansManager(plans).get_configuration(parent_name).configuration
    arch = parent["architecture"]
    kwargs = arch["arch_kwargs"]
    if not {"n_stages", "features_per_stage", "kernel_sizes", "strides"} <= set(kwargs):
        raise ADInputError(f"Parent configuration '{parent_name}' uses {arch['network_class_name']}, which is not a "
                           f"staged U-Net; presets apply to U-Net plans (PlainConvUNet, ResidualEncoderUNet).")
    dim = len(parent["spacing"])
    mps = preset["max_patch_size"]
    max_patch = [mps] * dim if isinstance(mps, int) else list(mps)
    if len(max_patch) != dim:
        raise ADInputError(f"Preset '{preset['configuration_name']}': max_patch_size {mps} has {len(max_patch)} "
                           f"entries but '{parent_name}' is {dim}-D; give {dim} values or one int.")

    factor = float(preset.get("spacing_factor", 1))
    parent_spacing = np.asarray(parent["spacing"], dtype=np.float64)
    spacing = parent_spacing * factor
    median = np.asarray(parent["median_image_size_in_voxels"], dtype=np.float64) / factor
    parent_extent = np.asarray(parent["patch_size"], dtype=np.float64) / factor
    bound = [max(1, min(int(a), int(math.floor(b + 1e-6)), int(math.floor(c + 1e-6))))
             for a, b, c in zip(max_patch, median, parent_extent)]
    patch, strides, kernels = _topology(spacing.tolist(), bound, preset["max_stages"])
    n = len(strides)
    if n < 2:
        raise ADInputError(f"Preset '{preset['configuration_name']}': a patch of {patch} voxels at spacing "
                           f"{spacing.tolist()} leaves room for no downsampling (each pooled axis needs >= "
                           f"{2 * _MIN_FEATURE_MAP} voxels); raise max_patch_size or lower spacing_factor.")

    new_kwargs = dict(kwargs)
    new_kwargs.update({
        "n_stages": n,
        "features_per_stage": [min(preset["base_features"] * 2 ** i, preset["max_features"]) for i in range(n)],
        "kernel_sizes": kernels,
        "strides": strides,
    })
    for key in ("n_conv_per_stage", "n_blocks_per_stage"):
        if key in kwargs:
            new_kwargs[key] = _resize(kwargs[key], n)
    if "n_conv_per_stage_decoder" in kwargs:
        new_kwargs["n_conv_per_stage_decoder"] = _resize(kwargs["n_conv_per_stage_decoder"], n - 1)

    name = preset["configuration_name"]
    same_spacing = factor == 1.0
    return {
        "inherits_from": parent_name,
        "data_identifier": parent["data_identifier"] if same_spacing else f"{plans_identifier}_{name}",
        "spacing": [float(s) for s in spacing],
        "median_image_size_in_voxels": [round(float(m), 2) for m in median],
        "patch_size": patch,
        "batch_size": preset["batch_size"],
        # inherits_from merges top-level keys only (dict.update), so the architecture is written in full.
        "architecture": {**arch, "arch_kwargs": new_kwargs},
        "ad_preset": {k: preset[k] for k in sorted(preset)},
    }


def preset_needs_preprocessing(dataset_name_or_id: Union[int, str], configuration_name: str,
                               plans_identifier: str = "nnUNetPlans") -> bool:
    """True when the preprocessed data folder of ``configuration_name`` (its data_identifier) has no cases yet."""
    folder = preprocessed_dataset_folder(dataset_name_or_id)
    plans = PlansManager(str(folder / f"{plans_identifier}.json"))
    data_dir = folder / plans.get_configuration(configuration_name).data_identifier
    return not (data_dir.is_dir() and any(data_dir.glob("*.pkl")))


def apply_preset(dataset_name_or_id: Union[int, str], preset: Union[str, os.PathLike],
                 plans_identifier: str = "nnUNetPlans", overwrite: bool = False, *, preprocess: bool = False,
                 num_processes: int = 1) -> str:
    """Add the preset's configuration to ``nnUNet_preprocessed/<Dataset>/<plans_identifier>.json``.

    Args:
        preset: a shipped preset name (see :func:`available_presets`) or a path to a preset JSON.
        overwrite: replace an existing configuration of the same name (else ADInputError). If that changes the
            spacing of a configuration with its own data folder, the now stale folder is removed.
        preprocess: run nnU-Net's preprocessing for the new configuration if its data folder has no cases yet
            (for a preset at the parent's spacing that folder is the parent's, e.g. nnUNetPlans_3d_fullres).
        num_processes: processes for that preprocessing.

    Returns:
        The configuration name, for ``nnUNetv2_train <Dataset> <name> <fold> -tr ... -p <plans_identifier>``.
    """
    cfg = load_preset(preset)
    folder = preprocessed_dataset_folder(dataset_name_or_id)
    plans_file = folder / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise ADInputError(f"Plans file '{plans_file}' does not exist; plan the dataset first "
                           f"(nnUNetv2_plan_and_preprocess -d {dataset_name_or_id}, or -pl/-overwrite_plans_name "
                           f"for other plans) and pass its identifier with -p.")
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    name = cfg["configuration_name"]
    old = plans["configurations"].get(name)
    if old is not None and not overwrite:
        raise ADInputError(f"Configuration '{name}' already exists in '{plans_file}'; pass overwrite=True "
                           f"(--overwrite) to replace it, or give the preset another configuration_name.")
    if old is not None and "inherits_from" not in old:
        raise ADInputError(f"Configuration '{name}' in '{plans_file}' is one of nnU-Net's own (it inherits from "
                           f"nothing); give the preset another configuration_name.")
    new = derive_configuration(plans, cfg, plans_identifier)
    if old is not None:
        # Same data folder, other spacing: its cases no longer match the configuration (nnU-Net's own
        # preprocessing would rmtree it as well).
        prev = PlansManager(plans).get_configuration(name).configuration
        stale = folder / prev["data_identifier"]
        same_spacing = (len(prev["spacing"]) == len(new["spacing"])
                        and np.allclose(prev["spacing"], new["spacing"]))
        if prev["data_identifier"] == new["data_identifier"] and stale.is_dir() and not same_spacing:
            print(f"Removing '{stale}': it was preprocessed at spacing {prev['spacing']}.")
            shutil.rmtree(stale)
    plans["configurations"][name] = new
    write_json_atomic(plans_file, plans, indent=4)
    if preprocess and preset_needs_preprocessing(folder.name, name, plans_identifier):
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess as nnunet_preprocess

        nnunet_preprocess([convert_dataset_name_to_id(folder.name)], plans_identifier, configurations=(name,),
                          num_processes=(num_processes,))
    return name
