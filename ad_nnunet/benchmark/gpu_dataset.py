"""The GPU tier's raw dataset: the LA benchmark's training cases resampled once by a spacing factor with nnU-Net's own
resampling (order 3 for images, rounded back to the source's integer type; linear one-hot for labels), its hold-out
test cases at their ORIGINAL resolution (so ``nnUNetv2_predict`` exports to the original grid and the metrics are in
mm at that resolution), all as uncompressed ``.nii`` (the payload's xz stream compresses them)."""
from __future__ import annotations

import json
from pathlib import Path


def _resample_case(args) -> dict:
    """Resample one training case by ``factor`` with nnU-Net's resampling and write it as .nii."""
    image_path, label_path, out_image, out_label, factor = args
    import numpy as np
    import SimpleITK as sitk
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

    img = sitk.ReadImage(str(image_path))
    lab = sitk.ReadImage(str(label_path))
    data = sitk.GetArrayFromImage(img)
    seg = sitk.GetArrayFromImage(lab)
    spacing = np.array(img.GetSpacing()[::-1], dtype=float)  # array (z, y, x) order
    new_spacing = spacing * factor
    new_shape = compute_new_shape(data.shape, spacing, new_spacing)
    kw = dict(order_z=0, force_separate_z=None)
    new_data = resample_data_or_seg_to_shape(data[None].astype(np.float32), new_shape, spacing, new_spacing,
                                             is_seg=False, order=3, **kw)[0]
    new_seg = resample_data_or_seg_to_shape(seg[None], new_shape, spacing, new_spacing, is_seg=True, order=1, **kw)[0]
    info = np.iinfo(data.dtype) if np.issubdtype(data.dtype, np.integer) else None
    if info is not None:  # back to the source's integer type (uint8 for LA)
        new_data = np.clip(np.rint(new_data), info.min, info.max).astype(data.dtype)
    # keep the physical extent: voxel centres move by half the spacing change (along the image axes)
    shift = (np.array(img.GetSpacing()) * (factor - 1) / 2)
    origin = np.array(img.GetOrigin()) + np.array(img.GetDirection()).reshape(3, 3) @ shift
    for array, ref, path in ((new_data, img, out_image), (new_seg.astype(seg.dtype), lab, out_label)):
        out = sitk.GetImageFromArray(array)
        out.SetSpacing(tuple(float(s) for s in new_spacing[::-1]))
        out.SetOrigin(tuple(float(o) for o in origin))
        out.SetDirection(ref.GetDirection())
        sitk.WriteImage(out, str(path), useCompression=False)
    return {"shape": [int(n) for n in new_shape]}


def _to_nii(src: Path, dst: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(src)), str(dst), useCompression=False)


def build_dataset(source: Path, staging: Path, dataset_id: int, name: str, factor: float, num_processes: int) -> dict:
    """The GPU-tier raw dataset in ``staging/<Dataset>`` from the prepared benchmark dataset ``source`` (with its
    benchmark_split.json); returns its summary."""
    split = json.loads((source / "benchmark_split.json").read_text())
    dataset_json = json.loads((source / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    target = staging / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "splits"):
        (target / sub).mkdir(parents=True)
    jobs = [(source / "imagesTr" / f"{c}_0000{ending}", source / "labelsTr" / f"{c}{ending}",
             target / "imagesTr" / f"{c}_0000.nii", target / "labelsTr" / f"{c}.nii", factor)
            for c in split["labeled"] + split["unlabeled"]]
    if num_processes > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            shapes = pool.map(_resample_case, jobs)
    else:
        shapes = [_resample_case(j) for j in jobs]
    for c in split["test"]:  # original resolution
        _to_nii(source / "imagesTs" / f"{c}_0000{ending}", target / "imagesTs" / f"{c}_0000.nii")
        _to_nii(source / "labelsTs" / f"{c}{ending}", target / "labelsTs" / f"{c}.nii")
    new_json = dict(dataset_json, file_ending=".nii", numTraining=len(jobs),
                    description=f"GPU tier of {source.name}: training cases resampled x{factor} "
                                f"(nnU-Net resampling), test cases at original resolution")
    (target / "dataset.json").write_text(json.dumps(new_json, indent=2) + "\n")
    (target / "splits" / "labeled.txt").write_text("\n".join(split["labeled"]) + "\n")
    (target / "splits" / "unlabeled.txt").write_text("\n".join(split["unlabeled"]) + "\n")
    gpu_split = dict(split, gpu_tier={"source_dataset": source.name, "spacing_factor": factor,
                                      "resampling": "nnU-Net resample_data_or_seg_to_shape: images order 3 "
                                                    "(rounded to the source dtype), labels order 1 (one-hot)",
                                      "test_resolution": "original"})
    (target / "benchmark_split.json").write_text(json.dumps(gpu_split, indent=2) + "\n")
    return {"dataset": target.name, "labeled": len(split["labeled"]), "unlabeled": len(split["unlabeled"]),
            "test": len(split["test"]), "spacing_factor": factor,
            "median_train_shape": sorted(s["shape"] for s in shapes)[len(shapes) // 2]}
