"""Tests for ad_nnunet.plans_presets on a tiny dataset planned by nnU-Net itself (fingerprint + ExperimentPlanner)."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ad_nnunet import plans_presets
from ad_nnunet.entrypoints.preparation import apply_preset_entry
from ad_nnunet.errors import ADInputError
from ad_nnunet.plans_presets import (apply_preset, available_presets, load_preset, preset_needs_preprocessing,
                                     presets_dir)

DATASET_ID = 880  # clear of conftest's phantom (990) and its copies (900, 901, ...)
DATASET = "Dataset880_ADPresetTest"
SPACING_XYZ = (1.0, 1.0, 2.0)  # anisotropic: the planner must not pool the 2 mm axis at first


@pytest.fixture(scope="module")
def nnunet_env(nnunet_dirs):
    """A planned (not preprocessed) 4-case anisotropic dataset in conftest's nnU-Net folders; yields its plans file."""
    raw = Path(nnunet_dirs["raw"]) / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        shape = (24 + 2 * i, 48, 56)  # (z, y, x) array order
        img = rng.normal(size=shape).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        lab[6:18, 12:36, 14:42] = 1
        img[lab == 1] += 2
        for arr, rel in ((img, f"imagesTr/case{i}_0000.nii.gz"), (lab, f"labelsTr/case{i}.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing(SPACING_XYZ)
            sitk.WriteImage(im, str(raw / rel))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "fg": 1}, "numTraining": 4,
        "file_ending": ".nii.gz"}))
    extract_fingerprints([DATASET_ID], num_processes=1, show_progress_bar=False, verbose=False)
    with pytest.MonkeyPatch.context() as mp:
        # The planner calls torch.set_num_threads(get_allowed_n_proc_DA()), which fails for conftest's 0.
        mp.setenv("nnUNet_n_proc_DA", "1")
        plan_experiments([DATASET_ID])
    preprocessed = Path(nnunet_dirs["preprocessed"]) / DATASET
    plans_file = preprocessed / "nnUNetPlans.json"
    shutil.copy(plans_file, preprocessed / "nnUNetPlans.orig.json")
    yield plans_file
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(preprocessed, ignore_errors=True)


@pytest.fixture
def plans_file(nnunet_env):
    """The planned dataset with nnU-Net's original plans (each test starts from them)."""
    shutil.copy(nnunet_env.parent / "nnUNetPlans.orig.json", nnunet_env)
    return nnunet_env


def _check_config(plans_file, name, preset):
    """Checks shared by all presets; returns (configuration, parent configuration)."""
    pm = PlansManager(str(plans_file))  # nnU-Net's own manager resolves inherits_from
    cm = pm.get_configuration(name)
    parent = pm.get_configuration(preset["inherits_from"])
    kw = cm.network_arch_init_kwargs
    n = kw["n_stages"]
    assert 2 <= n <= preset["max_stages"]
    assert kw["features_per_stage"] == [min(preset["base_features"] * 2 ** i, preset["max_features"])
                                        for i in range(n)]
    assert len(kw["kernel_sizes"]) == len(kw["strides"]) == len(kw["n_conv_per_stage"]) == n
    assert len(kw["n_conv_per_stage_decoder"]) == n - 1
    divisor = np.prod(np.array(kw["strides"]), axis=0)
    assert all(p % d == 0 for p, d in zip(cm.patch_size, divisor))
    assert cm.batch_size == preset["batch_size"]
    # Everything not set by the preset is inherited.
    assert cm.normalization_schemes == parent.normalization_schemes
    assert cm.configuration["resampling_fn_data_kwargs"] == parent.configuration["resampling_fn_data_kwargs"]
    assert cm.network_arch_class_name == parent.network_arch_class_name
    return cm, parent


def _forward(cm):
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, 2, deep_supervision=True)
    with torch.no_grad():
        out = net(torch.randn(1, 1, *cm.patch_size))
    assert tuple(out[0].shape) == (1, 2, *cm.patch_size)


