"""The unlabeled patch loader: nnU-Net's own ``nnUNetDataLoader`` over the image-only unlabeled folder.

Patches are random crops (no foreground oversampling, ``oversample_foreground_percent = 0``; the ignore-label
sampling path is disabled), drawn with replacement: ``keys ~ U(identifiers)^batch_size``, lower corner
``~ U{-pad//2, ..., shape + pad//2 + pad%2 - initial_patch_size}`` per axis, exactly nnU-Net's random crop.
The data come only from the folder written by ``adnnunet_preprocess_unlabeled`` (image-only preprocessing), whose
``_seg`` is the nonzero mask (0 inside / -1 outside the body, after transforms -1 -> 0 with the default pipeline)
and whose ``class_locations`` are empty: no label can be read through this loader. Use only ``batch['data']``.
"""
import os
from typing import Sequence

from ad_nnunet.errors import ADInputError
from ad_nnunet.data.unlabeled_preprocessing import manifest_path

_CASE_SUFFIXES = (".b2nd", "_seg.b2nd", ".pkl")


def build_unlabeled_loader(folder: str, identifiers: Sequence[str], batch_size: int, initial_patch_size,
                           final_patch_size, label_manager, transforms):
    """``nnUNetDataLoader`` over ``nnUNetDatasetBlosc2(folder, identifiers)`` for unlabeled cases.

    ``folder`` must be an unlabeled folder (it has the manifest of ``adnnunet_preprocess_unlabeled``), and every
    identifier must be in it; otherwise ``ADInputError`` names the missing case(s) and the fix.
    """
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    fix = "Fix: run `adnnunet_preprocess_unlabeled -d DATASET -c CONFIGURATION` (again after changing ad_settings)."
    if not os.path.isfile(manifest_path(folder)):
        raise ADInputError(f"{folder} was not written by adnnunet_preprocess_unlabeled (no manifest); the unlabeled "
                           f"loader only reads image-only preprocessed data. {fix}")
    identifiers = [str(i) for i in identifiers]
    if not identifiers:
        raise ADInputError(f"No unlabeled case given for {folder}. Fix: add images to imagesUnlabeled or list "
                           f"hidden-label cases in ad_settings.json, then run adnnunet_preprocess_unlabeled.")
    missing = [i for i in identifiers if not all(os.path.isfile(os.path.join(folder, i + s)) for s in _CASE_SUFFIXES)]
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in total)" if len(missing) > 5 else "")
        raise ADInputError(f"Unlabeled case(s) {shown} missing from {folder}. {fix}")
    # a copy: nnU-Net's dataset sorts the list it is given in place
    dataset = nnUNetDatasetBlosc2(folder, list(identifiers))
    loader = nnUNetDataLoader(dataset, batch_size, initial_patch_size, final_patch_size, label_manager,
                              oversample_foreground_percent=0.0, sampling_probabilities=None, pad_sides=None,
                              probabilistic_oversampling=False, transforms=transforms)
    # with an ignore label nnU-Net would crop around class_locations[(-1, *labels)]; unlabeled crops are random
    loader.has_ignore = False
    return loader


def check_label_values(dataset, label_manager) -> None:
    """Every labeled case's preprocessed segmentation holds only labels of dataset.json (and nnU-Net's -1 outside
    the nonzero mask); otherwise ``ADInputError`` names the case, the values and the fix.

    Checked when training starts, before any data-loading worker exists: nnU-Net plans and preprocesses a dataset
    with an unknown label value unless ``--verify_dataset_integrity`` is given, and training would then fail only at
    its first step, without naming a case. The cost is one read and a min/max of each labeled segmentation.
    """
    import numpy as np

    num_classes = label_manager.num_segmentation_heads
    for identifier in dataset.identifiers:
        seg = np.asarray(dataset.load_case(identifier)[1][:])
        if seg.min() < -1 or seg.max() >= num_classes:  # integer labels: the range decides, unique() only to report
            bad = sorted(int(v) for v in np.unique(seg) if not -1 <= v < num_classes)
            raise ADInputError(
                f"Case {identifier}: its label map contains value(s) {bad}, but dataset.json defines labels "
                f"0..{num_classes - 1}. Fix: correct labelsTr/{identifier} (or add the label to dataset.json), then "
                f"run nnUNetv2_plan_and_preprocess again with --verify_dataset_integrity.")
