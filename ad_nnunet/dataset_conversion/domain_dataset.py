"""Domain-shift datasets for UDA and SemiDG experiments: simulated "vendors" and real (metadata-defined) domains.

Two ways to turn one labeled nnU-Net raw dataset into a domain-shift dataset (a NEW raw dataset):

* :func:`simulate_domains` assigns cases to domains and applies an acquisition-like intensity/resolution shift per
  domain (:mod:`ad_nnunet.dataset_conversion.scanner_shift`);
* :func:`derive_domain_dataset` uses a given case -> domain mapping (e.g. ACDC's ``pathology_groups.json``) and only
  re-arranges the files.

Layout written (the plugin's raw convention, see :mod:`ad_nnunet.data.raw`), per case of domain ``d``:

==============================================  ===============================================================
``d`` in ``heldout_domains``                    ``imagesTs`` + ``labelsTs`` only: the unseen test domain never
                                                enters nnU-Net's fingerprint or plans (which read ``imagesTr``)
``d`` in ``unlabeled_domains``, folder flag on  ``imagesUnlabeled`` only (labels dropped: truly unlabeled)
any other domain                                ``imagesTr`` + ``labelsTr`` (the split/settings file decides
                                                which of them are hidden as unlabeled)
==============================================  ===============================================================

``dataset.json`` is the source's, with ``numTraining`` recounted, the ``"dataset"`` mapping dropped (files are
written in the standard layout) and ``"ad_domains"`` (case -> domain, every case incl. test cases),
``"ad_simulated"``, ``"ad_heldout_domains"``, ``"ad_unlabeled_domains"`` and ``"ad_source_dataset"`` added.
``domain_shift_recipe.json`` records how the dataset was made. Only the source's labeled cases
(``imagesTr``/``labelsTr``) are used. Everything is written to a hidden staging folder next to the target and
renamed into place at the end (:func:`ad_nnunet.publishing.staged_dataset`), so a failure leaves nothing
half-written.

UDA recipe (labeled source A, unlabeled target B, test on target): give the target two domain names with the same
preset, ``A=identity B=vendorB Bt=vendorB --unlabeled B --heldout Bt --unlabeled_folder``.
SemiDG recipe (several labeled domains, unseen test domain): ``A=identity B=vendorB C=vendorC D=vendorD --heldout D``.
"""
import dataclasses
import hashlib
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ad_nnunet import __version__
from ad_nnunet.data.raw import UNLABELED_DIRNAME, list_labeled_cases
from ad_nnunet.dataset_conversion.scanner_shift import ShiftParams, apply_shift, resolve_shift
from ad_nnunet.errors import ADInputError
from ad_nnunet.publishing import (dataset_folder_name, existing_raw_dataset, link_or_copy, new_dataset_folder,
                                  raw_root_or_env, staged_dataset, write_json_atomic)

RECIPE_FILENAME = "domain_shift_recipe.json"

# ACDC-style time points of one patient: "<patient>_frame01", "<patient>_ED", "<patient>_ES".
_PATIENT_RE = re.compile(r"^(?P<group>.+)_(?:frame\d+|ED|ES)$", re.IGNORECASE)


def patient_group(case_id: str) -> str:
    """The patient a case belongs to, so that all time points of one patient land in the same domain.

    ``case_id`` matching ``^(.+)_(frame\\d+|ED|ES)$`` (case-insensitive) gives the part before the suffix, e.g.
    ``ACDC_patient001_frame01`` and ``ACDC_patient001_frame02`` -> ``ACDC_patient001``, ``A1B2_ED`` -> ``A1B2``.
    Any other id is its own group (fallback: the case id itself).
    """
    m = _PATIENT_RE.match(case_id)
    return m["group"] if m else case_id


