"""The synthetic phantom generator: layout, labels, determinism, domain shifts, CLI."""
import glob
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from ad_nnunet.dataset_conversion.phantom import LABELS, domain_shift_params, make_phantom_dataset
from ad_nnunet.entrypoints.datasets import make_phantom_entry
from ad_nnunet.errors import ADInputError

KW = dict(num_labeled=3, num_unlabeled=4, num_test=2, shape=(16, 24, 24))


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def test_layout_and_labels(tmp_path):
    folder = make_phantom_dataset(str(tmp_path), 991, "Ph", domains=("A", "B"), **KW)
    assert os.path.basename(folder) == "Dataset991_Ph"
    ls = {d: sorted(os.listdir(os.path.join(folder, d))) for d in
          ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs")}
    assert ls["imagesTr"] == [f"phantom_{i:03d}_0000.nii.gz" for i in range(3)]
    assert ls["labelsTr"] == [f"phantom_{i:03d}.nii.gz" for i in range(3)]
    assert ls["imagesUnlabeled"] == [f"unl_{i:03d}_0000.nii.gz" for i in range(4)]
    assert len(ls["imagesTs"]) == len(ls["labelsTs"]) == 2
    # no label is written anywhere for unlabeled cases
    unl_paths = glob.glob(os.path.join(folder, "**", "unl_*"), recursive=True)
    assert len(unl_paths) == 4 and all(os.sep + "imagesUnlabeled" + os.sep in p for p in unl_paths)
    with open(os.path.join(folder, "dataset.json")) as f:
        dj = json.load(f)
    assert dj["channel_names"] == {"0": "MRI"} and dj["file_ending"] == ".nii.gz" and dj["numTraining"] == 3
    assert dj["labels"] == LABELS
    assert dj["ad_domains"]["phantom_000"] == "A" and dj["ad_domains"]["phantom_001"] == "B"
    assert set(dj["ad_domains"]) == {"phantom_000", "phantom_001", "phantom_002", "unl_000", "unl_001", "unl_002",
                                     "unl_003", "test_000", "test_001"}
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "phantom_000_0000.nii.gz"))
    assert img.GetSpacing() == (1.0, 1.0, 2.0) and img.GetSize() == (24, 24, 16)
    counts = np.zeros(4, int)
    for p in glob.glob(os.path.join(folder, "labelsTr", "*.nii.gz")):
        lab = read(p)
        counts += np.bincount(lab.ravel(), minlength=4)
        assert set(np.unique(lab)) <= {0, 1, 2, 3}
        im = read(p.replace("labelsTr", "imagesTr").replace(".nii.gz", "_0000.nii.gz"))
        assert np.all(im[lab > 0] > 0)  # structures lie inside the (nonzero) body
        assert (im == 0).any()  # air is exactly zero, so nnU-Net's nonzero cropping acts
    assert (counts[1:] > 0).all() and counts[3] < counts[1]  # imbalanced: lesion is the smallest


def test_deterministic(tmp_path):
    a = make_phantom_dataset(str(tmp_path / "a"), 992, domains=("A", "B"), seed=3, **KW)
    b = make_phantom_dataset(str(tmp_path / "b"), 992, domains=("A", "B"), seed=3, **KW)
    c = make_phantom_dataset(str(tmp_path / "c"), 992, domains=("A", "B"), seed=4, **KW)
    for rel in ("imagesTr/phantom_001_0000.nii.gz", "labelsTr/phantom_001.nii.gz", "imagesUnlabeled/unl_002_0000.nii.gz"):
        assert np.array_equal(read(os.path.join(a, rel)), read(os.path.join(b, rel)))
    assert not np.array_equal(read(os.path.join(a, "imagesTr/phantom_001_0000.nii.gz")),
                              read(os.path.join(c, "imagesTr/phantom_001_0000.nii.gz")))


def test_domain_shift(tmp_path):
    assert domain_shift_params("A") == {"scale": 1.0, "offset": 0.0, "gamma": 1.0, "noise_factor": 1.0}
    b1, b2, c = domain_shift_params("B"), domain_shift_params("B"), domain_shift_params("C")
    assert b1 == b2 and b1 != c and b1 != domain_shift_params("A")
    # same anatomy/noise seed, different domain -> different intensities, identical labels
    fa = make_phantom_dataset(str(tmp_path / "a"), 993, num_labeled=1, num_unlabeled=0, num_test=0,
                              shape=(16, 24, 24), domains=("A",))
    fb = make_phantom_dataset(str(tmp_path / "b"), 993, num_labeled=1, num_unlabeled=0, num_test=0,
                              shape=(16, 24, 24), domains=("B",))
    assert np.array_equal(read(os.path.join(fa, "labelsTr/phantom_000.nii.gz")),
                          read(os.path.join(fb, "labelsTr/phantom_000.nii.gz")))
    ia, ib = read(os.path.join(fa, "imagesTr/phantom_000_0000.nii.gz")), read(os.path.join(fb, "imagesTr/phantom_000_0000.nii.gz"))
    assert abs(ia[ia > 0].mean() - ib[ib > 0].mean()) > 5


def test_refuses_overwrite(tmp_path):
    make_phantom_dataset(str(tmp_path), 994, num_labeled=1, num_unlabeled=0, num_test=0, shape=(8, 8, 8))
    with pytest.raises(ADInputError, match="Dataset994_ADPhantom already exists.*overwrite"):
        make_phantom_dataset(str(tmp_path), 994, num_labeled=1, num_unlabeled=0, num_test=0, shape=(8, 8, 8))
    make_phantom_dataset(str(tmp_path), 994, num_labeled=2, num_unlabeled=0, num_test=0, shape=(8, 8, 8),
                         overwrite=True)
    assert len(os.listdir(tmp_path / "Dataset994_ADPhantom" / "imagesTr")) == 2
    assert os.listdir(tmp_path) == ["Dataset994_ADPhantom"]  # no staging folder left behind


def test_cli(tmp_path, capsys):
    make_phantom_entry(["-o", str(tmp_path), "-d", "995", "--num_labeled", "2", "--num_unlabeled", "1",
                        "--num_test", "0", "--shape", "8", "12", "12", "--domains", "A", "B"])
    out = capsys.readouterr().out.strip()
    assert out.endswith("Dataset995_ADPhantom")
    assert make_phantom_entry(["-o", str(tmp_path), "-d", "995", "--shape", "8", "12", "12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adnnunet_make_phantom: error: ") and "already exists" in err and "Traceback" not in err
