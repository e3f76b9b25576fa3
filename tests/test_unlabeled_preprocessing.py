"""Image-only preprocessing of unlabeled images with the labeled cases' plans: equality, staleness, bad input."""
import json
import os
import pickle
import shutil

import blosc2
import numpy as np
import pytest

from ad_nnunet.data.settings import make_settings
from ad_nnunet.data.unlabeled_preprocessing import (MANIFEST_NAME, META_DIRNAME, is_up_to_date, manifest_path,
                                                    preprocess_unlabeled, required_unlabeled_cases, unlabeled_folder)
from ad_nnunet.entrypoints.preparation import preprocess_unlabeled_entry
from ad_nnunet.errors import ADInputError

CFG = "3d_fullres"


def load(folder, case):
    data = blosc2.open(os.path.join(folder, case + ".b2nd"), mode="r")[:]
    seg = blosc2.open(os.path.join(folder, case + "_seg.b2nd"), mode="r")[:]
    with open(os.path.join(folder, case + ".pkl"), "rb") as f:
        props = pickle.load(f)
    return data, seg, props


def stats(folder):
    """(mtime_ns, inode) of every case file: unchanged values prove a file was not rewritten."""
    return {f: (os.stat(os.path.join(folder, f)).st_mtime_ns, os.stat(os.path.join(folder, f)).st_ino)
            for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))}


def case_files(folder, case):
    return sorted(f for f in os.listdir(folder) if f in (case + ".b2nd", case + "_seg.b2nd", case + ".pkl"))


def test_equals_nnunet_preprocessing(phantom_copy):
    d = phantom_copy()
    # the same image, once as labeled case (preprocessed by nnU-Net) and once as an unlabeled case (by us)
    shutil.copy(os.path.join(d["raw"], "imagesTr", "phantom_002_0000.nii.gz"),
                os.path.join(d["raw"], "imagesUnlabeled", "unl_copy_0000.nii.gz"))
    folder = preprocess_unlabeled(d["dataset_id"], CFG, num_processes=1, verbose=False)
    assert folder == unlabeled_folder(d["dataset_id"], CFG) == os.path.join(d["preprocessed"],
                                                                            "nnUNetPlans_3d_fullres_unlabeled")
    ours, seg, props = load(folder, "unl_copy")
    ref, ref_seg, ref_props = load(os.path.join(d["preprocessed"], "nnUNetPlans_3d_fullres"), "phantom_002")
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    for k in ("spacing", "shape_before_cropping", "bbox_used_for_cropping",
              "shape_after_cropping_and_before_resampling", "sitk_stuff"):
        assert np.array_equal(np.asarray(props[k], dtype=object), np.asarray(ref_props[k], dtype=object)), k
    # image-only: seg is the nonzero mask, class_locations exist for every foreground class but are empty
    assert set(np.unique(seg)) <= {-1, 0} and seg.dtype == ref_seg.dtype
    assert np.array_equal(seg == -1, ref_seg == -1)
    assert set(props["class_locations"]) == set(ref_props["class_locations"]) == {1, 2, 3}
    assert all(v.shape == (0, 4) for v in props["class_locations"].values())
    # the folder is a clean nnU-Net dataset folder (manifest lives in a hidden subfolder)
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2
    assert infer_dataset_class(folder) is nnUNetDatasetBlosc2
    assert sorted(nnUNetDatasetBlosc2.get_identifiers(folder)) == ["unl_000", "unl_001", "unl_002", "unl_003",
                                                                    "unl_004", "unl_005", "unl_copy"]
    assert os.path.isfile(os.path.join(folder, META_DIRNAME, MANIFEST_NAME))


def test_hidden_label_cases_are_required(phantom_copy):
    d = phantom_copy()
    assert sorted(required_unlabeled_cases(d["dataset_id"])) == [f"unl_{i:03d}" for i in range(6)]
    s = json.load(open(make_settings(d["dataset_id"], "ssl", num_labeled=2, num_val=1, num_folds=2)))
    hidden = set(c for f in s["folds"] for c in f["unlabeled"] if c.startswith("phantom"))
    req = required_unlabeled_cases(d["dataset_id"])
    assert set(req) == hidden | {f"unl_{i:03d}" for i in range(6)}
    for c in hidden:
        assert req[c] == [os.path.join(d["raw"], "imagesTr", f"{c}_0000.nii.gz")]  # images only, never labels


