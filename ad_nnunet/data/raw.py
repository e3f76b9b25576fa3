"""The raw-dataset convention for unlabeled images.

Labeled cases stay where stock nnU-Net expects them::

    <nnUNet_raw>/DatasetXXX_Name/imagesTr/<id>_<XXXX><file_ending>   (one file per channel XXXX = 0000 .. n-1)
    <nnUNet_raw>/DatasetXXX_Name/labelsTr/<id><file_ending>

Truly unlabeled images (no label exists anywhere) go into a sibling folder that stock
``nnUNetv2_plan_and_preprocess`` ignores, with the same channel suffixes and ``file_ending``::

    <nnUNet_raw>/DatasetXXX_Name/imagesUnlabeled/<id>_<XXXX><file_ending>

They therefore never influence nnU-Net's fingerprint (intensity statistics, target spacing) or its plans; they are
normalized and resampled with the statistics of the labeled cases, exactly like test images.
"""
import copy
import os
import re
from typing import Dict, List, Union

from ad_nnunet.errors import ADInputError

UNLABELED_DIRNAME = "imagesUnlabeled"

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def raw_dataset_folder(dataset_name_or_id: Union[int, str]) -> str:
    """``$nnUNet_raw/<DatasetXXX_Name>`` for a dataset name or id (nnU-Net's own name resolution)."""
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:
        raise ADInputError(f"Cannot resolve dataset {dataset_name_or_id!r}: {e}\n"
                           f"Fix: check the dataset id/name and the nnUNet_raw/nnUNet_preprocessed variables.") from e
    return os.path.join(os.fspath(nnUNet_raw), name)


def list_labeled_cases(raw_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Labeled cases as nnU-Net sees them: case id -> image files (channel order), from ``imagesTr``.

    A dataset.json ``"dataset"`` mapping is honoured exactly like nnU-Net does. Label files are not opened.
    """
    from nnunetv2.utilities.utils import (create_paths_fn, get_filenames_of_train_images_and_targets,
                                          get_identifiers_from_splitted_dataset_folder)

    if "dataset" in dataset_json:
        # a copy: nnU-Net rewrites the paths of the mapping it is given in place
        cases = get_filenames_of_train_images_and_targets(raw_folder, copy.deepcopy(dataset_json))
        return {k: list(v["images"]) for k, v in sorted(cases.items())}
    images_tr = os.path.join(raw_folder, "imagesTr")
    if not os.path.isdir(images_tr):
        raise ADInputError(f"{images_tr} does not exist. Fix: put the labeled images in imagesTr (nnU-Net raw layout).")
    ending = dataset_json["file_ending"]
    # create_paths_fn directly instead of create_lists_from_splitted_dataset_folder, which forks a 12-process pool.
    files = sorted(f for f in os.listdir(images_tr) if f.endswith(ending))
    ids = get_identifiers_from_splitted_dataset_folder(images_tr, ending)
    return {str(i): create_paths_fn(images_tr, files, ending, str(i)) for i in ids}


def list_unlabeled_cases(raw_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Unlabeled cases: case id -> image files (channels 0000 .. n-1 in order) from ``imagesUnlabeled``.

    Validates the folder (hidden files such as ``.DS_Store`` are ignored):

    * every file ends with dataset.json's ``file_ending`` and carries a 4-digit channel suffix;
    * every case has exactly the channels ``0000 .. n-1`` with ``n = len(channel_names)``;
    * no unlabeled id equals a labeled (``imagesTr``) id.

    A missing or empty folder gives ``{}``.
    """
    folder = os.path.join(raw_folder, UNLABELED_DIRNAME)
    if not os.path.isdir(folder):
        return {}
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    channels: Dict[str, Dict[int, str]] = {}
    for fname in sorted(os.listdir(folder)):
        path = os.path.join(folder, fname)
        if fname.startswith(".") or not os.path.isfile(path):
            continue
        if not fname.endswith(ending):
            raise ADInputError(f"{path}: unlabeled images must use the dataset's file_ending {ending!r}. "
                               f"Fix: rename/convert it to {ending}.")
        m = _CHANNEL_RE.match(fname[: -len(ending)])
        if m is None:
            raise ADInputError(f"{path}: missing the 4-digit channel suffix. "
                               f"Fix: rename it to <case>_0000{ending} (one file per channel, like imagesTr).")
        channels.setdefault(m["case"], {})[int(m["channel"])] = path
    expected = list(range(n_channels))
    for case, chans in channels.items():
        if sorted(chans) != expected:
            found = ", ".join(f"{c:04d}" for c in sorted(chans))
            want = ", ".join(f"{c:04d}" for c in expected)
            raise ADInputError(f"Unlabeled case {case!r} in {folder} has channels [{found}] but dataset.json "
                               f"channel_names asks for [{want}]. Fix: provide exactly one file per channel "
                               f"({case}_0000{ending} ...) or remove the case.")
    labeled = set(list_labeled_cases(raw_folder, dataset_json)) if os.path.isdir(
        os.path.join(raw_folder, "imagesTr")) or "dataset" in dataset_json else set()
    for case in sorted(channels):
        if case in labeled:
            raise ADInputError(f"Unlabeled case {case!r} in {folder} has the same id as a labeled case in imagesTr. "
                               f"Fix: rename to e.g. unl_{case} (all its channel files).")
    return {case: [chans[c] for c in expected] for case, chans in sorted(channels.items())}


def list_test_case_ids(raw_folder: str, dataset_json: dict) -> List[str]:
    """Case ids in ``imagesTs`` (empty if the folder does not exist); files are not opened."""
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder

    folder = os.path.join(raw_folder, "imagesTs")
    if not os.path.isdir(folder):
        return []
    return sorted(str(i) for i in get_identifiers_from_splitted_dataset_folder(folder, dataset_json["file_ending"]))
