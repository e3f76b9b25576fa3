"""Session fixtures shared by all test files: nnU-Net folders and a planned + preprocessed phantom dataset."""
import itertools
import json
import os
import shutil
from pathlib import Path

import pytest

# nnunetv2.configuration reads these at import time (default_num_processes); set them before any nnU-Net import.
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")

PHANTOM_ID = 990
PHANTOM_NAME = "ADPhantom"
_copy_ids = itertools.count(900)


def shared_datasets_dir() -> Path:
    """``../shared/datasets`` (or ``$AD_SHARED_DATASETS``); may not exist."""
    env = os.environ.get("AD_SHARED_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory):
    """Fresh nnUNet_raw/preprocessed/results folders in tmp, exported as env vars (1 process, no DA workers)."""
    root = tmp_path_factory.mktemp("nnunet")
    dirs = {k: str(root / k) for k in ("raw", "preprocessed", "results")}
    for d in dirs.values():
        os.makedirs(d)
    os.environ["nnUNet_raw"] = dirs["raw"]
    os.environ["nnUNet_preprocessed"] = dirs["preprocessed"]
    os.environ["nnUNet_results"] = dirs["results"]
    os.environ["nnUNet_def_n_proc"] = "1"
    os.environ["nnUNet_n_proc_DA"] = "0"
    return dirs


@pytest.fixture(scope="session")
def planned_phantom(nnunet_dirs):
    """Phantom dataset 990 (6 labeled, 6 unlabeled, 2 test, 24x32x32) planned and preprocessed for 3d_fullres.

    Stock nnU-Net fingerprinting/planning/preprocessing runs on a raw folder that contains imagesUnlabeled,
    which proves that nnU-Net ignores that folder.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    from ad_nnunet.dataset_conversion.phantom import make_phantom_dataset

    raw = make_phantom_dataset(nnunet_dirs["raw"], PHANTOM_ID, PHANTOM_NAME, num_labeled=6, num_unlabeled=6,
                               num_test=2, shape=(24, 32, 32), seed=0)
    extract_fingerprints([PHANTOM_ID], num_processes=1, check_dataset_integrity=True, clean=True, verbose=False,
                         show_progress_bar=False)
    # nnU-Net's planner calls torch.set_num_threads(get_allowed_n_proc_DA()), which fails for nnUNet_n_proc_DA=0
    os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        plans_identifier = plan_experiments([PHANTOM_ID])
    finally:
        os.environ["nnUNet_n_proc_DA"] = "0"
    preprocess([PHANTOM_ID], plans_identifier, configurations=("3d_fullres",), num_processes=(1,), verbose=False,
               show_progress_bar=False)
    name = os.path.basename(raw)
    return dict(dataset_id=PHANTOM_ID, dataset_name=name, raw=raw,
                preprocessed=os.path.join(nnunet_dirs["preprocessed"], name))


@pytest.fixture
def phantom_copy(planned_phantom, nnunet_dirs):
    """Factory: an independent copy of the planned phantom (raw + preprocessed) under a fresh dataset id.

    For tests that modify files; ``phantom_copy()`` returns the same kind of dict as ``planned_phantom``.
    The copies are deleted at the end of the test.
    """
    made = []

    def make(clean: bool = True):
        """``clean`` drops settings, splits and unlabeled folders that other tests may have added to 990."""
        new_id = next(_copy_ids)
        name = f"Dataset{new_id:03d}_{PHANTOM_NAME}Copy"
        raw = os.path.join(nnunet_dirs["raw"], name)
        pre = os.path.join(nnunet_dirs["preprocessed"], name)
        shutil.copytree(planned_phantom["raw"], raw)
        shutil.copytree(planned_phantom["preprocessed"], pre)
        made.extend([raw, pre])
        # nnU-Net locates a dataset's preprocessed data through the plans' dataset_name
        for f in os.listdir(pre):
            if f.endswith(".json") and f.startswith("nnUNetPlans"):
                plans_file = os.path.join(pre, f)
                with open(plans_file) as fh:
                    plans = json.load(fh)
                plans["dataset_name"] = name
                with open(plans_file, "w") as fh:
                    json.dump(plans, fh, indent=2)
        if clean:
            for f in os.listdir(pre):
                p = os.path.join(pre, f)
                if f in ("ad_settings.json", "splits_final.json"):
                    os.remove(p)
                elif f.endswith("_unlabeled") and os.path.isdir(p):
                    shutil.rmtree(p)
        return dict(dataset_id=new_id, dataset_name=name, raw=raw, preprocessed=pre)

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tiny(phantom_copy, monkeypatch):
    """A phantom copy with the ``tiny`` preset (configuration ``3d_tiny``) and the plugin on nnUNet_extTrainer."""
    from ad_nnunet import ext_trainer_dir
    from ad_nnunet.plans_presets import apply_preset

    ds = phantom_copy()
    apply_preset(ds["dataset_id"], "tiny")
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_dir())
    return ds