@pytest.mark.parametrize("preset_name", ["tiny", "tiny_2d"])
def test_tiny_presets_resolve_build_and_run(plans_file, preset_name):
    preset = load_preset(preset_name)
    name = apply_preset(DATASET_ID, preset_name)
    assert name == preset["configuration_name"]
    cm, parent = _check_config(plans_file, name, preset)
    # Same spacing -> the parent's preprocessed data is reused.
    assert cm.data_identifier == parent.data_identifier
    assert cm.spacing == parent.spacing
    assert all(p <= min(preset["max_patch_size"], q) for p, q in zip(cm.patch_size, parent.patch_size))
    if preset_name == "tiny":
        # 2 mm axis first: nnU-Net's rule pools the 1 mm axes first and uses a 1x3x3 kernel there.
        assert cm.network_arch_init_kwargs["strides"][1] == [1, 2, 2]
        assert cm.network_arch_init_kwargs["kernel_sizes"][0] == [1, 3, 3]
    _forward(cm)


def test_spacing_factor_preset_new_identifier_and_bounds(plans_file):
    preset = load_preset("la_cpu")
    name = apply_preset(DATASET, "la_cpu")
    cm, parent = _check_config(plans_file, name, preset)
    assert cm.data_identifier == "nnUNetPlans_3d_cpu"
    assert cm.spacing == pytest.approx([2 * s for s in parent.spacing])
    assert cm.median_image_size_in_voxels == pytest.approx([m / 2 for m in parent.median_image_size_in_voxels])
    for p, m, q, mx in zip(cm.patch_size, parent.median_image_size_in_voxels, parent.patch_size,
                           preset["max_patch_size"]):
        assert p <= min(math.floor(m / 2), q // 2, mx)
    assert preset_needs_preprocessing(DATASET_ID, name)
    _forward(cm)


def test_preprocess_creates_data_at_new_spacing(plans_file, capsys, tmp_path):
    root = plans_file.parent
    assert apply_preset_entry(["-d", str(DATASET_ID), "--preset", "la_cpu", "--preprocess", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert "nnUNetv2_train 880 3d_cpu 0 -tr ADTrainer -p nnUNetPlans" in out
    assert not preset_needs_preprocessing(DATASET_ID, "3d_cpu")
    assert not (root / "nnUNetPlans_3d_fullres").exists()  # the parent was never needed
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    ds = nnUNetDatasetBlosc2(str(root / "nnUNetPlans_3d_cpu"))
    assert sorted(ds.identifiers) == [f"case{i}" for i in range(4)]
    data, seg, _, _ = ds.load_case("case0")
    # case0 is 24 x 48 x 56 voxels at (2, 1, 1) mm; at (4, 2, 2) mm it is 12 x 24 x 28.
    assert tuple(data.shape) == (1, 12, 24, 28) and tuple(seg.shape) == (1, 12, 24, 28)
    # Re-applying with another spacing makes that data stale: it is removed and must be preprocessed again.
    other = tmp_path / "la_cpu_15.json"
    other.write_text(json.dumps({**load_preset("la_cpu"), "spacing_factor": 1.5}))
    apply_preset(DATASET_ID, other, overwrite=True)
    assert not (root / "nnUNetPlans_3d_cpu").exists()
    assert preset_needs_preprocessing(DATASET_ID, "3d_cpu")


def test_acdc_cpu_2d_on_an_acdc_like_dataset(nnunet_dirs):
    """acdc_cpu_2d on a planned 4-case ACDC-like dataset: slices of 256 x 216 pixels at 1.5625 mm, 10 mm apart."""
    dataset_id, name = 881, "Dataset881_ADPresetACDC"
    raw = Path(nnunet_dirs["raw"]) / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :216]
    try:
        for i in range(4):
            img = rng.normal(size=(6, 256, 216)).astype(np.float32)  # (z, y, x)
            lab = np.zeros(img.shape, np.uint8)
            lab[:, (yy - 128) ** 2 + (xx - 108) ** 2 < (20 + i) ** 2] = 3
            img[lab == 3] += 2
            for arr, rel in ((img, f"imagesTr/acdc{i}_0000.nii.gz"), (lab, f"labelsTr/acdc{i}.nii.gz")):
                im = sitk.GetImageFromArray(arr)
                im.SetSpacing((1.5625, 1.5625, 10.0))
                sitk.WriteImage(im, str(raw / rel))
        (raw / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
            "numTraining": 4, "file_ending": ".nii.gz"}))
        extract_fingerprints([dataset_id], num_processes=1, show_progress_bar=False, verbose=False)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("nnUNet_n_proc_DA", "1")
            plan_experiments([dataset_id])
        preset = load_preset("acdc_cpu_2d")
        assert apply_preset(dataset_id, "acdc_cpu_2d") == "2d_cpu"
        cm, parent = _check_config(Path(nnunet_dirs["preprocessed"]) / name / "nnUNetPlans.json", "2d_cpu", preset)
        kw = cm.network_arch_init_kwargs
        assert cm.spacing == parent.spacing == pytest.approx([1.5625, 1.5625])
        assert cm.data_identifier == parent.data_identifier == "nnUNetPlans_2d"  # no new preprocessing
        assert list(cm.patch_size) == [160, 160] and cm.batch_size == 8
        assert kw["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]
        assert kw["features_per_stage"] == [16, 32, 64, 128, 256]
        _forward(cm)
    finally:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(Path(nnunet_dirs["preprocessed"]) / name, ignore_errors=True)


def test_overwrite_protection(plans_file):
    apply_preset(DATASET_ID, "tiny")
    before = plans_file.read_text()
    with pytest.raises(ADInputError, match="already exists.*overwrite"):
        apply_preset(DATASET_ID, "tiny")
    assert plans_file.read_text() == before
    apply_preset(DATASET_ID, "tiny", overwrite=True)
    assert PlansManager(str(plans_file)).get_configuration("3d_tiny").patch_size


def test_invalid_presets(plans_file, tmp_path):
    with pytest.raises(ADInputError) as e:
        apply_preset(DATASET_ID, "no_such_preset")
    assert all(p in str(e.value) for p in ("tiny", "tiny_2d", "la_cpu"))
    base = load_preset("tiny")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**base, "configuration_name": "3d_fullres"}))
    with pytest.raises(ADInputError, match="nnU-Net's own"):
        apply_preset(DATASET_ID, bad, overwrite=True)
    bad.write_text(json.dumps({**base, "max_patch_size": [32, 32]}))
    with pytest.raises(ADInputError, match="3-D"):
        apply_preset(DATASET_ID, bad)
    bad.write_text(json.dumps({**base, "inherits_from": "3d_lowres"}))
    with pytest.raises(ADInputError, match="3d_lowres"):
        apply_preset(DATASET_ID, bad)
    bad.write_text(json.dumps({k: v for k, v in base.items() if k != "batch_size"} | {"batchsize": 2}))
    with pytest.raises(ADInputError, match="batch_size"):
        apply_preset(DATASET_ID, bad)
    assert apply_preset_entry(["-d", str(DATASET_ID), "--preset", "no_such_preset"]) == 2
    assert "nnUNetPlans" in json.loads(plans_file.read_text())["plans_name"]


def test_shipped_presets_are_found_and_valid():
    assert (presets_dir() / "__init__.py").is_file()
    assert set(available_presets()) >= {"tiny", "tiny_2d", "la_cpu", "acdc_cpu_2d"}
    for name in available_presets():
        preset = load_preset(name)
        assert preset["description"]
    assert load_preset("la_cpu")["spacing_factor"] == 2.0
    repo_plans = Path(__file__).resolve().parents[1] / "plans"
    for f in repo_plans.glob("*.json"):
        assert json.loads((presets_dir() / f.name).read_text()) == json.loads(f.read_text())


def test_presets_dir_falls_back_to_repository(monkeypatch):
    # Without the installed package data (a plain source checkout), the repository's plans/ is used.
    monkeypatch.setattr(plans_presets.importlib.util, "find_spec", lambda name: None)
    assert presets_dir() == Path(__file__).resolve().parents[1] / "plans"
    assert "tiny" in available_presets()
