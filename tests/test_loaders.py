"""The unlabeled loader, and the label-poisoning proof that no label reaches the unlabeled data path."""
import builtins
import json
import os
import pickle
import random

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ad_nnunet.data.loaders import build_unlabeled_loader
from ad_nnunet.data.settings import hidden_label_cases, load_fold, make_settings
from ad_nnunet.data.unlabeled_preprocessing import preprocess_unlabeled, required_unlabeled_cases
from ad_nnunet.errors import ADInputError

CFG = "3d_fullres"


def nnunet_parts(d):
    """Label manager, patch sizes and the stock nnU-Net training transforms for the phantom's 3d_fullres."""
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(os.path.join(d["preprocessed"], "nnUNetPlans.json"))
    cm = pm.get_configuration(CFG)
    with open(os.path.join(d["preprocessed"], "dataset.json")) as f:
        lm = pm.get_label_manager(json.load(f))
    patch = tuple(cm.patch_size)
    rot = (-30. / 360 * 2. * np.pi, 30. / 360 * 2. * np.pi)
    initial = tuple(int(i) for i in get_patch_size(patch, rot, rot, rot, (0.85, 1.25)))
    transforms = nnUNetTrainer.get_training_transforms(
        patch, rot, None, (0, 1, 2), False, use_mask_for_norm=cm.use_mask_for_norm, is_cascaded=False,
        foreground_labels=lm.foreground_labels, regions=None, ignore_label=None)
    return lm, patch, initial, transforms


def batches(loader, seeds=(0, 1, 2)):
    out = []
    for s in seeds:
        np.random.seed(s)
        torch.manual_seed(s)
        random.seed(s)
        out.append(next(loader))
    return out


def test_loader_basic(phantom_copy):
    d = phantom_copy()
    folder = preprocess_unlabeled(d["dataset_id"], CFG, num_processes=1, verbose=False)
    lm, patch, initial, transforms = nnunet_parts(d)
    ids = sorted(required_unlabeled_cases(d["dataset_id"]))
    # without transforms: raw crops; the "target" is only the nonzero mask (0 / -1): there is no label to read
    dl = build_unlabeled_loader(folder, ids, 3, patch, patch, lm, None)
    b = next(dl)
    assert b["data"].shape == (3, 1, *patch) and set(b["keys"]) <= set(ids)
    assert set(torch.unique(b["target"]).tolist()) <= {-1, 0}
    dl = build_unlabeled_loader(folder, ids, 2, initial, patch, lm, transforms)
    b = next(dl)
    assert b["data"].shape == (2, 1, *patch) and torch.isfinite(b["data"]).all()
    assert set(torch.unique(b["target"]).tolist()) <= {0}  # -1 -> 0 by RemoveLabelTansform
    assert dl.oversample_foreground_percent == 0 and not dl.has_ignore


def test_loader_with_ignore_label_manager(phantom_copy):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    d = phantom_copy()
    folder = preprocess_unlabeled(d["dataset_id"], CFG, num_processes=1, verbose=False)
    lm = LabelManager({"background": 0, "organ": 1, "wall": 2, "lesion": 3, "ignore": 4}, None)
    assert lm.has_ignore_label
    dl = build_unlabeled_loader(folder, ["unl_000", "unl_001"], 2, (16, 16, 16), (16, 16, 16), lm, None)
    assert next(dl)["data"].shape == (2, 1, 16, 16, 16)  # random crops, no class_locations[(-1, ...)] lookup


def test_loader_bad_input(phantom_copy):
    d = phantom_copy()
    lm, patch, initial, transforms = nnunet_parts(d)
    labeled_folder = os.path.join(d["preprocessed"], "nnUNetPlans_3d_fullres")
    with pytest.raises(ADInputError, match="not written by adnnunet_preprocess_unlabeled"):
        build_unlabeled_loader(labeled_folder, ["phantom_000"], 2, patch, patch, lm, None)
    folder = preprocess_unlabeled(d["dataset_id"], CFG, num_processes=1, verbose=False)
    with pytest.raises(ADInputError, match=r"Unlabeled case\(s\) phantom_001 missing from .*adnnunet_preprocess_unlabeled"):
        build_unlabeled_loader(folder, ["unl_000", "phantom_001"], 2, patch, patch, lm, None)
    with pytest.raises(ADInputError, match="No unlabeled case"):
        build_unlabeled_loader(folder, [], 2, patch, patch, lm, None)


def _poison(d, cases, seed=123):
    """Replace the labels of ``cases`` everywhere they exist: raw labelsTr, gt_segmentations, nnU-Net's _seg.b2nd
    and the class_locations of its .pkl."""
    rs = np.random.RandomState(seed)
    labeled_folder = os.path.join(d["preprocessed"], "nnUNetPlans_3d_fullres")
    for c in cases:
        for path in (os.path.join(d["raw"], "labelsTr", c + ".nii.gz"),
                     os.path.join(d["preprocessed"], "gt_segmentations", c + ".nii.gz")):
            ref = sitk.ReadImage(path)
            garbage = sitk.GetImageFromArray(rs.randint(0, 4, sitk.GetArrayFromImage(ref).shape).astype(np.uint8))
            garbage.CopyInformation(ref)
            sitk.WriteImage(garbage, path, True)
        seg_path = os.path.join(labeled_folder, c + "_seg.b2nd")
        shape = blosc2.open(seg_path, mode="r").shape
        os.remove(seg_path)
        blosc2.asarray(rs.randint(-1, 4, shape).astype(np.int16), urlpath=seg_path)
        with open(os.path.join(labeled_folder, c + ".pkl"), "rb") as f:
            props = pickle.load(f)
        props["class_locations"] = {k: rs.randint(0, 5, (50, 4)) for k in props["class_locations"]}
        with open(os.path.join(labeled_folder, c + ".pkl"), "wb") as f:
            pickle.dump(props, f)