def domain_counts(dataset_folder: Union[str, os.PathLike]) -> Dict[str, Dict[str, int]]:
    """``{domain: {folder: number of cases}}`` for ``imagesTr``, ``imagesUnlabeled`` and ``imagesTs``.

    Read from a written dataset's ``dataset.json`` ``"ad_domains"`` and its image folders.
    """
    folder = Path(dataset_folder)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    if "ad_domains" not in dataset_json:
        raise ADInputError(f"{folder / 'dataset.json'} has no 'ad_domains'. Fix: make the dataset with "
                           f"adnnunet_domains (simulate/derive) or add {{case_id: domain}} as 'ad_domains'.")
    ending = dataset_json["file_ending"]
    counts = {d: {} for d in sorted(set(dataset_json["ad_domains"].values()))}
    for sub in ("imagesTr", UNLABELED_DIRNAME, "imagesTs"):
        cases = {f.name[: -len(ending) - 5] for f in (folder / sub).glob(f"*{ending}")} if (folder / sub).is_dir() \
            else set()
        for d in counts:
            counts[d][sub] = sum(dataset_json["ad_domains"].get(c) == d for c in cases)
    return counts


def _resolve_source(source_dataset: Union[int, str, os.PathLike]) -> Path:
    """A raw dataset folder from a path, or a dataset id/name under ``$nnUNet_raw``."""
    if isinstance(source_dataset, (str, os.PathLike)) and Path(source_dataset).is_dir():
        folder = Path(source_dataset)
        if not (folder / "dataset.json").is_file():
            raise ADInputError(f"{folder} has no dataset.json. Fix: point the source at an nnU-Net raw dataset folder "
                               f"(DatasetXXX_Name with dataset.json, imagesTr, labelsTr).")
    else:
        folder = existing_raw_dataset(source_dataset, raw_root_or_env(None, "the source dataset's folder path"))
    return folder.resolve()


def _target_folder(target_dataset_id: int, target_name: str, raw_root, source: Path, overwrite: bool) -> Path:
    """Validate the target id/name and return ``<raw_root>/DatasetXXX_Name``; refuse to clobber anything."""
    raw_root = raw_root_or_env(raw_root, "raw_root (CLI: --raw_root)")
    if (raw_root / dataset_folder_name(target_dataset_id, target_name)).resolve() == source:
        raise ADInputError(f"The target is the source dataset {source}. Fix: choose another target id/name.")
    return new_dataset_folder(raw_root, target_dataset_id, target_name, overwrite).resolve()


def _source_cases(source: Path) -> tuple:
    """``(dataset_json, {case: (image files, label file)})`` of the source's labeled cases."""
    dataset_json = json.loads((source / "dataset.json").read_text())
    for key in ("channel_names", "file_ending"):
        if key not in dataset_json:
            raise ADInputError(f"{source / 'dataset.json'} lacks {key!r}. Fix: add it (nnU-Net v2 dataset.json).")
    images = list_labeled_cases(str(source), dataset_json)
    if not images:
        raise ADInputError(f"{source} has no labeled cases in imagesTr. Fix: point the source at a labeled dataset.")
    n_channels = len(dataset_json["channel_names"])
    cases = {}
    for case, files in images.items():
        if len(files) != n_channels:
            raise ADInputError(f"Case {case!r} of {source} has {len(files)} image files but dataset.json lists "
                               f"{n_channels} channels. Fix: provide {case}_0000..{n_channels - 1:04d} files.")
        label = source / "labelsTr" / f"{case}{dataset_json['file_ending']}"
        if "dataset" in dataset_json:
            label = Path(dataset_json["dataset"][case]["label"])
        if not label.is_file():
            raise ADInputError(f"Case {case!r} has no label file {label}. Fix: add the label, or remove the case's "
                               f"images from the source's imagesTr.")
        cases[case] = ([Path(f) for f in files], label)
    return dataset_json, cases


def _load_json_arg(value, what: str):
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise ADInputError(f"{what} file {path} does not exist. Fix: pass an existing JSON file.")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ADInputError(f"{what} file {path} is not valid JSON ({e}). Fix: correct the file.") from e
    return value