def test_staleness(phantom_copy):
    d = phantom_copy()
    ds = d["dataset_id"]
    assert not is_up_to_date(ds, CFG)
    folder = preprocess_unlabeled(ds, CFG, num_processes=2, verbose=False)  # spawn pool path
    before = stats(folder)
    assert len(before) == 18 and is_up_to_date(ds, CFG)
    # no-op rerun
    preprocess_unlabeled(ds, CFG, num_processes=1, verbose=False)
    assert stats(folder) == before
    # touching one source redoes only that case
    src = os.path.join(d["raw"], "imagesUnlabeled", "unl_003_0000.nii.gz")
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert not is_up_to_date(ds, CFG)
    preprocess_unlabeled(ds, CFG, num_processes=1, verbose=False)
    after = stats(folder)
    changed = sorted(f for f in before if after[f] != before[f])
    assert changed == ["unl_003.b2nd", "unl_003.pkl", "unl_003_seg.b2nd"]
    # a case no longer required is removed
    os.remove(os.path.join(d["raw"], "imagesUnlabeled", "unl_005_0000.nii.gz"))
    preprocess_unlabeled(ds, CFG, num_processes=1, verbose=False)
    assert case_files(folder, "unl_005") == [] and "unl_005" not in json.load(open(manifest_path(folder)))["cases"]
    assert is_up_to_date(ds, CFG)
    # training-only changes (patch size, architecture) and a configuration sharing the data_identifier (like the
    # 3d_tiny preset) reuse the folder
    plans_file = os.path.join(d["preprocessed"], "nnUNetPlans.json")
    plans = json.load(open(plans_file))
    plans["configurations"][CFG]["patch_size"] = [16, 24, 24]
    plans["configurations"]["3d_small"] = {"inherits_from": CFG, "patch_size": [16, 16, 16], "batch_size": 4,
                                           "ad_preset": {"x": 1}}
    json.dump(plans, open(plans_file, "w"))
    assert is_up_to_date(ds, CFG) and is_up_to_date(ds, "3d_small")
    assert unlabeled_folder(ds, "3d_small") == folder
    # a change of preprocessing (resampling order) rebuilds everything
    before = stats(folder)
    plans["configurations"][CFG]["resampling_fn_data_kwargs"]["order"] = 1
    json.dump(plans, open(plans_file, "w"))
    assert not is_up_to_date(ds, CFG)
    preprocess_unlabeled(ds, CFG, num_processes=1, verbose=False)
    after = stats(folder)
    assert set(after) == set(before) and all(after[f] != before[f] for f in before)
    # as does a change of the intensity statistics used for normalization
    plans["foreground_intensity_properties_per_channel"]["0"]["mean"] += 1.0
    json.dump(plans, open(plans_file, "w"))
    assert not is_up_to_date(ds, CFG)


def test_corrupt_image(phantom_copy):
    d = phantom_copy()
    ds = d["dataset_id"]
    folder = preprocess_unlabeled(ds, CFG, num_processes=1, verbose=False)
    bad = os.path.join(d["raw"], "imagesUnlabeled", "unl_002_0000.nii.gz")
    with open(bad, "wb") as f:
        f.write(os.urandom(300))
    with pytest.raises(ADInputError) as e:
        preprocess_unlabeled(ds, CFG, num_processes=1, verbose=False)
    msg = str(e.value)
    assert "'unl_002'" in msg and bad in msg and "Fix: re-export or re-copy the file, or remove the case" in msg
    # no partial (nor stale) output of the failed case, no temp files; the others are intact and recorded
    assert case_files(folder, "unl_002") == []
    assert not os.path.exists(os.path.join(folder, ".ad_tmp"))
    assert sorted(os.listdir(os.path.join(folder, META_DIRNAME))) == [MANIFEST_NAME]
    cases = json.load(open(manifest_path(folder)))["cases"]
    assert sorted(cases) == ["unl_000", "unl_001", "unl_003", "unl_004", "unl_005"]
    assert all(len(case_files(folder, c)) == 3 for c in cases)
    os.remove(bad)
    preprocess_unlabeled(ds, CFG, num_processes=1, verbose=False)
    assert is_up_to_date(ds, CFG)