def _deep_equal(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def test_label_poisoning(phantom_copy, monkeypatch):
    clean, poisoned = phantom_copy(), phantom_copy()
    for d in (clean, poisoned):
        make_settings(d["dataset_id"], "ssl", num_labeled=2, seed=0)
    fold = load_fold(poisoned["dataset_id"], 0)
    hidden = hidden_label_cases(fold, [f"phantom_{i:03d}" for i in range(6)])
    fold_c = load_fold(clean["dataset_id"], 0)
    assert len(hidden) == 4 and (fold.labeled, fold.unlabeled) == (fold_c.labeled, fold_c.unlabeled)
    _poison(poisoned, hidden)

    lm, patch, initial, transforms = nnunet_parts(clean)
    ids = sorted(required_unlabeled_cases(clean["dataset_id"]))
    assert set(hidden) <= set(ids)
    folder_c = preprocess_unlabeled(clean["dataset_id"], CFG, num_processes=1, verbose=False)
    ref_batches = batches(build_unlabeled_loader(folder_c, ids, 2, initial, patch, lm, transforms))

    # the poisoned dataset is processed with every label location guarded
    forbidden = (os.path.join(poisoned["raw"], "labelsTr") + os.sep,
                 os.path.join(poisoned["preprocessed"], "gt_segmentations") + os.sep,
                 os.path.join(poisoned["preprocessed"], "nnUNetPlans_3d_fullres") + os.sep)
    touched = []

    def guard(path):
        path = os.path.abspath(os.fsdecode(path))
        touched.append(path)
        if path.startswith(forbidden):
            raise AssertionError(f"a label file was opened: {path}")

    real_read, real_open, real_b2open = sitk.ReadImage, builtins.open, blosc2.open

    def read_image(path, *a, **k):
        guard(path)
        return real_read(path, *a, **k)

    def open_(file, *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)):
            guard(file)
        return real_open(file, *a, **k)

    def b2open(urlpath, *a, **k):
        guard(urlpath)
        return real_b2open(urlpath, *a, **k)

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    def no_seg(self, *a, **k):
        raise AssertionError("read_seg called on the unlabeled path")

    with monkeypatch.context() as m:
        m.setattr(sitk, "ReadImage", read_image)
        m.setattr(builtins, "open", open_)
        m.setattr(blosc2, "open", b2open)
        m.setattr(SimpleITKIO, "read_seg", no_seg)
        folder_p = preprocess_unlabeled(poisoned["dataset_id"], CFG, num_processes=1, verbose=False)
        got_batches = batches(build_unlabeled_loader(folder_p, ids, 2, initial, patch, lm, transforms))
        with pytest.raises(AssertionError, match="a label file was opened"):  # the guard does catch label reads
            sitk.ReadImage(os.path.join(poisoned["raw"], "labelsTr", hidden[0] + ".nii.gz"))
        touched.pop()
    # the guards were active: images, blosc2 arrays and pickles went through them; no label path was touched
    for c in hidden:
        assert os.path.join(poisoned["raw"], "imagesTr", c + "_0000.nii.gz") in touched
    assert any(p.startswith(folder_p) and p.endswith("_seg.b2nd") for p in touched)
    assert any(p.startswith(folder_p) and p.endswith(".pkl") for p in touched)
    assert not any(p.startswith(forbidden) for p in touched)

    # preprocessed output bit-identical
    for c in ids:
        for suffix in (".b2nd", "_seg.b2nd"):
            a = blosc2.open(os.path.join(folder_c, c + suffix), mode="r")[:]
            b = blosc2.open(os.path.join(folder_p, c + suffix), mode="r")[:]
            assert a.dtype == b.dtype and np.array_equal(a, b), (c, suffix)
        with open(os.path.join(folder_c, c + ".pkl"), "rb") as f:
            pa = pickle.load(f)
        with open(os.path.join(folder_p, c + ".pkl"), "rb") as f:
            pb = pickle.load(f)
        assert _deep_equal(pa, pb), c
    # seeded loader batches bit-identical
    for ra, rb in zip(ref_batches, got_batches):
        assert list(ra["keys"]) == list(rb["keys"])
        assert torch.equal(ra["data"], rb["data"]) and torch.equal(ra["target"], rb["target"])
    assert any(k in hidden for b in ref_batches for k in b["keys"])  # hidden-label cases were sampled

    # the poison is real: nnU-Net's labeled path over the same cases now yields different targets
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    def labeled_batches(d):
        ds = nnUNetDatasetBlosc2(os.path.join(d["preprocessed"], "nnUNetPlans_3d_fullres"), list(hidden))
        return batches(nnUNetDataLoader(ds, 2, patch, patch, lm, oversample_foreground_percent=0.0), seeds=(0,))[0]

    assert not torch.equal(labeled_batches(clean)["target"], labeled_batches(poisoned)["target"])
