"""Preprocess unlabeled images with exactly the plans of the labeled ones (image-only, labels never opened).

Output: ``$nnUNet_preprocessed/<Dataset>/<data_identifier>_unlabeled/`` (e.g. ``nnUNetPlans_3d_fullres_unlabeled``),
a sibling of nnU-Net's labeled folder in nnU-Net's own blosc2 format (``<id>.b2nd``, ``<id>_seg.b2nd``, ``<id>.pkl``).
A sibling and not the labeled folder because nnU-Net lists every ``*.b2nd`` of that folder for its automatic 5-fold
split and ``fold all``.

Sources: every ``imagesUnlabeled`` case, plus the IMAGE files of each imagesTr case that some fold of
``ad_settings.json`` lists as unlabeled (hidden-label cases). Each case goes through the configuration's own
preprocessor, ``run_case(image_files, None, ...)``: transpose, crop to the nonzero region, normalize with the labeled
cases' intensity statistics, resample to the configuration's spacing. With ``seg_file=None`` nnU-Net never reads a
label; ``seg`` is the nonzero mask (0 inside, -1 outside) and ``class_locations`` is empty for every class, so no
foreground information exists in the output at all.

Staleness: ``.ad_meta/ad_unlabeled_manifest.json`` (a hidden subfolder, so nnU-Net's ``get_identifiers`` and
``infer_dataset_class`` still see a clean folder) stores a SHA-256 of everything that determines the output (the
resolved configuration: data_identifier, preprocessor, spacing, normalization, resampling, ...; the plans' intensity
properties, transpose, reader/writer; dataset.json channel names, file ending and labels; nnU-Net's version) and per
case its source files with size and mtime_ns. A changed global hash rebuilds the folder; a changed case is redone;
cases no longer required are deleted. Training-only keys of the configuration (architecture, batch size, patch size,
...) are left out of the hash: configurations that share a data_identifier (e.g. the ``3d_tiny`` preset of
``3d_fullres``) share the folder, like they share nnU-Net's labeled folder, instead of rebuilding it in turn. The
patch size only sets the blosc2 chunk layout (access speed, not values); the first run's layout is kept.
"""
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np

from ad_nnunet.data.image_integrity import nifti_problem
from ad_nnunet.data.raw import list_labeled_cases, list_unlabeled_cases, raw_dataset_folder
from ad_nnunet.data.settings import load_settings
from ad_nnunet.errors import ADInputError
from ad_nnunet.publishing import write_json_atomic

MANIFEST_NAME = "ad_unlabeled_manifest.json"
META_DIRNAME = ".ad_meta"
_TMP_DIRNAME = ".ad_tmp"
_MANIFEST_VERSION = 1
# rename order: the data file last, because nnU-Net's get_identifiers lists a case as soon as <id>.b2nd exists
_CASE_SUFFIXES = ("_seg.b2nd", ".pkl", ".b2nd")
# configuration keys that do not influence preprocessing (see the module docstring); keys starting with "ad_" are
# this plugin's metadata
_TRAINING_ONLY_KEYS = ("architecture", "batch_size", "batch_dice", "patch_size", "median_image_size_in_voxels",
                       "inherits_from", "next_stage", "previous_stage", "resampling_fn_probabilities",
                       "resampling_fn_probabilities_kwargs")


def manifest_path(folder: str) -> str:
    """Where the manifest of an unlabeled folder lives."""
    return os.path.join(folder, META_DIRNAME, MANIFEST_NAME)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


@dataclass
class _Context:
    dataset: str
    configuration: str
    plans_identifier: str
    plans: dict
    dataset_json: dict
    folder: str
    global_signature: dict
    global_hash: str


