"""NIfTI completeness and finiteness checks (truncated gzip / raw files, NaN and inf voxels, not-NIfTI files)."""
import gzip
import os

import numpy as np
import pytest
import SimpleITK as sitk

from ad_nnunet.data.image_integrity import nifti_problem


def write(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return str(path)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
def test_complete_finite_images_pass(tmp_path, ending, dtype):
    array = (np.random.RandomState(0).rand(7, 9, 11) * 100).astype(dtype)
    assert nifti_problem(write(tmp_path / f"ok{ending}", array)) is None


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_found_and_located(tmp_path, ending, dtype, bad):
    array = np.random.RandomState(0).rand(7, 9, 11).astype(dtype)
    array[3, 4, 5] = bad  # numpy (z, y, x) -> NIfTI voxel index (x, y, z) = (5, 4, 3)
    array[6, 8, 10] = bad
    path = write(tmp_path / f"bad{ending}", array)
    # what makes the check necessary: SimpleITK reads these voxels as 0
    problem = nifti_problem(path)
    assert problem is not None and "2 NaN or infinite voxel(s) of 693" in problem and "(5, 4, 3)" in problem
    assert problem.startswith(path) and "Fix:" in problem


def test_non_finite_voxels_beyond_the_first_read_block(tmp_path, monkeypatch):
    """Voxels are checked across block boundaries (a block size that splits voxels)."""
    import ad_nnunet.data.image_integrity as ii

    monkeypatch.setattr(ii, "_CHUNK", 1001)
    array = np.zeros((20, 30, 40), dtype=np.float32)
    array[19, 29, 39] = np.nan
    problem = nifti_problem(write(tmp_path / "late.nii.gz", array))
    assert problem is not None and "1 NaN or infinite" in problem and "(39, 29, 19)" in problem


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_files_are_found(tmp_path, ending, keep):
    path = write(tmp_path / f"full{ending}", np.random.RandomState(1).rand(10, 20, 30).astype(np.float32))
    data = open(path, "rb").read()
    cut = tmp_path / f"cut{ending}"
    cut.write_bytes(data[:int(len(data) * keep)])
    problem = nifti_problem(str(cut))
    assert problem is not None and ("truncated" in problem or "no valid NIfTI header" in problem), problem
    assert "Fix: re-export or re-copy the file" in problem


def test_empty_random_and_non_nifti_gzip(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.nii.gz"
    noise.write_bytes(os.urandom(500))
    text = tmp_path / "text.nii.gz"
    text.write_bytes(gzip.compress(b"not an image " * 100))
    for path in (empty, noise, text):
        problem = nifti_problem(str(path))
        assert problem is not None and str(path) in problem and "Fix:" in problem


def test_other_formats_are_not_checked(tmp_path):
    path = tmp_path / "x.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 4, 5), np.nan, np.float32)), str(path))
    assert nifti_problem(str(path)) is None
