"""Tests for ad_nnunet.dataset_conversion.scanner_shift (the shift model) and .domain_dataset (patient grouping, the
dataset writers, adnnunet_domains)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ad_nnunet.dataset_conversion.domain_dataset import (RECIPE_FILENAME, derive_domain_dataset, domain_counts,
                                                        patient_group, simulate_domains)
from ad_nnunet.dataset_conversion.scanner_shift import ShiftParams, apply_shift, vendor_presets
from ad_nnunet.entrypoints.datasets import domains_entry
from ad_nnunet.errors import ADInputError

SHARED = Path(os.environ.get("AD_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
SPACING_XYZ = (1.5, 1.25, 10.0)
ORIGIN = (3.0, -2.0, 7.5)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _volume(rs, shape=(8, 16, 16)):
    """uint16 image: zero background, a bright blob, a ramp (so percentiles are well spread); uint8 label."""
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    blob = ((y - 8) ** 2 + (x - 8) ** 2) < 16 + rs.randint(0, 8)
    image = np.where(x > 1, 200 + 40 * x + 5 * z, 0) + 600 * blob + rs.randint(0, 20, size=shape)
    return image.astype(np.uint16), blob.astype(np.uint8)


def _write(array, path):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    sitk.WriteImage(img, str(path), True)


def make_source(root: Path, n_patients=6, dataset_id=900) -> Path:
    folder = root / f"Dataset{dataset_id:03d}_Syn"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rs = np.random.RandomState(0)
    for p in range(1, n_patients + 1):
        for f in (1, 2):
            case = f"ACDC_patient{p:03d}_frame{f:02d}"
            image, label = _volume(rs)
            _write(image, folder / "imagesTr" / f"{case}_0000.nii.gz")
            _write(label, folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "blob": 1},
        "numTraining": 2 * n_patients, "file_ending": ".nii.gz"}))
    return folder


@pytest.fixture
def src(tmp_path):
    return make_source(tmp_path / "src")


def _cases(folder: Path, sub: str, ending=".nii.gz"):
    if not (folder / sub).is_dir():
        return set()
    names = [f.name[: -len(ending)] for f in (folder / sub).iterdir()]
    return {n[:-5] if sub.startswith("images") else n for n in names}


def _arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ----------------------------------------------------------------------------------------------- the shift model

def _ramp(shape=(8, 32, 32), dtype=np.float32):
    return np.linspace(0, 1000, int(np.prod(shape))).reshape(shape).astype(dtype)


def test_same_seed_bit_identical_different_seed_differs():
    image, _ = _volume(np.random.RandomState(1))
    params = vendor_presets()["vendorF"]
    a = apply_shift(image, (10, 1.25, 1.5), params, rng_seed=7)
    b = apply_shift(image, (10, 1.25, 1.5), params, rng_seed=7)
    c = apply_shift(image, (10, 1.25, 1.5), params, rng_seed=8)
    assert a.dtype == image.dtype and np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_identity_leaves_image_unchanged():
    image, _ = _volume(np.random.RandomState(2))
    assert ShiftParams().is_identity and not vendor_presets()["vendorB"].is_identity
    assert np.array_equal(apply_shift(image, (10, 1, 1), ShiftParams(), 0), image)
    f = np.random.RandomState(3).normal(5, 3, size=(6, 10, 12)).astype(np.float32)
    np.testing.assert_allclose(apply_shift(f, (1, 1, 1), ShiftParams(), 0), f, rtol=1e-6, atol=1e-5)


def test_gamma_is_monotone_and_reshapes_histogram_monotonically():
    image = _ramp()
    means = []
    for gamma in (0.5, 0.7, 1.0, 1.4, 2.0):
        out = apply_shift(image, (1, 1, 1), ShiftParams(gamma=gamma), 0).ravel()
        assert np.all(np.diff(out) >= 0)  # intensity order kept
        means.append(out.mean())
    # the same ramp: mid-tones brighten for gamma < 1 and darken for gamma > 1, monotonically in gamma
    assert np.all(np.diff(means) < 0)
    # the 1st/99th percentile anchors stay fixed
    lo, hi = np.percentile(image, [1, 99])
    out = apply_shift(image, (1, 1, 1), ShiftParams(gamma=2.0), 0)
    np.testing.assert_allclose(np.percentile(out, [1, 99]), [lo, hi], rtol=1e-3)


def test_bias_field_is_smooth_bounded_and_fixed_by_its_seed():
    image = np.full((8, 24, 24), 100.0, dtype=np.float32)
    image[:, :, 0] = 0  # >= 1% zeros: p1 = 0, so out = image * exp(s f)
    s = 0.3
    params = ShiftParams(bias_field_strength=s, bias_field_seed=4)
    out = apply_shift(image, (1, 1, 1), params, rng_seed=0)
    log_gain = np.log(out[:, :, 1:] / image[:, :, 1:])
    assert np.abs(log_gain).max() <= s + 1e-5
    assert np.abs(log_gain).max() > 0.5 * s
    assert np.abs(np.diff(log_gain, axis=2)).max() < 0.2 * s  # low frequency: neighbours differ little
    assert np.array_equal(out, apply_shift(image, (1, 1, 1), params, rng_seed=99))  # not per-case random
    other = apply_shift(image, (1, 1, 1), ShiftParams(bias_field_strength=s, bias_field_seed=5), 0)
    assert not np.allclose(out, other)


def test_noise_raises_flat_region_std_by_noise_std_times_image_std():
    image = _ramp((8, 32, 32))
    image[:, :16, :] = 400.0  # a flat region of 4096 voxels
    eta = 0.05
    out = apply_shift(image, (1, 1, 1), ShiftParams(noise_std=eta), rng_seed=3)
    assert image[:, :16].std() == 0
    np.testing.assert_allclose(out[:, :16].std(), eta * image.std(), rtol=0.08)
    np.testing.assert_allclose(out[:, :16].mean(), 400.0, atol=3 * eta * image.std() / 64)


def _hf_energy(a, axes):
    return sum(float((np.diff(a.astype(np.float64), axis=ax) ** 2).sum()) for ax in axes)


def test_blur_lowers_high_frequency_energy_and_respects_spacing():
    rs = np.random.RandomState(5)
    image = rs.normal(100, 20, size=(8, 32, 32)).astype(np.float32)
    out = apply_shift(image, (1, 1, 1), ShiftParams(blur_sigma_mm=1.0), 0)
    assert _hf_energy(out, (0, 1, 2)) < 0.3 * _hf_energy(image, (0, 1, 2))
    # slabs along z only: a 1 mm blur hardly touches 10 mm slices but smooths 1 mm slices
    slabs = np.repeat((np.arange(8) % 2 * 100.0)[:, None, None], 16, 1).repeat(16, 2).astype(np.float32)
    thick = apply_shift(slabs, (10, 1, 1), ShiftParams(blur_sigma_mm=1.0), 0)
    thin = apply_shift(slabs, (1, 1, 1), ShiftParams(blur_sigma_mm=1.0), 0)
    assert _hf_energy(thick, (0,)) > 0.99 * _hf_energy(slabs, (0,))
    assert _hf_energy(thin, (0,)) < 0.5 * _hf_energy(slabs, (0,))


def test_inversion_reverses_intensity_order():
    image = _ramp()
    out = apply_shift(image, (1, 1, 1), ShiftParams(contrast_inversion=True), 0).ravel()
    assert np.all(np.diff(out) <= 0) and out[0] > out[-1]
    lo, hi = np.percentile(image, [1, 99])
    np.testing.assert_allclose(out, lo + hi - image.ravel(), rtol=1e-5, atol=1e-2)


def test_affine_and_integer_clipping():
    image, _ = _volume(np.random.RandomState(6))
    lo, hi = np.percentile(image.astype(float), [1, 99])
    out = apply_shift(image, (1, 1, 1), ShiftParams(intensity_scale=0.5, intensity_offset=0.1), 0)
    expected = np.clip(np.rint(lo + (hi - lo) * (0.5 * (image - lo) / (hi - lo) + 0.1)), 0, 65535)
    assert np.array_equal(out, expected.astype(np.uint16))
    noisy = apply_shift(image, (1, 1, 1), ShiftParams(noise_std=0.5), 0)
    assert noisy.dtype == np.uint16 and noisy.min() == 0  # negative values clipped, not wrapped


def test_presets_are_valid_and_shift_the_image():
    presets = vendor_presets()
    assert {"identity", "vendorB", "vendorC", "vendorD"} <= set(presets)
    assert presets["vendorB"] == ShiftParams(gamma=0.7, bias_field_strength=0.3, bias_field_seed=1, noise_std=0.03)
    assert presets["vendorC"].gamma == 1.4 and presets["vendorC"].blur_sigma_mm == 1.0
    assert presets["vendorD"].contrast_inversion
    image, _ = _volume(np.random.RandomState(7))
    for name, params in presets.items():
        out = apply_shift(image, (10, 1.25, 1.5), params, 0)
        assert out.shape == image.shape and (np.array_equal(out, image) == (name == "identity"))


def test_invalid_params_raise():
    with pytest.raises(ADInputError, match="gamma"):
        ShiftParams(gamma=0)
    with pytest.raises(ADInputError, match="noise_std"):
        ShiftParams(noise_std=-0.1)
    with pytest.raises(ADInputError, match="spacing"):
        apply_shift(np.zeros((2, 3, 4)), (1, 1), ShiftParams(), 0)


def test_patient_group_keeps_acdc_frames_together():
    assert patient_group("ACDC_patient001_frame01") == patient_group("ACDC_patient001_frame02") == "ACDC_patient001"
    assert patient_group("ACDC_patient001_frame01") != patient_group("ACDC_patient011_frame01")
    assert patient_group("A1B2_ED") == patient_group("A1B2_es") == "A1B2"
    assert patient_group("LA_0001") == "LA_0001"  # fallback: the case id itself


# ------------------------------------------------------------------------------------------------ dataset writers

def test_simulate_layout_heldout_unlabeled_recipe_geometry(src, tmp_path):
    out = Path(simulate_domains(src, 201, "Shift", "random", {"A": "identity", "B": "vendorB", "C": "vendorC"},
                                heldout_domains=["C"], unlabeled_domains=["B"], unlabeled_folder=True, seed=3,
                                raw_root=tmp_path / "raw"))
    assert out == (tmp_path / "raw" / "Dataset201_Shift").resolve()
    dj = json.loads((out / "dataset.json").read_text())
    dom = dj["ad_domains"]
    assert dj["ad_simulated"] is True and len(dom) == 12
    assert dj["ad_heldout_domains"] == ["C"] and dj["ad_unlabeled_domains"] == ["B"]
    assert {patient_group(c) for c in dom} == {f"ACDC_patient{p:03d}" for p in range(1, 7)}
    for c in dom:  # frames of a patient share a domain
        assert dom[c] == dom[patient_group(c) + ("_frame02" if c.endswith("01") else "_frame01")]
    assert sorted(np.unique(list(dom.values()), return_counts=True)[1].tolist()) == [4, 4, 4]  # balanced
    by = {d: {c for c, v in dom.items() if v == d} for d in "ABC"}
    assert _cases(out, "imagesTr") == _cases(out, "labelsTr") == by["A"]
    assert _cases(out, "imagesUnlabeled") == by["B"]
    assert _cases(out, "imagesTs") == _cases(out, "labelsTs") == by["C"]
    assert dj["numTraining"] == 4
    assert domain_counts(out) == {"A": {"imagesTr": 4, "imagesUnlabeled": 0, "imagesTs": 0},
                                  "B": {"imagesTr": 0, "imagesUnlabeled": 4, "imagesTs": 0},
                                  "C": {"imagesTr": 0, "imagesUnlabeled": 0, "imagesTs": 4}}
    recipe = json.loads((out / RECIPE_FILENAME).read_text())
    assert recipe["seed"] == 3 and recipe["domains"]["B"]["preset"] == "vendorB"
    assert recipe["domains"]["C"]["params"]["gamma"] == 1.4 and recipe["domains"]["C"]["params"]["noise_std"] == 0.05
    assert ShiftParams(**recipe["domains"]["B"]["params"]) == vendor_presets()["vendorB"]
    assert recipe["assignment"]["C"] == sorted(by["C"]) and str(src) in recipe["source_dataset"]
    assert recipe["command"].startswith("simulate_domains(")
    for c in dom:
        sub = {"A": "imagesTr", "B": "imagesUnlabeled", "C": "imagesTs"}[dom[c]]
        new = sitk.ReadImage(str(out / sub / f"{c}_0000.nii.gz"))
        old = sitk.ReadImage(str(src / "imagesTr" / f"{c}_0000.nii.gz"))
        assert new.GetSpacing() == SPACING_XYZ and new.GetOrigin() == ORIGIN and new.GetDirection() == DIRECTION
        a, b = sitk.GetArrayFromImage(new), sitk.GetArrayFromImage(old)
        assert a.dtype == b.dtype and (np.array_equal(a, b) == (dom[c] == "A"))
        # the recipe's per-case seed reproduces the written image
        params = ShiftParams(**recipe["domains"][dom[c]]["params"])
        assert np.array_equal(a, apply_shift(b, SPACING_XYZ[::-1], params, recipe["case_noise_seeds"][c][0]))
        if dom[c] != "B":
            lab = "labelsTr" if dom[c] == "A" else "labelsTs"
            assert np.array_equal(_arr(out / lab / f"{c}.nii.gz"), _arr(src / "labelsTr" / f"{c}.nii.gz"))
    assert not [p for p in (tmp_path / "raw").iterdir() if p.name.startswith(".")]


def test_simulate_unlabeled_stay_in_imagesTr_without_flag(src, tmp_path):
    assign = {"A": [f"ACDC_patient00{p}_frame0{f}" for p in (1, 2, 3) for f in (1, 2)],
              "B": [f"ACDC_patient00{p}_frame0{f}" for p in (4, 5) for f in (1, 2)],
              "T": [f"ACDC_patient006_frame0{f}" for f in (1, 2)]}
    out = Path(simulate_domains(src, 202, "Semi", assign, {"A": "identity", "B": {"gamma": 0.8}, "T": "vendorD"},
                                heldout_domains=["T"], unlabeled_domains=["B"], raw_root=tmp_path))
    assert _cases(out, "imagesTr") == _cases(out, "labelsTr") == set(assign["A"]) | set(assign["B"])
    assert not (out / "imagesUnlabeled").exists()
    assert _cases(out, "imagesTs") == set(assign["T"])
    recipe = json.loads((out / RECIPE_FILENAME).read_text())
    assert recipe["assignment_mode"] == "explicit" and recipe["domains"]["B"]["params"]["gamma"] == 0.8


def test_simulate_deterministic_and_independent_of_processes(src, tmp_path):
    kw = dict(assignment="random", domains={"A": "identity", "B": "vendorB", "C": "vendorC"}, raw_root=tmp_path)
    a = Path(simulate_domains(src, 301, "S1", seed=5, **kw))
    b = Path(simulate_domains(src, 302, "S2", seed=5, num_processes=2, **kw))
    c = Path(simulate_domains(src, 303, "S3", seed=6, **kw))
    ja, jb = (json.loads((p / "dataset.json").read_text()) for p in (a, b))
    assert ja["ad_domains"] == jb["ad_domains"]
    files = sorted(f.name for f in (a / "imagesTr").iterdir())
    assert files == sorted(f.name for f in (b / "imagesTr").iterdir())
    assert all(np.array_equal(_arr(a / "imagesTr" / f), _arr(b / "imagesTr" / f)) for f in files)
    jc = json.loads((c / "dataset.json").read_text())
    shifted = [f for f in files if ja["ad_domains"][f[:-12]] != "A"]
    assert jc["ad_domains"] != ja["ad_domains"] or any(
        not np.array_equal(_arr(a / "imagesTr" / f), _arr(c / "imagesTr" / f)) for f in shifted)


def test_unknown_domains_and_bad_assignment_raise(src, tmp_path):
    doms = {"A": "identity", "B": "vendorB"}
    with pytest.raises(ADInputError, match=r"\['Z'\].*known domains are \['A', 'B'\]"):
        simulate_domains(src, 210, "X", "random", doms, heldout_domains=["Z"], raw_root=tmp_path)
    with pytest.raises(ADInputError, match="vendorQ"):
        simulate_domains(src, 210, "X", "random", {"A": "vendorQ"}, raw_root=tmp_path)
    with pytest.raises(ADInputError, match="No labeled training domain"):
        simulate_domains(src, 210, "X", "random", doms, heldout_domains=["A", "B"], raw_root=tmp_path)
    split_patient = {"A": ["ACDC_patient001_frame01"], "B": [c for c in _cases(src, "labelsTr")
                                                            if c != "ACDC_patient001_frame01"]}
    with pytest.raises(ADInputError, match="ACDC_patient001"):
        simulate_domains(src, 210, "X", split_patient, doms, raw_root=tmp_path)
    mapping = {c: "G1" for c in _cases(src, "labelsTr")}
    missing = dict(mapping)
    del missing["ACDC_patient004_frame02"]
    missing["ACDC_patient004_frame01"] = "G2"
    with pytest.raises(ADInputError, match="ACDC_patient004_frame02"):
        derive_domain_dataset(src, 210, "X", missing, ["G2"], raw_root=tmp_path)
    with pytest.raises(ADInputError, match=r"\['NOPE'\].*\['G1'\]"):
        derive_domain_dataset(src, 210, "X", mapping, ["NOPE"], raw_root=tmp_path)
    assert not (tmp_path / "Dataset210_X").exists()


def test_refuses_overwrite_unless_asked(src, tmp_path):
    doms = {"A": "identity", "B": "vendorB"}
    out = Path(simulate_domains(src, 220, "O", "random", doms, raw_root=tmp_path, seed=1))
    with pytest.raises(ADInputError, match="already exists"):
        simulate_domains(src, 220, "O", "random", doms, raw_root=tmp_path)
    with pytest.raises(ADInputError, match="already used"):
        simulate_domains(src, 220, "Other", "random", doms, raw_root=tmp_path)
    simulate_domains(src, 220, "O", "random", doms, heldout_domains=["B"], raw_root=tmp_path, overwrite=True)
    assert json.loads((out / "dataset.json").read_text())["ad_heldout_domains"] == ["B"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("Dataset220")] == ["Dataset220_O"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_corrupt_source_leaves_nothing_half_written(src, tmp_path):
    (src / "imagesTr" / "ACDC_patient003_frame02_0000.nii.gz").write_bytes(b"not a nifti at all")
    root = tmp_path / "raw"
    with pytest.raises(ADInputError, match="ACDC_patient003_frame02_0000"):
        simulate_domains(src, 230, "Bad", "random", {"A": "vendorB", "B": "vendorC"}, raw_root=root)
    assert not root.exists() or not list(root.iterdir())


def test_derive_keeps_files_identical(src, tmp_path):
    mapping = {c: ("DCM" if int(c[12:15]) <= 2 else "NOR" if int(c[12:15]) <= 4 else "HCM")
               for c in _cases(src, "labelsTr")}
    (tmp_path / "groups.json").write_text(json.dumps(mapping))
    out = Path(derive_domain_dataset(src, 240, "Path", tmp_path / "groups.json", ["HCM"],
                                     unlabeled_domains=["NOR"], unlabeled_folder=True, raw_root=tmp_path))
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["ad_simulated"] is False and dj["ad_domains"] == dict(sorted(mapping.items()))
    assert _cases(out, "imagesTs") == _cases(out, "labelsTs") == {c for c, d in mapping.items() if d == "HCM"}
    assert _cases(out, "imagesUnlabeled") == {c for c, d in mapping.items() if d == "NOR"}
    assert _cases(out, "imagesTr") == _cases(out, "labelsTr") == {c for c, d in mapping.items() if d == "DCM"}
    for c in _cases(out, "imagesTr"):
        assert (out / "imagesTr" / f"{c}_0000.nii.gz").read_bytes() == \
               (src / "imagesTr" / f"{c}_0000.nii.gz").read_bytes()


def test_cli_simulate_and_error_exit(src, tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    src.rename(raw / src.name)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    # nnU-Net resolves dataset ids in raw, preprocessed AND results: isolate all three from other tests' datasets
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    rc = domains_entry(["simulate", "-i", "900", "-d", "250", "-n", "Cli", "--domains", "A=identity", "B=vendorB",
                        'C={"gamma": 1.2}', "--heldout", "C", "--unlabeled", "B", "--unlabeled_folder", "--seed", "2"])
    printed = capsys.readouterr().out
    assert rc == 0 and "Dataset250_Cli" in printed and "imagesUnlabeled" in printed and "total" in printed
    recipe = json.loads((raw / "Dataset250_Cli" / RECIPE_FILENAME).read_text())
    assert recipe["command"].startswith("adnnunet_domains simulate -i 900") and recipe["seed"] == 2
    rc = domains_entry(["derive", "-i", str(raw / src.name), "-d", "251", "-n", "Bad", "--domains_json",
                        str(tmp_path / "missing.json"), "--heldout", "HCM"])
    assert rc == 2 and "missing.json" in capsys.readouterr().err
    rc = domains_entry(["simulate", "-i", "900", "-d", "252", "-n", "Bad2", "--domains", "A=identity",
                        "--heldout", "Q"])
    assert rc == 2 and "Q" in capsys.readouterr().err and not (raw / "Dataset252_Bad2").exists()


def test_derive_real_acdc_pathology_groups(tmp_path):
    acdc = SHARED / "Dataset102_ACDC"
    if not (acdc / "pathology_groups.json").is_file():
        pytest.skip(f"real ACDC dataset not found at {acdc} (set AD_SHARED_DATASETS to the shared datasets folder)")
    groups = json.loads((acdc / "pathology_groups.json").read_text())
    out = Path(derive_domain_dataset(acdc, 402, "ACDCtoHCM", acdc / "pathology_groups.json", ["HCM"],
                                     raw_root=tmp_path))
    hcm = {c for c, g in groups.items() if g == "HCM"}
    assert _cases(out, "imagesTs") == _cases(out, "labelsTs") == hcm
    assert _cases(out, "imagesTr") == _cases(out, "labelsTr") == set(groups) - hcm
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["numTraining"] == len(groups) - len(hcm) and dj["ad_domains"] == dict(sorted(groups.items()))
    assert dj["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