def _load_context(dataset_name_or_id, configuration: str, plans_identifier: str) -> _Context:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = os.path.basename(raw_dataset_folder(dataset_name_or_id))
    pre = os.path.join(os.fspath(nnUNet_preprocessed), name)
    hint = f"Fix: run `nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} -c {configuration}` first."
    plans_file = os.path.join(pre, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise ADInputError(f"Plans file {plans_file} not found. {hint}")
    plans = _read_json(plans_file)
    pm = PlansManager(plans)
    if configuration not in pm.available_configurations:
        raise ADInputError(f"Configuration {configuration!r} is not in {plans_file} (available: "
                           f"{pm.available_configurations}). Fix: pick one of those with -c.")
    cm = pm.get_configuration(configuration)
    dataset_json_file = os.path.join(pre, "dataset.json")
    labeled_folder = os.path.join(pre, cm.data_identifier)
    if not os.path.isfile(dataset_json_file) or not os.path.isdir(labeled_folder):
        raise ADInputError(f"{name} is not preprocessed for {configuration} ({labeled_folder} missing). {hint}")
    # the preprocessed copy of dataset.json, as nnU-Net's DefaultPreprocessor.run uses
    dataset_json = _read_json(dataset_json_file)
    try:
        from importlib.metadata import version
        nnunet_version = version("nnunetv2")
    except Exception:  # not installed as a distribution (e.g. source checkout)
        nnunet_version = "unknown"
    signature = {
        "manifest_version": _MANIFEST_VERSION,
        "nnunetv2": nnunet_version,
        "configuration": {k: v for k, v in cm.configuration.items()
                          if k not in _TRAINING_ONLY_KEYS and not k.startswith("ad_")},
        "foreground_intensity_properties_per_channel": pm.foreground_intensity_properties_per_channel,
        "transpose_forward": pm.transpose_forward,
        "image_reader_writer": plans.get("image_reader_writer"),
        "label_manager": plans.get("label_manager"),
        "channel_names": dataset_json.get("channel_names", dataset_json.get("modality")),
        "file_ending": dataset_json["file_ending"],
        "labels": dataset_json["labels"],
        "regions_class_order": dataset_json.get("regions_class_order"),
    }
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()
    folder = os.path.join(pre, cm.data_identifier + "_unlabeled")
    return _Context(str(dataset_name_or_id), configuration, plans_identifier, plans, dataset_json, folder,
                    signature, digest)


def unlabeled_folder(dataset_name_or_id: Union[int, str], configuration: str,
                     plans_identifier: str = "nnUNetPlans") -> str:
    """``$nnUNet_preprocessed/<Dataset>/<data_identifier>_unlabeled`` of a configuration."""
    return _load_context(dataset_name_or_id, configuration, plans_identifier).folder


def required_unlabeled_cases(dataset_name_or_id: Union[int, str]) -> Dict[str, List[str]]:
    """Case id -> image files of everything that must be preprocessed image-only.

    The union of all imagesUnlabeled cases and, over all folds of ``ad_settings.json``, the imagesTr cases listed as
    unlabeled (their image files only; their labels are never part of this mapping).
    """
    raw = raw_dataset_folder(dataset_name_or_id)
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        raise ADInputError(f"Raw dataset {raw} not found; unlabeled preprocessing reads the raw images. "
                           f"Fix: make nnUNet_raw point at the raw datasets.")
    dataset_json = _read_json(os.path.join(raw, "dataset.json"))
    required = dict(list_unlabeled_cases(raw, dataset_json))
    settings = load_settings(dataset_name_or_id)
    if settings is not None:
        labeled = list_labeled_cases(raw, dataset_json)
        for fold in settings["folds"]:
            for case in fold["unlabeled"]:
                if case in labeled:
                    required[case] = labeled[case]
    return dict(sorted(required.items()))


def _case_signature(files: List[str]) -> List[list]:
    sig = []
    for f in files:
        st = os.stat(f)
        sig.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    return sig


def _case_complete(folder: str, case: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, case + s)) for s in _CASE_SUFFIXES)


def _remove_case(folder: str, case: str) -> None:
    for s in reversed(_CASE_SUFFIXES):  # data file first: the case disappears from get_identifiers at once
        p = os.path.join(folder, case + s)
        if os.path.isfile(p):
            os.remove(p)