def _case_domains(mapping, cases: Iterable[str], what: str) -> Dict[str, str]:
    """``{case: domain}`` from ``{case: domain}`` or ``{domain: [cases]}``, covering exactly ``cases``."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise ADInputError(f"{what} must be a non-empty JSON object/dict, got {type(mapping).__name__}. Fix: use "
                           f"{{case_id: domain}} or {{domain: [case_ids]}}.")
    if all(isinstance(v, (list, tuple)) for v in mapping.values()):
        case_domain = {}
        for domain, members in mapping.items():
            for case in members:
                if case in case_domain and case_domain[case] != domain:
                    raise ADInputError(f"Case {case!r} is assigned to both {case_domain[case]!r} and {domain!r} in "
                                       f"{what}. Fix: keep it in one domain.")
                case_domain[case] = str(domain)
    elif all(isinstance(v, str) for v in mapping.values()):
        case_domain = {str(k): v for k, v in mapping.items()}
    else:
        raise ADInputError(f"{what} mixes formats. Fix: use either {{case_id: domain}} or {{domain: [case_ids]}}.")
    cases = sorted(cases)
    missing = [c for c in cases if c not in case_domain]
    if missing:
        raise ADInputError(f"Case {missing[0]!r} has no domain in {what} ({len(missing)} case(s) without one: "
                           f"{missing[:10]}). Fix: assign every case of the source dataset to a domain.")
    unknown = sorted(set(case_domain) - set(cases))
    if unknown:
        raise ADInputError(f"{what} names case(s) that are not labeled cases of the source: {unknown[:10]}. Fix: "
                           f"remove them or correct the ids (no channel suffix, no file ending).")
    groups: Dict[str, set] = {}
    for case in cases:
        groups.setdefault(patient_group(case), set()).add(case_domain[case])
    split = {g: sorted(d) for g, d in groups.items() if len(d) > 1}
    if split:
        g = sorted(split)[0]
        raise ADInputError(f"Patient {g!r} has cases in several domains {split[g]} in {what} ({len(split)} such "
                           f"patient(s)); its frames would leak between training and test. Fix: put all cases of a "
                           f"patient into one domain.")
    return {c: case_domain[c] for c in cases}


def _random_assignment(cases: Iterable[str], domains: Sequence[str], seed: int) -> Dict[str, str]:
    """Seeded balanced assignment by patient: shuffle the patient groups, give each to the domain with the fewest
    cases so far (ties: first in ``domains`` order), so frames of one patient share a domain."""
    groups: Dict[str, List[str]] = {}
    for case in sorted(cases):
        groups.setdefault(patient_group(case), []).append(case)
    names = sorted(groups)
    counts = {d: 0 for d in domains}
    case_domain = {}
    for i in np.random.default_rng(seed).permutation(len(names)):
        domain = min(domains, key=lambda d: counts[d])
        counts[domain] += len(groups[names[i]])
        case_domain.update({c: domain for c in groups[names[i]]})
    return dict(sorted(case_domain.items()))


def _check_domain_lists(known: Iterable[str], heldout_domains, unlabeled_domains, unlabeled_folder: bool,
                        present: Iterable[str]) -> tuple:
    known = sorted(set(known))
    heldout, unlabeled = [str(d) for d in heldout_domains], [str(d) for d in unlabeled_domains]
    for what, names in (("held-out", heldout), ("unlabeled", unlabeled)):
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ADInputError(f"Unknown {what} domain(s) {unknown}; known domains are {known}. Fix: use one of the "
                               f"known domain names.")
    both = sorted(set(heldout) & set(unlabeled))
    if both:
        raise ADInputError(f"Domain(s) {both} are both held out and unlabeled. Fix: list each domain in at most one "
                           f"of heldout/unlabeled.")
    hidden = set(heldout) | (set(unlabeled) if unlabeled_folder else set())
    if not set(present) - hidden:
        raise ADInputError(f"No labeled training domain is left (held out: {heldout}, unlabeled: {unlabeled}). Fix: "
                           f"keep at least one domain with cases for imagesTr.")
    return sorted(set(heldout)), sorted(set(unlabeled))


def _read_image(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ADInputError(f"Cannot read image {path} ({str(e).strip().splitlines()[-1]}). Fix: replace or "
                           f"re-export this file, or remove its case from the source dataset.") from e


def _shift_case(src_files: Sequence[Path], dst_files: Sequence[Path], params: ShiftParams, seeds: Sequence[int]):
    """Shift each channel file of one case; geometry (spacing, origin, direction) is copied from the source."""
    for src, dst, seed in zip(src_files, dst_files, seeds):
        image = _read_image(src)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ADInputError(f"{src} has vector pixels. Fix: store one channel per file (_0000, _0001, ...).")
        array = sitk.GetArrayFromImage(image)
        out = sitk.GetImageFromArray(apply_shift(array, image.GetSpacing()[::-1], params, seed))
        out.CopyInformation(image)
        sitk.WriteImage(out, str(dst), True)


def _case_seeds(seed: int, case: str, n_channels: int) -> List[int]:
    # sha256, not hash(): str hashes are salted per process; seeds must not depend on order or worker.
    return [int.from_bytes(hashlib.sha256(f"{seed}:{case}:{c}".encode()).digest()[:8], "little") >> 1
            for c in range(n_channels)]


def _write_dataset(*, source: Path, target: Path, dataset_json: dict, cases: dict, case_domain: Dict[str, str],
                   heldout: Sequence[str], unlabeled: Sequence[str], unlabeled_folder: bool, simulated: bool,
                   recipe: dict, shifts: Optional[Dict[str, ShiftParams]] = None, seed: int = 0,
                   num_processes: int = 1) -> str:
    """Write the new dataset into a staging folder next to ``target`` and rename it into place."""
    ending = dataset_json["file_ending"]
    placement = {"imagesTr": [], UNLABELED_DIRNAME: [], "imagesTs": []}
    for case, domain in case_domain.items():
        sub = "imagesTs" if domain in heldout else \
            UNLABELED_DIRNAME if domain in unlabeled and unlabeled_folder else "imagesTr"
        placement[sub].append(case)
    with staged_dataset(target) as staged:
        staged.mkdir()
        jobs = []
        for sub, members in placement.items():
            if not members:
                continue
            (staged / sub).mkdir()
            label_sub = {"imagesTr": "labelsTr", "imagesTs": "labelsTs"}.get(sub)
            if label_sub:
                (staged / label_sub).mkdir()
            for case in members:
                images, label = cases[case]
                dst = [staged / sub / f"{case}_{c:04d}{ending}" for c in range(len(images))]
                params = shifts[case_domain[case]] if shifts is not None else None
                if params is None or params.is_identity:
                    for s, d in zip(images, dst):
                        link_or_copy(s, d)
                else:
                    jobs.append((images, dst, params, _case_seeds(seed, case, len(images))))
                if label_sub:
                    link_or_copy(label, staged / label_sub / f"{case}{ending}")
        if num_processes > 1 and len(jobs) > 1:
            # spawn, as nnU-Net does: forking a process that holds SimpleITK/BLAS threads can deadlock.
            with ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_shift_case, *job) for job in jobs]
                try:
                    for f in futures:
                        f.result()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
        else:
            for job in jobs:
                _shift_case(*job)

        new_json = {k: v for k, v in dataset_json.items() if k != "dataset"}
        new_json.update({
            "name": target.name.split("_", 1)[1],
            "numTraining": len(placement["imagesTr"]),
            "ad_domains": dict(sorted(case_domain.items())),
            "ad_simulated": simulated,
            "ad_heldout_domains": list(heldout),
            "ad_unlabeled_domains": list(unlabeled),
            "ad_source_dataset": source.name,
        })
        write_json_atomic(staged / "dataset.json", new_json)
        write_json_atomic(staged / RECIPE_FILENAME,
                          dict(recipe, placement={k: sorted(v) for k, v in placement.items()}))
    return str(target)


def _call_repr(func: str, **kwargs) -> str:
    return f"{func}(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def simulate_domains(source_dataset: Union[int, str, os.PathLike], target_dataset_id: int, target_name: str,
                     assignment: Union[str, os.PathLike, Mapping],
                     domains: Mapping[str, Union[ShiftParams, str, Mapping]], *,
                     heldout_domains: Sequence[str] = (), unlabeled_domains: Sequence[str] = (),
                     unlabeled_folder: bool = False, seed: int = 0, num_processes: int = 1, overwrite: bool = False,
                     raw_root: Optional[Union[str, os.PathLike]] = None, command: Optional[str] = None) -> str:
    """Make a new raw dataset whose cases come from simulated scanners; returns its folder.

    * ``source_dataset``: a raw dataset folder, or a dataset id/name under ``$nnUNet_raw``; its labeled cases
      (``imagesTr``/``labelsTr``) are used.
    * ``assignment``: ``"random"`` (seeded, balanced by patient: :func:`patient_group` keeps e.g. both ACDC frames
      of a patient together; each shuffled patient goes to the domain with the fewest cases so far), or an explicit
      ``{domain: [case_ids]}`` / ``{case_id: domain}`` dict or JSON file covering every case.
    * ``domains``: ``{domain: ShiftParams | preset name (see vendor_presets) | dict of ShiftParams fields}``;
      identity domains get the source files unchanged (hard-linked or copied).
    * ``heldout_domains`` go only to ``imagesTs``/``labelsTs``; ``unlabeled_domains`` go to ``imagesUnlabeled``
      without labels if ``unlabeled_folder``, else stay in ``imagesTr`` with labels (recorded in dataset.json
      ``"ad_unlabeled_domains"`` for the settings file to hide).
    * ``seed`` drives the assignment and the per-case noise; the per-channel noise seeds are derived from
      ``(seed, case_id, channel)`` only, so the output does not depend on ``num_processes``.
    * Output: ``<raw_root or $nnUNet_raw>/DatasetXXX_<target_name>`` (refused if it exists unless ``overwrite``).
      Labels are copied unchanged, spacing/origin/direction preserved; the recipe file records the source, seed,
      per-domain parameters, assignment, per-case noise seeds and ``command``.
    """
    source = _resolve_source(source_dataset)
    target = _target_folder(target_dataset_id, target_name, raw_root, source, overwrite)
    if not isinstance(domains, Mapping) or not domains:
        raise ADInputError("No domains given. Fix: pass domains as {name: preset or ShiftParams}, e.g. "
                           "A=identity B=vendorB.")
    resolved = {str(d): resolve_shift(str(d), v) for d, v in domains.items()}
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ADInputError(f"num_processes={num_processes!r} is invalid. Fix: use an integer >= 1.")
    dataset_json, cases = _source_cases(source)
    if isinstance(assignment, str) and assignment == "random":
        case_domain = _random_assignment(cases, list(resolved), seed)
    else:
        case_domain = _case_domains(_load_json_arg(assignment, "assignment"), cases, "the assignment")
        stray = sorted(set(case_domain.values()) - set(resolved))
        if stray:
            raise ADInputError(f"The assignment uses domain(s) {stray} that have no shift; known domains are "
                               f"{sorted(resolved)}. Fix: add them to domains or correct the assignment.")
    heldout, unlabeled = _check_domain_lists(resolved, heldout_domains, unlabeled_domains, unlabeled_folder,
                                             case_domain.values())
    recipe = {
        "ad_nnunet_version": __version__,
        "mode": "simulate",
        "source_dataset": str(source),
        "target_dataset": target.name,
        "seed": seed,
        "domains": {d: {"preset": preset, "params": dataclasses.asdict(p)} for d, (preset, p) in resolved.items()},
        "heldout_domains": heldout,
        "unlabeled_domains": unlabeled,
        "unlabeled_folder": bool(unlabeled_folder),
        "assignment_mode": "random" if isinstance(assignment, str) and assignment == "random" else "explicit",
        "assignment": {d: sorted(c for c, v in case_domain.items() if v == d) for d in resolved},
        "case_noise_seeds": {c: _case_seeds(seed, c, len(cases[c][0])) for c in sorted(cases)},
        "command": command or _call_repr("simulate_domains", source_dataset=str(source_dataset),
                                         target_dataset_id=target_dataset_id, target_name=target_name,
                                         assignment=assignment if isinstance(assignment, str) else "explicit",
                                         domains={d: p or v for d, (p, v) in resolved.items()},
                                         heldout_domains=heldout, unlabeled_domains=unlabeled,
                                         unlabeled_folder=unlabeled_folder, seed=seed),
    }
    return _write_dataset(source=source, target=target, dataset_json=dataset_json, cases=cases,
                          case_domain=case_domain, heldout=heldout, unlabeled=unlabeled,
                          unlabeled_folder=unlabeled_folder, simulated=True, recipe=recipe,
                          shifts={d: p for d, (_, p) in resolved.items()}, seed=seed, num_processes=num_processes)


def derive_domain_dataset(source_dataset: Union[int, str, os.PathLike], target_dataset_id: int, target_name: str,
                          domains: Union[str, os.PathLike, Mapping], heldout_domains: Sequence[str] = (), *,
                          unlabeled_domains: Sequence[str] = (), unlabeled_folder: bool = False,
                          overwrite: bool = False, raw_root: Optional[Union[str, os.PathLike]] = None,
                          command: Optional[str] = None) -> str:
    """Re-arrange a dataset by REAL domains (no simulation, e.g. ACDC pathology groups); returns the new folder.

    ``domains`` is ``{case_id: domain}`` (or ``{domain: [case_ids]}``) or a JSON file of either, e.g.
    ``pathology_groups.json``; it must cover every labeled case of the source, and all cases of one patient
    (:func:`patient_group`) must share a domain. Layout rules, output location and ``overwrite`` as in
    :func:`simulate_domains`. Files are hard-linked where possible (same file system), else copied, so images
    and labels are bit-identical to the source; dataset.json gets ``"ad_simulated": false``.
    """
    source = _resolve_source(source_dataset)
    target = _target_folder(target_dataset_id, target_name, raw_root, source, overwrite)
    dataset_json, cases = _source_cases(source)
    case_domain = _case_domains(_load_json_arg(domains, "domains"), cases, "the domain mapping")
    heldout, unlabeled = _check_domain_lists(case_domain.values(), heldout_domains, unlabeled_domains,
                                             unlabeled_folder, case_domain.values())
    recipe = {
        "ad_nnunet_version": __version__,
        "mode": "derive",
        "source_dataset": str(source),
        "target_dataset": target.name,
        "domains_source": str(domains) if isinstance(domains, (str, os.PathLike)) else "mapping",
        "heldout_domains": heldout,
        "unlabeled_domains": unlabeled,
        "unlabeled_folder": bool(unlabeled_folder),
        "assignment": {d: sorted(c for c, v in case_domain.items() if v == d)
                       for d in sorted(set(case_domain.values()))},
        "command": command or _call_repr("derive_domain_dataset", source_dataset=str(source_dataset),
                                         target_dataset_id=target_dataset_id, target_name=target_name,
                                         domains=str(domains) if isinstance(domains, (str, os.PathLike)) else "mapping",
                                         heldout_domains=heldout, unlabeled_domains=unlabeled,
                                         unlabeled_folder=unlabeled_folder),
    }
    return _write_dataset(source=source, target=target, dataset_json=dataset_json, cases=cases,
                          case_domain=case_domain, heldout=heldout, unlabeled=unlabeled,
                          unlabeled_folder=unlabeled_folder, simulated=False, recipe=recipe)
