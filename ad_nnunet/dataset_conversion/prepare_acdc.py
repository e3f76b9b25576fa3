"""Build the ACDC benchmarks for class-imbalanced SSL, UDA and SemiDG from the shared Dataset102_ACDC.

ACDC (80 patients x 2 frames, ED and ES; labels RV=1, MYO=2, LV=3) comes with one real "domain" label per patient,
its pathology group (``pathology_groups.json``: DCM, HCM, MINF, NOR, RV). Every split below is a split of PATIENTS
(:func:`~ad_nnunet.dataset_conversion.domain_dataset.patient_group`: ``ACDC_patient001_frame01`` and
``..._frame02`` are one patient), so the two frames of a patient are never on both sides of a split. Test cases only
ever go to ``imagesTs``/``labelsTs``: they are never in ``imagesTr``/``imagesUnlabeled``, hence never in nnU-Net's
fingerprint, plans, splits or training.

Stratified draw (:func:`stratified_draw`, the rule of ``adnnunet_make_settings --setting semidg``): to draw ``n``
of the patients ``P = P_1 u ... u P_G`` (``P_g`` = the patients of group g) with ``rs = RandomState(seed)``, group
g gets ``n_g = floor(n |P_g| / |P|)`` patients plus one for the ``n - sum_g n_g`` largest remainders (ties broken by
``rs``), drawn as ``rs.choice(sorted(P_g), n_g, replace=False)``. One ``rs`` is used for all draws of a setting, in
the order written below.

========  ======================  ==============================================================================
setting   dataset (default)       recipe
========  ======================  ==============================================================================
imbssl    Dataset121_ACDCimb      test = draw(all patients, T=16); labeled = draw(the rest, L=7, ~10 %);
                                  unlabeled = the rest. imagesTr/labelsTr = labeled + unlabeled (the unlabeled
                                  cases' labels are for the all-labels upper bound only), imagesTs/labelsTs = test.
                                  ``"ad_domains"`` = pathology groups (for per-group reporting only).
uda       Dataset122_ACDCuda      source = draw(all patients, round(P / 2)) -> domain ``A`` (identity: files
                                  unchanged); target = the rest; target test = draw(target, T=16) -> domain ``Bt``;
                                  target training -> domain ``B``. ``B`` and ``Bt`` are the SAME simulated scanner
                                  (preset ``vendorC`` by default; docs/domains.md's two-domain-name trick) made by
                                  :func:`~.domain_dataset.simulate_domains` (explicit assignment, seeded
                                  noise). Labeled = all source cases, unlabeled = target training cases (in imagesTr,
                                  labels hidden from A&D), test = ``Bt`` (imagesTs only). ``"ad_simulated": true``.
semidg    Dataset123_ACDCdg       domains = pathology groups (:func:`~.domain_dataset.derive_domain_dataset`);
                                  the held-out group (default HCM) only in imagesTs/labelsTs;
                                  labeled = draw(training patients, max(1, round(0.1 * P_train))) stratified over
                                  the training groups; unlabeled = the rest of the training groups.
========  ======================  ==============================================================================

Each dataset gets ``splits/labeled.txt`` and ``splits/unlabeled.txt`` (case ids, for ``adnnunet_benchmark
--labeled/--unlabeled``) and ``benchmark_split.json`` (setting, seed, recipe, parameters, patients and cases per
split, per-group counts, source and command). It is built in a staging folder inside the raw root and renamed into
place, so an interrupted run leaves no half-written dataset.

Example::

    adnnunet_prepare_acdc imbssl --seed 0          # -> $nnUNet_raw/Dataset121_ACDCimb
    adnnunet_prepare_acdc uda --target_preset vendorC
    adnnunet_prepare_acdc semidg --heldout HCM --fraction 0.1
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ad_nnunet import __version__
from ad_nnunet.data.raw import UNLABELED_DIRNAME, list_labeled_cases
from ad_nnunet.data.settings import stratified_draw
from ad_nnunet.dataset_conversion.domain_dataset import derive_domain_dataset, patient_group, simulate_domains
from ad_nnunet.dataset_conversion.prepare_la import SHARED_DATASETS, SPLIT_FILENAME, write_case_lists
from ad_nnunet.dataset_conversion.scanner_shift import vendor_presets
from ad_nnunet.errors import ADInputError
from ad_nnunet.hashing import sha256_of
from ad_nnunet.publishing import (describe_file_modes, link_or_copy, new_dataset_folder, raw_root_or_env,
                                  staged_dataset, write_json_atomic)

DEFAULT_SOURCE = SHARED_DATASETS / "Dataset102_ACDC"
GROUPS_FILENAME = "pathology_groups.json"
DEFAULT_NAMES = {"imbssl": (121, "ACDCimb"), "uda": (122, "ACDCuda"), "semidg": (123, "ACDCdg")}
# UDA domain names: source, target training (unlabeled), target test (held out); B and Bt share one preset.
SOURCE_DOMAIN, TARGET_DOMAIN, TARGET_TEST_DOMAIN = "A", "B", "Bt"
# The CPU tier of docs/benchmarks.md (2 cores, at most 75 min per table). Measured there: an A&D step 2.0 s, an
# nnU-Net step 0.36 s, about 2 min of planning, prediction and evaluation; 750 steps of all three runs: about 38 min.
CPU_PRESET, CPU_ITERATIONS_PER_EPOCH, CPU_DDIM_STEPS = "acdc_cpu_2d", 50, 10
CPU_STEPS = {"imbssl": 750, "uda": 750, "semidg": 750}

RECIPES = {
    "imbssl": "rs = numpy.random.RandomState(seed); test = stratified_draw(all patients by pathology group, "
              "num_test, rs); labeled = stratified_draw(remaining patients by group, num_labeled, rs); unlabeled = "
              "the remaining patients. imagesTr/labelsTr = labeled + unlabeled cases (unlabeled labels hidden from "
              "A&D by the settings file), imagesTs/labelsTs = test cases. Both frames of a patient stay together.",
    "uda": "rs = numpy.random.RandomState(seed); source = stratified_draw(all patients by pathology group, "
           "round(P / 2), rs) -> domain A (identity); target = the other patients; target_test = "
           "stratified_draw(target patients by group, num_test, rs) -> domain Bt (imagesTs/labelsTs only); target "
           "training patients -> domain B (imagesTr, labels hidden from A&D). B and Bt are simulated with the same "
           "preset by ad_nnunet.dataset_conversion.domain_dataset.simulate_domains (explicit assignment, noise "
           "seeded by (seed, case)); labeled = source cases, unlabeled = target training cases, test = target test "
           "cases.",
    "semidg": "Domains = pathology groups (ad_nnunet.dataset_conversion.domain_dataset.derive_domain_dataset); the "
              "held-out group goes only to imagesTs/labelsTs. rs = numpy.random.RandomState(seed); labeled = "
              "stratified_draw(training patients by group, num_labeled or max(1, round(fraction * training "
              "patients)), rs); unlabeled = the remaining training patients; test = every case of the held-out group.",
}
STRATIFIED_DRAW = ("stratified_draw(groups, n, rs): group g gets floor(n |P_g| / |P|) patients plus one for the "
                   "largest remainders (ties broken by rs), drawn with rs.choice(sorted(P_g), n_g, replace=False) "
                   "(ad_nnunet.data.settings.stratified_draw)")


@dataclasses.dataclass(frozen=True)
class Source:
    """The shared ACDC: dataset.json, ``{case: image files}`` and ``{case: group}`` for its labeled cases."""
    folder: Path
    dataset_json: dict
    images: Dict[str, List[str]]
    case_group: Dict[str, str]
    groups_file: Path

    @property
    def patients(self) -> Dict[str, List[str]]:
        """``{patient: [cases]}`` (sorted)."""
        return _patients(self.images)

    def patients_by_group(self, patients: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
        """``{group: [patients]}`` of ``patients`` (default: all)."""
        pats = self.patients
        out: Dict[str, List[str]] = {}
        for p in sorted(pats if patients is None else patients):
            out.setdefault(self.case_group[pats[p][0]], []).append(p)
        return out


def load_source(source: Path, groups_file: Optional[Path] = None) -> Source:
    """Read and check the source dataset and its case -> pathology group mapping (one group per patient)."""
    source = Path(source)
    for sub in ("imagesTr", "labelsTr"):
        if not (source / sub).is_dir():
            raise ADInputError(f"{source / sub} does not exist. Fix: pass --source pointing at Dataset102_ACDC "
                               f"(nnU-Net raw layout with imagesTr, labelsTr, {GROUPS_FILENAME}).")
    try:
        dataset_json = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ADInputError(f"Cannot read {source / 'dataset.json'}: {e}. Fix: pass the shared Dataset102_ACDC.") \
            from None
    if len(dataset_json.get("channel_names", {})) != 1:
        raise ADInputError(f"{source}/dataset.json has {len(dataset_json.get('channel_names', {}))} channels; this "
                           f"script handles the single-channel ACDC cine MRI. Fix: use the shared Dataset102_ACDC.")
    images = list_labeled_cases(str(source), dataset_json)
    ending = dataset_json["file_ending"]
    no_label = [c for c in images if not (source / "labelsTr" / f"{c}{ending}").is_file()]
    if not images or no_label:
        raise ADInputError(f"{source}: {'no imagesTr cases' if not images else f'no label for {no_label[:5]}'}. "
                           f"Fix: pass a labeled raw dataset (imagesTr/<case>_0000{ending} + labelsTr/<case>{ending}).")
    groups_file = Path(groups_file) if groups_file else source / GROUPS_FILENAME
    try:
        groups = json.loads(groups_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ADInputError(f"Cannot read the pathology groups {groups_file}: {e}. Fix: pass --groups, a JSON file "
                           f"{{case_id: group}}.") from None
    if not isinstance(groups, dict) or not all(isinstance(v, str) for v in groups.values()):
        raise ADInputError(f"{groups_file} is not a JSON object {{case_id: group}}. Fix: correct the file.")
    missing = sorted(c for c in images if c not in groups)
    if missing:
        raise ADInputError(f"Case(s) {missing[:5]} ({len(missing)} in all) have no group in {groups_file}. Fix: add "
                           f"them (case id without channel suffix or file ending -> group).")
    case_group = {c: groups[c] for c in sorted(images)}
    split = sorted(p for p, cs in _patients(case_group).items() if len({case_group[c] for c in cs}) > 1)
    if split:
        raise ADInputError(f"Patient(s) {split[:5]} have frames in several groups in {groups_file}. Fix: give all "
                           f"frames of a patient the same group.")
    return Source(source.resolve(), dataset_json, images, case_group, groups_file.resolve())


def _patients(cases: Iterable[str]) -> Dict[str, List[str]]:
    """``{patient: [cases]}`` (sorted), the frames of a patient grouped by :func:`patient_group`."""
    out: Dict[str, List[str]] = {}
    for c in sorted(cases):
        out.setdefault(patient_group(c), []).append(c)
    return out


def split_imbssl(src: Source, num_test: int, num_labeled: int, seed: int) -> Dict[str, List[str]]:
    """``{"test", "labeled", "unlabeled"}`` patient lists of the class-imbalanced SSL setting."""
    n = len(src.patients)
    if not 1 <= num_test <= n - 2:
        raise ADInputError(f"--num_test {num_test} must be between 1 and {n - 2} ({n} patients; at least one labeled "
                           f"and one unlabeled patient must remain). Fix: choose another --num_test.")
    if not 1 <= num_labeled <= n - num_test - 1:
        raise ADInputError(f"--num_labeled {num_labeled} must be between 1 and {n - num_test - 1} ({n - num_test} "
                           f"training patients, at least one stays unlabeled). Fix: choose another --num_labeled.")
    rs = np.random.RandomState(seed)
    test = stratified_draw(src.patients_by_group(), num_test, rs)
    rest = [p for p in src.patients if p not in set(test)]
    labeled = stratified_draw(src.patients_by_group(rest), num_labeled, rs)
    return {"test": test, "labeled": labeled, "unlabeled": [p for p in rest if p not in set(labeled)]}


def split_uda(src: Source, num_test: int, seed: int) -> Dict[str, List[str]]:
    """``{"source", "target_train", "target_test"}`` patient lists of the UDA setting (source: half the patients)."""
    n = len(src.patients)
    n_source = int(round(n / 2))
    if n_source < 1 or not 1 <= num_test <= n - n_source - 1:
        raise ADInputError(f"--num_test {num_test} must be between 1 and {n - n_source - 1} ({n} patients, "
                           f"{n - n_source} in the target domain, at least one stays for target training). Fix: "
                           f"choose another --num_test.")
    rs = np.random.RandomState(seed)
    source = stratified_draw(src.patients_by_group(), n_source, rs)
    target = [p for p in src.patients if p not in set(source)]
    test = stratified_draw(src.patients_by_group(target), num_test, rs)
    return {"source": source, "target_train": [p for p in target if p not in set(test)], "target_test": test}


def split_semidg(src: Source, heldout: str, seed: int, num_labeled: Optional[int] = None,
                 fraction: Optional[float] = None) -> Dict[str, List[str]]:
    """``{"test", "labeled", "unlabeled"}`` patient lists of the SemiDG setting (test = the held-out group)."""
    known = sorted(set(src.case_group.values()))
    if heldout not in known:
        raise ADInputError(f"--heldout {heldout!r} is not a group of {src.groups_file} (groups: {known}). Fix: use "
                           f"one of those.")
    by_group = src.patients_by_group()
    test = list(by_group.pop(heldout))
    train = sorted(p for v in by_group.values() for p in v)
    if len(train) < 2:
        raise ADInputError(f"Holding out {heldout} leaves {len(train)} training patient(s). Fix: hold out another "
                           f"group.")
    if num_labeled is not None and fraction is not None:
        raise ADInputError("Give either --num_labeled or --fraction, not both.")
    if num_labeled is None:
        fraction = 0.1 if fraction is None else fraction
        if not 0 < fraction < 1:
            raise ADInputError(f"--fraction {fraction} must be in (0, 1). Fix: e.g. --fraction 0.1.")
        num_labeled = max(1, int(round(fraction * len(train))))
    if not 1 <= num_labeled <= len(train) - 1:
        raise ADInputError(f"--num_labeled {num_labeled} must be between 1 and {len(train) - 1} ({len(train)} "
                           f"training patients, at least one stays unlabeled). Fix: choose another count.")
    labeled = stratified_draw(by_group, num_labeled, np.random.RandomState(seed))
    return {"test": test, "labeled": labeled, "unlabeled": [p for p in train if p not in set(labeled)]}


def _cases(src: Source, patients: Sequence[str]) -> List[str]:
    pats = src.patients
    return sorted(c for p in patients for c in pats[p])


def _group_counts(src: Source, patients: Sequence[str]) -> Dict[str, int]:
    return {g: len(v) for g, v in sorted(src.patients_by_group(patients).items())}


def _write_imbssl(src: Source, folder: Path, labeled: List[str], unlabeled: List[str], test: List[str],
                  description: str) -> str:
    """imagesTr/labelsTr = labeled + unlabeled, imagesTs/labelsTs = test (hard links, else copies)."""
    ending = src.dataset_json["file_ending"]
    modes = set()
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    for cases, img_dir, lab_dir in ((labeled + unlabeled, "imagesTr", "labelsTr"), (test, "imagesTs", "labelsTs")):
        for case in cases:
            modes.add(link_or_copy(Path(src.images[case][0]), folder / img_dir / f"{case}_0000{ending}"))
            modes.add(link_or_copy(src.folder / "labelsTr" / f"{case}{ending}", folder / lab_dir / f"{case}{ending}"))
    new_json = {k: v for k, v in src.dataset_json.items() if k not in ("numTraining", "dataset")}
    new_json.update({"name": folder.name.split("_", 1)[1], "description": description,
                     "numTraining": len(labeled) + len(unlabeled),
                     # pathology groups, for per-group reporting only: the ssl setting ignores them for training
                     "ad_domains": dict(src.case_group), "ad_simulated": False, "ad_source_dataset": src.folder.name})
    write_json_atomic(folder / "dataset.json", new_json)
    return describe_file_modes(modes)


def _verify(folder: Path, ending: str, train: Sequence[str], test: Sequence[str]) -> None:
    """The written dataset holds exactly ``train`` in imagesTr and ``test`` in imagesTs, no patient in both."""
    def ids(sub: str) -> List[str]:
        d = folder / sub
        return sorted(f.name[: -len(f"_0000{ending}")] for f in d.iterdir()) if d.is_dir() else []

    found_tr, found_ts, found_unl = ids("imagesTr"), ids("imagesTs"), ids(UNLABELED_DIRNAME)
    shared = {patient_group(c) for c in found_tr + found_unl} & {patient_group(c) for c in found_ts}
    if found_tr != sorted(train) or found_ts != sorted(test) or found_unl or shared:
        raise RuntimeError(f"prepare_acdc: internal error, {folder} does not match its split (imagesTr "
                           f"{len(found_tr)} vs {len(train)}, imagesTs {len(found_ts)} vs {len(test)}, "
                           f"imagesUnlabeled {len(found_unl)}, patients in train and test: {sorted(shared)[:5]}).")


def prepare(setting: str, source: Path = DEFAULT_SOURCE, raw_root: Optional[Path] = None, *, seed: int = 0,
            num_test: int = 16, num_labeled: Optional[int] = None, fraction: Optional[float] = None,
            heldout: str = "HCM", target_preset: str = "vendorC", groups_file: Optional[Path] = None,
            dataset_id: Optional[int] = None, dataset_name: Optional[str] = None, overwrite: bool = False,
            num_processes: int = 1, command: Optional[str] = None) -> Path:
    """Write the benchmark raw dataset of ``setting`` (see the module docstring); return its folder.

    ``num_test``: test patients (imbssl; uda: target test patients); ``num_labeled``: labeled patients (imbssl,
    default 7; semidg, else ``fraction`` of the training patients, default 0.1); ``heldout``: semidg's test group;
    ``target_preset``: uda's simulated target scanner (a name of ``vendor_presets()``).
    """
    if setting not in DEFAULT_NAMES:
        raise ADInputError(f"Unknown setting {setting!r}. Fix: use one of {sorted(DEFAULT_NAMES)}.")
    if setting != "semidg" and fraction is not None:
        raise ADInputError("--fraction is for semidg only. Fix: use --num_labeled.")
    if setting == "uda" and num_labeled is not None:
        raise ADInputError("uda labels every source-domain case; --num_labeled is for imbssl/semidg. Fix: drop it.")
    if setting == "uda" and target_preset not in vendor_presets():
        raise ADInputError(f"--target_preset {target_preset!r} is unknown. Fix: use one of {list(vendor_presets())}.")
    raw_root = raw_root_or_env(raw_root, "--raw")
    default_id, default_name = DEFAULT_NAMES[setting]
    dataset_id = default_id if dataset_id is None else int(dataset_id)
    dataset_name = dataset_name or default_name
    src = load_source(source, groups_file)
    ending = src.dataset_json["file_ending"]
    params: dict = {"seed": seed}
    if setting == "imbssl":
        num_labeled = 7 if num_labeled is None else num_labeled
        pats = split_imbssl(src, num_test, num_labeled, seed)
        params.update(num_test=num_test, num_labeled=num_labeled)
        lab_p, unl_p, test_p = pats["labeled"], pats["unlabeled"], pats["test"]
    elif setting == "uda":
        pats = split_uda(src, num_test, seed)
        params.update(num_test=num_test, target_preset=target_preset,
                      target_params=dataclasses.asdict(vendor_presets()[target_preset]),
                      domains={SOURCE_DOMAIN: "identity", TARGET_DOMAIN: target_preset,
                               TARGET_TEST_DOMAIN: target_preset})
        lab_p, unl_p, test_p = pats["source"], pats["target_train"], pats["target_test"]
    else:
        fraction = 0.1 if num_labeled is None and fraction is None else fraction
        pats = split_semidg(src, heldout, seed, num_labeled, fraction)
        params.update(heldout=heldout, num_labeled=len(pats["labeled"]), fraction=fraction,
                      training_patients=len(pats["labeled"]) + len(pats["unlabeled"]))
        lab_p, unl_p, test_p = pats["labeled"], pats["unlabeled"], pats["test"]
    labeled, unlabeled, test = _cases(src, lab_p), _cases(src, unl_p), _cases(src, test_p)

    target = new_dataset_folder(raw_root, dataset_id, dataset_name, overwrite)
    command = command or ("prepare(" + ", ".join(f"{k}={v!r}" for k, v in dict(
        setting=setting, source=str(source), seed=seed, num_test=num_test, num_labeled=num_labeled,
        fraction=fraction, heldout=heldout, target_preset=target_preset, dataset_id=dataset_id,
        dataset_name=dataset_name).items()) + ")")
    description = (f"A&D ACDC benchmark, setting {setting} (seed {seed}), built by adnnunet_prepare_acdc from "
                   f"{src.folder.name}; see {SPLIT_FILENAME}")
    with staged_dataset(target) as staged:
        # the domain builders write <raw root>/DatasetXXX_Name: the staging folder is their raw root
        staging_root = staged.parent
        files = None
        if setting == "imbssl":
            staged.mkdir()
            files = _write_imbssl(src, staged, labeled, unlabeled, test, description)
        elif setting == "uda":
            assignment = {**{c: SOURCE_DOMAIN for c in labeled}, **{c: TARGET_DOMAIN for c in unlabeled},
                          **{c: TARGET_TEST_DOMAIN for c in test}}
            simulate_domains(src.folder, dataset_id, dataset_name, assignment,
                             {SOURCE_DOMAIN: "identity", TARGET_DOMAIN: target_preset,
                              TARGET_TEST_DOMAIN: target_preset},
                             heldout_domains=[TARGET_TEST_DOMAIN], unlabeled_domains=[TARGET_DOMAIN],
                             unlabeled_folder=False, seed=seed, num_processes=num_processes, raw_root=staging_root,
                             command=command)
        else:
            derive_domain_dataset(src.folder, dataset_id, dataset_name, dict(src.case_group), [heldout],
                                  raw_root=staging_root, command=command)
        if setting != "imbssl":
            ds_json = json.loads((staged / "dataset.json").read_text(encoding="utf-8"))
            ds_json["description"] = description
            write_json_atomic(staged / "dataset.json", ds_json)
        _verify(staged, ending, labeled + unlabeled, test)
        write_case_lists(staged, labeled, unlabeled)
        write_json_atomic(staged / SPLIT_FILENAME, {
            "setting": setting, "seed": seed, "recipe": RECIPES[setting], "stratified_draw": STRATIFIED_DRAW,
            "parameters": params, "simulated": setting == "uda",
            "labeled": labeled, "unlabeled": unlabeled, "test": test,
            "patients": {"labeled": lab_p, "unlabeled": unl_p, "test": test_p},
            "patients_per_group": {"labeled": _group_counts(src, lab_p), "unlabeled": _group_counts(src, unl_p),
                                   "test": _group_counts(src, test_p)},
            "source": {"dataset": str(src.folder), "groups_file": str(src.groups_file),
                       "groups_sha256": sha256_of(src.groups_file)},
            "files": files or "see domain_shift_recipe.json (identity/derived files are hard links, else copies)",
            "ad_nnunet_version": __version__, "command": command,
        })
    return target


def next_command(target: Path, setting: str, out: Optional[str] = None) -> str:
    """The adnnunet_benchmark command of the CPU tier (docs/benchmarks.md) for a prepared dataset."""
    from ad_nnunet.plans_presets import load_preset

    return shlex.join([
        "adnnunet_benchmark", "--dataset", target.name, "--setting", setting,
        "--labeled", str(target / "splits" / "labeled.txt"), "--unlabeled", str(target / "splits" / "unlabeled.txt"),
        "--test_images", str(target / "imagesTs"), "--test_labels", str(target / "labelsTs"),
        "--preset", CPU_PRESET, "-c", load_preset(CPU_PRESET)["configuration_name"],
        "--steps", str(CPU_STEPS[setting]), "--iterations_per_epoch", str(CPU_ITERATIONS_PER_EPOCH),
        "--ddim_steps", str(CPU_DDIM_STEPS),
        "--device", "cpu", "--np", "2", "--out", out or f"benchmark_runs/acdc_{setting}_cpu"])