def _folder_case_ids(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        return []
    ids = set()
    for f in os.listdir(folder):
        for s in _CASE_SUFFIXES:
            if f.endswith(s) and os.path.isfile(os.path.join(folder, f)):
                ids.add(f[: -len(s)])
                break
    return sorted(ids)


@dataclass
class _Plan:
    rebuild: bool
    todo: Dict[str, List[str]] = field(default_factory=dict)
    remove: List[str] = field(default_factory=list)
    keep: Dict[str, dict] = field(default_factory=dict)


def _make_plan(ctx: _Context, required: Dict[str, List[str]]) -> _Plan:
    manifest = None
    mpath = manifest_path(ctx.folder)
    if os.path.isfile(mpath):
        try:
            manifest = _read_json(mpath)
        except (OSError, json.JSONDecodeError):
            manifest = None  # unreadable manifest: rebuild from scratch
    if manifest is None or manifest.get("global_hash") != ctx.global_hash:
        return _Plan(rebuild=True, todo=dict(required))
    plan = _Plan(rebuild=False)
    entries = manifest.get("cases", {})
    for case, files in required.items():
        entry = entries.get(case)
        if entry is not None and entry.get("files") == _case_signature(files) and _case_complete(ctx.folder, case):
            plan.keep[case] = entry
        else:
            plan.todo[case] = files
    plan.remove = [c for c in sorted(set(entries) | set(_folder_case_ids(ctx.folder))) if c not in required]
    return plan


def is_up_to_date(dataset_name_or_id: Union[int, str], configuration: str = "3d_fullres",
                  plans_identifier: str = "nnUNetPlans") -> bool:
    """True when ``preprocess_unlabeled`` would change nothing (no rebuild, no case to redo or delete)."""
    ctx = _load_context(dataset_name_or_id, configuration, plans_identifier)
    plan = _make_plan(ctx, required_unlabeled_cases(dataset_name_or_id))
    return not plan.rebuild and not plan.todo and not plan.remove


def _empty_class_locations(label_manager, ndim: int) -> dict:
    """``class_locations`` with the keys nnU-Net's preprocessor would write, each an empty ``(0, ndim)`` array."""
    keys = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    keys = [tuple(int(i) for i in k) if isinstance(k, (list, tuple)) else int(k) for k in keys]
    if label_manager.has_ignore_label:
        keys.append(tuple([-1] + list(label_manager.all_labels)))
    return {k: np.zeros((0, ndim), dtype=np.int64) for k in keys}


@contextmanager
def _folder_lock(folder: str):
    """Exclusive lock (``<folder>.lock`` next to it): trainings of several folds started together run the update
    one after another instead of rebuilding the same folder concurrently. No-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _describe_read_error(case: str, image_files: List[str], plans_manager, err: Exception) -> str:
    """Pinpoint which file of a failed case is unreadable (re-reading each file alone)."""
    rw = plans_manager.image_reader_writer_class()
    for f in image_files:
        try:
            rw.read_images([f])
        except Exception as e:  # any reader failure means the file is unusable
            detail = " ".join(str(e).split())[-300:]  # SimpleITK puts the useful part on the last line
            return (f"Unlabeled case {case!r}: cannot read image file {f} ({type(e).__name__}: {detail}). "
                    f"Fix: re-export or remove it.")
    return (f"Unlabeled case {case!r}: preprocessing its files {image_files} failed ({type(err).__name__}: {err}). "
            f"Fix: make all channels of the case share shape and spacing, or re-export or remove it.")


def _preprocess_case(case: str, image_files: List[str], folder: str, plans: dict, configuration: str,
                     dataset_json: dict) -> Optional[str]:
    """Preprocess one case into ``folder`` via temp files + rename. Returns an error message or None.

    Errors are returned rather than raised so that worker processes never have to pickle exceptions.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    tmp = os.path.join(folder, _TMP_DIRNAME, case)
    try:
        # readers accept truncated NIfTI files and zero NaN voxels silently (image_integrity)
        for f in image_files:
            problem = nifti_problem(f)
            if problem is not None:
                return f"Unlabeled case {case!r}: {problem}"
        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        preprocessor = cm.preprocessor_class(verbose=False)
        try:
            # seg_file=None: nnU-Net reads no label; seg becomes the nonzero mask (0 / -1)
            data, seg, properties = preprocessor.run_case(image_files, None, pm, cm, dataset_json)
        except Exception as e:  # unreadable/inconsistent input; classified below
            return _describe_read_error(case, image_files, pm, e)
        if not np.isfinite(data).all():  # formats other than NIfTI, whose reader kept NaN / inf
            return (f"Unlabeled case {case!r}: {int((~np.isfinite(data)).sum())} NaN or infinite voxel(s) in "
                    f"{image_files}. Fix: replace them with finite values and save again, or remove the case.")
        properties["class_locations"] = _empty_class_locations(pm.get_label_manager(dataset_json), data.ndim)
        # dtypes and blosc2 layout as in DefaultPreprocessor.run_case_save
        data = data.astype(np.float32, copy=False)
        seg = seg.astype(np.int16, copy=False)
        block_data, chunk_data = comp_blosc2_params(data.shape, tuple(cm.patch_size), data.itemsize)
        block_seg, chunk_seg = comp_blosc2_params(seg.shape, tuple(cm.patch_size), seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, tmp, chunks=chunk_data, blocks=block_data,
                                      chunks_seg=chunk_seg, blocks_seg=block_seg)
        for s in _CASE_SUFFIXES:
            os.replace(tmp + s, os.path.join(folder, case + s))
        return None
    finally:
        for s in _CASE_SUFFIXES:
            if os.path.isfile(tmp + s):
                os.remove(tmp + s)


def _run_cases(ctx: _Context, todo: Dict[str, List[str]], num_processes: int, verbose: bool) -> Dict[str, str]:
    """Run ``_preprocess_case`` for every case; returns case -> error message for the failed ones."""
    from tqdm import tqdm

    errors = {}
    args = [(c, files, ctx.folder, ctx.plans, ctx.configuration, ctx.dataset_json) for c, files in todo.items()]
    with tqdm(total=len(args), desc="Preprocessing unlabeled cases", disable=not verbose) as pbar:
        if num_processes == 1 or len(args) <= 1:
            for a in args:
                err = _preprocess_case(*a)
                if err is not None:
                    errors[a[0]] = err
                pbar.update()
            return errors
        import multiprocessing

        # spawn like nnU-Net: forked workers can deadlock on torch/blosc2 thread pools
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(args))) as pool:
            workers = list(pool._pool)
            pending = {a[0]: pool.apply_async(_preprocess_case, a) for a in args}
            while pending:
                if not all(w.is_alive() for w in workers):
                    raise RuntimeError("A preprocessing worker died (likely out of memory). "
                                       "Re-run with fewer processes (-np).")
                for c in [c for c, r in pending.items() if r.ready()]:
                    err = pending.pop(c).get()
                    if err is not None:
                        errors[c] = err
                    pbar.update()
                time.sleep(0.05)
    return errors