def test_corrupt_image_in_worker(phantom_copy):
    d = phantom_copy()
    bad = os.path.join(d["raw"], "imagesUnlabeled", "unl_000_0000.nii.gz")
    with open(bad, "wb") as f:
        f.write(b"\x1f\x8b garbage, not a nifti")
    with pytest.raises(ADInputError, match=r"'unl_000'.*unl_000_0000\.nii\.gz.*re-export or re-copy"):
        preprocess_unlabeled(d["dataset_id"], CFG, num_processes=2, verbose=False)
    folder = unlabeled_folder(d["dataset_id"], CFG)
    assert case_files(folder, "unl_000") == [] and len(case_files(folder, "unl_001")) == 3


def test_wrong_channel_count_leaves_nothing(phantom_copy):
    d = phantom_copy()
    shutil.copy(os.path.join(d["raw"], "imagesUnlabeled", "unl_000_0000.nii.gz"),
                os.path.join(d["raw"], "imagesUnlabeled", "unl_000_0001.nii.gz"))
    with pytest.raises(ADInputError, match=r"'unl_000'.*\[0000, 0001\].*\[0000\]"):
        preprocess_unlabeled(d["dataset_id"], CFG, num_processes=1, verbose=False)
    assert not os.path.exists(os.path.join(d["preprocessed"], "nnUNetPlans_3d_fullres_unlabeled"))


def test_missing_plans_or_preprocessing(phantom_copy, capsys):
    d = phantom_copy()
    with pytest.raises(ADInputError, match="Configuration '3d_lowres' is not in"):
        preprocess_unlabeled(d["dataset_id"], "3d_lowres", verbose=False)
    with pytest.raises(ADInputError, match=rf"nnUNetv2_plan_and_preprocess -d {d['dataset_id']} -c 2d"):
        preprocess_unlabeled(d["dataset_id"], "2d", verbose=False)  # planned but not preprocessed
    os.remove(os.path.join(d["preprocessed"], "nnUNetPlans.json"))
    with pytest.raises(ADInputError, match=rf"nnUNetv2_plan_and_preprocess -d {d['dataset_id']} -c 3d_fullres"):
        preprocess_unlabeled(d["dataset_id"], verbose=False)
    assert preprocess_unlabeled_entry(["-d", str(d["dataset_id"]), "-c", CFG]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adnnunet_preprocess_unlabeled: error: ") and "nnUNetv2_plan_and_preprocess" in err


def test_cli(phantom_copy, capsys):
    d = phantom_copy()
    preprocess_unlabeled_entry(["-d", d["dataset_name"], "-c", CFG, "-np", "1", "--quiet"])
    assert capsys.readouterr().out.strip() == unlabeled_folder(d["dataset_id"], CFG)
    assert is_up_to_date(d["dataset_name"], CFG)


def test_emptied_unlabeled_folder_is_an_error_and_deletes_nothing(phantom_copy):
    d = phantom_copy()
    ds = d["dataset_name"]
    folder = preprocess_unlabeled(ds, CFG, num_processes=1, verbose=False)
    before = stats(folder)
    unlabeled_dir = os.path.join(d["raw"], "imagesUnlabeled")
    for f in os.listdir(unlabeled_dir):
        os.remove(os.path.join(unlabeled_dir, f))
    with pytest.raises(ADInputError, match=r"no unlabeled image.*were left as they are.*Fix: put the unlabeled"):
        preprocess_unlabeled(ds, CFG, num_processes=1, verbose=False)
    assert stats(folder) == before
