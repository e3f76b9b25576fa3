"""The raw-dataset convention: listing labeled (imagesTr) and unlabeled (imagesUnlabeled) cases."""
import json
import os

import pytest

from ad_nnunet.data.raw import (UNLABELED_DIRNAME, list_labeled_cases, list_unlabeled_cases,
                                raw_dataset_folder)
from ad_nnunet.errors import ADInputError


def make_raw(root, tr_ids=("a", "b"), unl_files=(), n_channels=1, ending=".nii.gz"):
    """A raw dataset of empty files (listing never reads image content)."""
    os.makedirs(os.path.join(root, "imagesTr"))
    os.makedirs(os.path.join(root, "labelsTr"))
    for c in tr_ids:
        for ch in range(n_channels):
            open(os.path.join(root, "imagesTr", f"{c}_{ch:04d}{ending}"), "w").close()
        open(os.path.join(root, "labelsTr", f"{c}{ending}"), "w").close()
    if unl_files:
        os.makedirs(os.path.join(root, UNLABELED_DIRNAME))
        for f in unl_files:
            open(os.path.join(root, UNLABELED_DIRNAME, f), "w").close()
    dj = {"channel_names": {str(i): f"MRI{i}" for i in range(n_channels)}, "labels": {"background": 0, "x": 1},
          "numTraining": len(tr_ids), "file_ending": ending}
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(dj, f)
    return dj


def test_planned_phantom_listing(planned_phantom):
    # the fixture ran stock fingerprint/plan/preprocess on a raw folder with imagesUnlabeled: nnU-Net ignored it
    raw = planned_phantom["raw"]
    assert raw_dataset_folder(planned_phantom["dataset_id"]) == raw
    assert raw_dataset_folder(planned_phantom["dataset_name"]) == raw
    with open(os.path.join(raw, "dataset.json")) as f:
        dj = json.load(f)
    labeled = list_labeled_cases(raw, dj)
    unlabeled = list_unlabeled_cases(raw, dj)
    assert sorted(labeled) == [f"phantom_{i:03d}" for i in range(6)]
    assert sorted(unlabeled) == [f"unl_{i:03d}" for i in range(6)]
    assert all(len(v) == 1 and v[0].endswith("_0000.nii.gz") for v in {**labeled, **unlabeled}.values())
    pre_ids = sorted(f[:-5] for f in os.listdir(os.path.join(planned_phantom["preprocessed"], "nnUNetPlans_3d_fullres"))
                     if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))
    assert pre_ids == sorted(labeled)  # nnU-Net preprocessed exactly the labeled cases


def test_missing_or_empty_folder(tmp_path):
    dj = make_raw(str(tmp_path / "d1"))
    assert list_unlabeled_cases(str(tmp_path / "d1"), dj) == {}
    dj = make_raw(str(tmp_path / "d2"), unl_files=(".DS_Store",))  # hidden files are ignored
    assert list_unlabeled_cases(str(tmp_path / "d2"), dj) == {}


def test_multichannel_ok(tmp_path):
    root = str(tmp_path / "d")
    dj = make_raw(root, n_channels=2, unl_files=("u1_0001.nii.gz", "u1_0000.nii.gz"))
    cases = list_unlabeled_cases(root, dj)
    assert list(cases) == ["u1"]
    assert [os.path.basename(f) for f in cases["u1"]] == ["u1_0000.nii.gz", "u1_0001.nii.gz"]
    assert sorted(list_labeled_cases(root, dj)) == ["a", "b"]


def test_wrong_file_ending(tmp_path):
    root = str(tmp_path / "d")
    dj = make_raw(root, unl_files=("u1_0000.nii",))
    with pytest.raises(ADInputError, match=r"u1_0000\.nii\b.*rename/convert it to \.nii\.gz"):
        list_unlabeled_cases(root, dj)


def test_missing_channel_suffix(tmp_path):
    root = str(tmp_path / "d")
    dj = make_raw(root, unl_files=("u1.nii.gz",))
    with pytest.raises(ADInputError, match=r"u1\.nii\.gz.*channel suffix"):
        list_unlabeled_cases(root, dj)


@pytest.mark.parametrize("n_channels,files,found", [
    (2, ("u7_0000.nii.gz",), "0000"),
    (1, ("u7_0000.nii.gz", "u7_0001.nii.gz"), "0000, 0001"),
    (2, ("u7_0000.nii.gz", "u7_0002.nii.gz"), "0000, 0002"),
])
def test_wrong_channel_count(tmp_path, n_channels, files, found):
    root = str(tmp_path / "d")
    dj = make_raw(root, n_channels=n_channels, unl_files=files)
    with pytest.raises(ADInputError) as e:
        list_unlabeled_cases(root, dj)
    msg = str(e.value)
    assert "'u7'" in msg and f"[{found}]" in msg
    assert ", ".join(f"{i:04d}" for i in range(n_channels)) in msg


def test_id_collision_with_labeled(tmp_path):
    root = str(tmp_path / "d")
    dj = make_raw(root, unl_files=("b_0000.nii.gz",))
    with pytest.raises(ADInputError, match=r"'b'.*rename to e\.g\. unl_b"):
        list_unlabeled_cases(root, dj)


def test_unknown_dataset(nnunet_dirs):
    with pytest.raises(ADInputError, match="Cannot resolve dataset"):
        raw_dataset_folder(987)