def preprocess_unlabeled(dataset_name_or_id: Union[int, str], configuration: str = "3d_fullres",
                         plans_identifier: str = "nnUNetPlans", num_processes: Optional[int] = None,
                         verbose: bool = True) -> str:
    """Bring ``<data_identifier>_unlabeled`` up to date for one configuration; return the folder.

    Incremental (see the module docstring). On unreadable images, the other cases are still finished and recorded,
    no file of the failed case remains, and ``ADInputError`` names the case and the file.
    """
    import nnunetv2.configuration

    if num_processes is None:
        num_processes = nnunetv2.configuration.default_num_processes
    num_processes = max(1, int(num_processes))
    ctx = _load_context(dataset_name_or_id, configuration, plans_identifier)
    required = required_unlabeled_cases(dataset_name_or_id)
    if not required:  # an emptied imagesUnlabeled/ is far more often a mistake than a wish to delete everything
        done = _folder_case_ids(ctx.folder)
        kept = f" The {len(done)} case(s) already preprocessed in {ctx.folder} were left as they are." if done else ""
        raise ADInputError(
            f"{ctx.dataset} has no unlabeled image: imagesUnlabeled/ is empty or missing and ad_settings.json lists "
            f"no hidden-label imagesTr case.{kept} Fix: put the unlabeled images (<case>_0000<ending>) into "
            f"imagesUnlabeled/, or write ad_settings.json with adnnunet_make_settings.")
    with _folder_lock(ctx.folder):
        return _update(ctx, required, num_processes, verbose)


def _update(ctx: _Context, required: Dict[str, List[str]], num_processes: int, verbose: bool) -> str:
    """Rebuild / redo / delete according to ``_make_plan``; the manifest is written (atomically) last."""
    plan = _make_plan(ctx, required)
    if plan.rebuild and os.path.isdir(ctx.folder):
        shutil.rmtree(ctx.folder)
    os.makedirs(os.path.join(ctx.folder, META_DIRNAME), exist_ok=True)
    tmp_dir = os.path.join(ctx.folder, _TMP_DIRNAME)
    shutil.rmtree(tmp_dir, ignore_errors=True)  # leftovers of a killed run
    os.makedirs(tmp_dir)
    for case in plan.remove:
        _remove_case(ctx.folder, case)
    if verbose:
        print(f"{ctx.folder}: {len(plan.keep)} up to date, {len(plan.todo)} to preprocess, "
              f"{len(plan.remove)} removed" + (" (full rebuild: new folder or changed plans/dataset.json)"
                                               if plan.rebuild else ""))
    entries = dict(plan.keep)
    errors = {}
    try:
        errors = _run_cases(ctx, plan.todo, num_processes, verbose)
        for case, files in plan.todo.items():
            if case in errors:
                _remove_case(ctx.folder, case)  # no stale or partial output of a failed case
            else:
                entries[case] = {"files": _case_signature(files)}
    finally:
        manifest = {"format_version": _MANIFEST_VERSION, "dataset": ctx.dataset,
                    "configuration": ctx.configuration, "plans_identifier": ctx.plans_identifier,
                    "global_hash": ctx.global_hash, "global_signature": ctx.global_signature,
                    "cases": dict(sorted(entries.items()))}
        write_json_atomic(manifest_path(ctx.folder), manifest, indent=1, sort_keys=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if errors:
        failed = sorted(errors)
        more = f" ({len(failed) - 1} more failed case(s): {failed[1:6]})" if len(failed) > 1 else ""
        raise ADInputError(errors[failed[0]] + more)
    return ctx.folder
