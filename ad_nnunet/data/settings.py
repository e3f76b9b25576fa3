"""The settings/split file: which cases are labeled, unlabeled and validation cases in each fold.

Stored as ``$nnUNet_preprocessed/<Dataset>/ad_settings.json``, next to nnU-Net's ``splits_final.json``::

    {"format_version": 1, "setting": "ssl" | "uda" | "semidg", "command": "<the command line that made it>",
     "seed": 0, "domains": {case_id: domain, ...},
     "folds": [{"labeled": [...], "unlabeled": [...], "val": [...], "heldout_domains": [...]}, ...]}

* ``labeled``: imagesTr cases whose labels are used for training.
* ``unlabeled``: imagesUnlabeled cases AND imagesTr cases whose labels must stay hidden (benchmarks such as
  "LA with 10% labels"); only their images are used (see ``unlabeled_preprocessing``).
* ``val``: imagesTr cases used for nnU-Net's validation. By default ``val = labeled`` (the A&D paper's protocol):
  this measures how well the training cases are fit, NOT generalization. With ``num_val = K > 0``, K hidden-label
  (ssl/semidg) or target (uda) cases are drawn instead and removed from ``unlabeled``: their labels are then used
  for validation only and their images are never trained on.

The same command writes ``splits_final.json = [{"train": labeled, "val": val}, ...]``, so stock
``nnUNetv2_train DATASET CONFIG k -tr nnUNetTrainer`` trains on exactly the labeled cases of fold ``k`` (the
labeled-only baseline of every setting).

Settings:

* ``ssl``: ``labeled`` = N (or ``max(1, round(fraction * n))``) imagesTr cases drawn with
  ``RandomState(seed + fold)``, or given as id lists; ``unlabeled`` = the other imagesTr cases + all imagesUnlabeled.
* ``uda``: ``labeled`` = the imagesTr cases of the source domains; ``unlabeled`` = every target-domain case
  (imagesTr with hidden labels and imagesUnlabeled). Target labels are never used for training; imagesUnlabeled
  cases of source domains are not used.
* ``semidg``: the held-out domains must have no case in imagesTr/imagesUnlabeled (so they cannot influence nnU-Net's
  fingerprint and plans); ``labeled`` = N cases drawn stratified per training domain (counts by largest remainder:
  ``n_d = floor(N * |D_d| / |D|)`` plus one for the largest fractional parts), ``unlabeled`` = the rest of the
  training domains.
"""
import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ad_nnunet.data.raw import (UNLABELED_DIRNAME, list_labeled_cases, list_test_case_ids, list_unlabeled_cases,
                                raw_dataset_folder)
from ad_nnunet.errors import ADInputError
from ad_nnunet.publishing import write_json_atomic

SETTINGS_FILENAME = "ad_settings.json"
FORMAT_VERSION = 1
SETTINGS = ("ssl", "uda", "semidg")
_FOLD_KEYS = ("labeled", "unlabeled", "val", "heldout_domains")


@dataclass(frozen=True)
class FoldSplit:
    """One fold: ids of labeled, unlabeled and validation cases, the case->domain map and where it came from."""
    labeled: Tuple[str, ...]
    unlabeled: Tuple[str, ...]
    val: Tuple[str, ...]
    domains: Dict[str, str]
    source: str


def hidden_label_cases(fold_split: FoldSplit, labeled_ids: Iterable[str]) -> Tuple[str, ...]:
    """Unlabeled cases of this fold that do have a label in imagesTr/labelsTr (``unlabeled ∩ labeled_ids``)."""
    labeled_ids = set(labeled_ids)
    return tuple(c for c in fold_split.unlabeled if c in labeled_ids)


def _preprocessed_folder(dataset_name_or_id) -> str:
    from nnunetv2.paths import nnUNet_preprocessed

    return os.path.join(os.fspath(nnUNet_preprocessed), os.path.basename(raw_dataset_folder(dataset_name_or_id)))


def settings_path(dataset_name_or_id: Union[int, str]) -> str:
    """``$nnUNet_preprocessed/<Dataset>/ad_settings.json``."""
    return os.path.join(_preprocessed_folder(dataset_name_or_id), SETTINGS_FILENAME)


def _load_dataset_json(raw_folder: str) -> dict:
    path = os.path.join(raw_folder, "dataset.json")
    if not os.path.isfile(path):
        raise ADInputError(f"{path} does not exist. Fix: create the raw dataset (nnU-Net layout) first.")
    with open(path) as f:
        return json.load(f)


def _resolve_domains(domains, dataset_json: dict) -> Dict[str, str]:
    if domains is None:
        return {str(k): str(v) for k, v in dataset_json.get("ad_domains", {}).items()}
    if isinstance(domains, (str, os.PathLike)):
        try:
            with open(domains) as f:
                domains = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ADInputError(f"Cannot read the domains file {domains}: {e}. "
                               f"Fix: give a JSON file {{\"case_id\": \"domain\", ...}}.") from e
    if not isinstance(domains, dict):
        raise ADInputError("domains must map case id -> domain name. Fix: give a JSON object {\"case_id\": \"A\"}.")
    return {str(k): str(v) for k, v in domains.items()}


def read_case_list(path: Union[str, os.PathLike]) -> List[str]:
    """Case ids of a list file (``--labeled_list``, a benchmark's split lists): one per line, blank lines and ``#``
    comments ignored."""
    try:
        with open(path) as f:
            ids = [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]
    except OSError as e:
        raise ADInputError(f"Cannot read the case list {path}: {e}. Fix: give a text file with one case id per "
                           f"line.") from e
    return ids


def _names(ids: Sequence[str], k: int = 5) -> str:
    ids = list(ids)
    return ", ".join(ids[:k]) + (f", ... ({len(ids)} in total)" if len(ids) > k else "")


def validate_settings(settings: dict, labeled_ids: Optional[Iterable[str]],
                      unlabeled_ids: Optional[Iterable[str]]) -> None:
    """Raise ``ADInputError`` if a settings dict is inconsistent with itself or with the raw dataset.

    ``labeled_ids`` are the imagesTr ids, ``unlabeled_ids`` the imagesUnlabeled ids; pass ``None`` for both when
    the raw dataset is not available (then only the internal consistency is checked).
    """
    version = settings.get("format_version") if isinstance(settings, dict) else None
    if version != FORMAT_VERSION:
        raise ADInputError(f"Unsupported settings file (format_version {version!r}, expected {FORMAT_VERSION}). "
                           f"Fix: regenerate it with adnnunet_make_settings --overwrite.")
    setting = settings.get("setting")
    if setting not in SETTINGS:
        raise ADInputError(f"Unknown setting {setting!r}; known: {', '.join(SETTINGS)}. "
                           f"Fix: regenerate the file with adnnunet_make_settings --setting ssl|uda|semidg.")
    folds = settings.get("folds")
    if not isinstance(folds, list) or len(folds) == 0:
        raise ADInputError("The settings file has no folds. Fix: regenerate it with adnnunet_make_settings.")
    domains = settings.get("domains") or {}
    known_domains = sorted(set(domains.values()))
    check_raw = labeled_ids is not None and unlabeled_ids is not None
    labeled_ids = set(labeled_ids or ())
    unlabeled_ids = set(unlabeled_ids or ())
    fix = "Fix: edit the file or regenerate it with adnnunet_make_settings --overwrite."
    for k, fold in enumerate(folds):
        missing_keys = [key for key in _FOLD_KEYS if key not in fold]
        if missing_keys:
            raise ADInputError(f"Fold {k} of the settings lacks {missing_keys}. {fix}")
        for key in ("labeled", "unlabeled", "val"):
            dup = sorted(c for c, n in Counter(fold[key]).items() if n > 1)
            if dup:
                raise ADInputError(f"Fold {k}: case(s) {_names(dup)} listed twice in '{key}'. {fix}")
        if len(fold["labeled"]) == 0:
            raise ADInputError(f"Fold {k} has zero labeled cases; every method needs at least one. "
                               f"Fix: use --num_labeled >= 1 (or a non-empty labeled list).")
        if check_raw:
            for key in ("labeled", "unlabeled", "val"):
                absent = [c for c in fold[key] if c not in labeled_ids and c not in unlabeled_ids]
                if absent:
                    raise ADInputError(f"Fold {k}: case(s) {_names(absent)} in '{key}' exist neither in imagesTr "
                                       f"nor in {UNLABELED_DIRNAME}. Fix: add the images or remove the ids from "
                                       f"the settings (regenerate with adnnunet_make_settings --overwrite).")
            for key in ("labeled", "val"):
                nolabel = [c for c in fold[key] if c not in labeled_ids]
                if nolabel:
                    raise ADInputError(f"Fold {k}: {key} case(s) {_names(nolabel)} are in {UNLABELED_DIRNAME} and "
                                       f"have no label. Fix: only imagesTr/labelsTr cases can be {key} cases.")
        both = sorted(set(fold["labeled"]) & set(fold["unlabeled"]))
        if both:
            raise ADInputError(f"Fold {k}: case(s) {_names(both)} listed both as labeled and unlabeled. "
                               f"A case is either trained with its label or without it. {fix}")
        unknown = sorted(set(fold["heldout_domains"]) - set(known_domains))
        if unknown:
            raise ADInputError(f"Fold {k}: unknown domain name(s) {unknown}; known domains: {known_domains}. "
                               f"Fix: use one of the known names or add the cases' domains (dataset.json "
                               f"'ad_domains' or --domains).")
        if setting in ("uda", "semidg"):
            nodomain = [c for key in ("labeled", "unlabeled", "val") for c in fold[key] if c not in domains]
            if nodomain:
                raise ADInputError(f"Fold {k}: case(s) {_names(nodomain)} have no domain but setting '{setting}' "
                                   f"needs one per case. Fix: add them to dataset.json 'ad_domains' or --domains.")
            leaked = [c for key in ("labeled", "unlabeled") for c in fold[key]
                      if domains.get(c) in fold["heldout_domains"]]
            if leaked:
                raise ADInputError(f"Fold {k}: case(s) {_names(leaked)} belong to a held-out domain "
                                   f"{fold['heldout_domains']} but are used for training. {fix}")


def _raw_ids(raw_folder: str, dataset_json: dict) -> Tuple[List[str], List[str]]:
    return sorted(list_labeled_cases(raw_folder, dataset_json)), sorted(list_unlabeled_cases(raw_folder, dataset_json))


def _draw(pool: Sequence[str], n: int, rs: np.random.RandomState) -> List[str]:
    return sorted(str(c) for c in rs.choice(sorted(pool), n, replace=False)) if n > 0 else []


def _num_labeled(num_labeled, fraction, n_pool: int, what: str) -> int:
    if num_labeled is not None and fraction is not None:
        raise ADInputError("Give either --num_labeled or --fraction, not both.")
    if num_labeled is None and fraction is None:
        raise ADInputError(f"How many {what} cases are labeled? Fix: give --num_labeled N, --fraction F or "
                           f"--labeled_list/--unlabeled_list.")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ADInputError(f"--fraction {fraction} must be in (0, 1]. Fix: e.g. --fraction 0.1.")
        num_labeled = max(1, int(round(fraction * n_pool)))
    if not 1 <= num_labeled <= n_pool:
        raise ADInputError(f"--num_labeled {num_labeled} is not in 1..{n_pool} (the number of labeled {what} "
                           f"cases). Fix: choose a count in that range.")
    return int(num_labeled)


def _split_val(hidden: List[str], num_val: int, rs: np.random.RandomState, labeled: List[str], what: str):
    """``num_val > 0``: draw validation cases from ``hidden`` and remove them from it; else ``val = labeled``."""
    if num_val <= 0:
        return list(labeled), list(hidden)
    if num_val > len(hidden):
        raise ADInputError(f"--num_val {num_val} but only {len(hidden)} {what} cases with labels are available. "
                           f"Fix: use --num_val <= {len(hidden)}.")
    val = _draw(hidden, num_val, rs)
    return val, [c for c in hidden if c not in set(val)]


def stratified_draw(by_group: Mapping[str, Sequence[str]], n: int, rs: np.random.RandomState) -> List[str]:
    """``n`` of the ids ``P = P_1 u ... u P_G`` drawn stratified by group, sorted.

    Group g gets ``n_g = floor(n |P_g| / |P|)`` ids plus one for the ``n - sum_g n_g`` largest remainders (ties
    broken by ``rs``), drawn as ``rs.choice(sorted(P_g), n_g, replace=False)`` in the groups' sorted order. Empty
    groups are left out before anything is drawn. The rule of ``--setting semidg`` and of the ACDC benchmarks.
    """
    by_group = {g: list(v) for g, v in by_group.items() if v}
    total = sum(len(v) for v in by_group.values())
    if not 0 <= n <= total:
        raise ADInputError(f"Cannot draw {n} of {total} ids. Fix: choose a count between 0 and {total}.")
    names = sorted(by_group)
    quota = np.array([n * len(by_group[g]) / total for g in names])
    counts = np.floor(quota).astype(int)
    # largest remainder; ties broken by a seeded permutation so no group is systematically favoured
    order = sorted(range(len(names)), key=lambda i: (-(quota[i] - counts[i]), rs.rand()))
    for i in order[: n - counts.sum()]:
        counts[i] += 1
    return sorted(c for g, k in zip(names, counts) for c in _draw(by_group[g], int(k), rs))


def _drawn_folds(draw_labeled: Callable[[np.random.RandomState], List[str]], tr_ids: Sequence[str],
                 unl_ids: Sequence[str], num_folds: int, num_val: int, seed: int,
                 heldout_domains: Sequence[str]) -> List[dict]:
    """Fold k: ``labeled = draw_labeled(RandomState(seed + k))``; the other imagesTr cases (less ``num_val`` drawn
    validation cases) and every imagesUnlabeled case are unlabeled."""
    folds = []
    for k in range(num_folds):
        rs = np.random.RandomState(seed + k)
        labeled = draw_labeled(rs)
        hidden = [c for c in tr_ids if c not in set(labeled)]
        val, hidden = _split_val(hidden, num_val, rs, labeled, "hidden-label")
        folds.append({"labeled": labeled, "unlabeled": hidden + list(unl_ids), "val": val,
                      "heldout_domains": sorted(heldout_domains)})
    return folds


def _command_repr(dataset_name_or_id, setting, kwargs) -> str:
    args = ", ".join([repr(dataset_name_or_id), repr(setting)] +
                     [f"{k}={v!r}" for k, v in kwargs.items() if v is not None and v is not False])
    return f"ad_nnunet.data.settings.make_settings({args})"


def make_settings(dataset_name_or_id: Union[int, str], setting: str, *, num_labeled: Optional[int] = None,
                  fraction: Optional[float] = None, labeled_list: Optional[str] = None,
                  unlabeled_list: Optional[str] = None, num_val: int = 0, seed: int = 0, num_folds: int = 1,
                  domains: Union[None, dict, str] = None, source_domains: Optional[Sequence[str]] = None,
                  target_domains: Optional[Sequence[str]] = None, heldout_domains: Optional[Sequence[str]] = None,
                  overwrite: bool = False, command: Optional[str] = None) -> str:
    """Write ``ad_settings.json`` and ``splits_final.json`` for a dataset; return the settings path.

    See the module docstring for the rules of each setting. ``command`` is recorded in the file (the CLI passes its
    command line; by default a Python-call representation is stored). Refuses (``ADInputError``) to replace a
    ``splits_final.json`` with different content unless ``overwrite``.
    """
    if setting not in SETTINGS:
        raise ADInputError(f"Unknown setting {setting!r}. Fix: use one of {', '.join(SETTINGS)}.")
    if num_folds < 1:
        raise ADInputError(f"--num_folds {num_folds} must be >= 1.")
    if num_val < 0:
        raise ADInputError(f"--num_val {num_val} must be >= 0.")
    kwargs = dict(num_labeled=num_labeled, fraction=fraction, labeled_list=labeled_list,
                  unlabeled_list=unlabeled_list, num_val=num_val or None, seed=seed, num_folds=num_folds,
                  domains=domains if not isinstance(domains, dict) else "<dict>", source_domains=source_domains,
                  target_domains=target_domains, heldout_domains=heldout_domains, overwrite=overwrite)
    command = command or _command_repr(dataset_name_or_id, setting, kwargs)
    raw_folder = raw_dataset_folder(dataset_name_or_id)
    dataset_json = _load_dataset_json(raw_folder)
    tr_ids, unl_ids = _raw_ids(raw_folder, dataset_json)
    all_ids = set(tr_ids) | set(unl_ids)
    dom = _resolve_domains(domains, dataset_json)
    known_domains = sorted(set(dom.values()))
    stray = sorted(set(dom) - all_ids - set(list_test_case_ids(raw_folder, dataset_json)))
    if stray:
        where = domains if isinstance(domains, (str, os.PathLike)) else \
            "--domains" if domains is not None else "dataset.json 'ad_domains'"
        raise ADInputError(f"The domains ({where}) name case(s) {_names(stray)} that are in none of imagesTr, "
                           f"{UNLABELED_DIRNAME}, imagesTs. Fix: correct the ids (the case id, without channel "
                           f"suffix and file ending) or remove them.")

    def check_domain_names(names, flag):
        unknown = sorted(set(names) - set(known_domains))
        if unknown:
            raise ADInputError(f"{flag}: unknown domain name(s) {unknown}; known domains: {known_domains}. "
                               f"Fix: use one of the known names (domains come from dataset.json 'ad_domains' or "
                               f"--domains).")

    if setting != "uda" and (source_domains or target_domains):
        raise ADInputError("--source/--target are for --setting uda only.")
    if setting != "semidg" and heldout_domains:
        raise ADInputError("--heldout is for --setting semidg only.")
    if (labeled_list or unlabeled_list) and setting != "ssl":
        raise ADInputError("--labeled_list/--unlabeled_list are for --setting ssl only.")
    if setting == "uda" and (num_labeled is not None or fraction is not None):
        raise ADInputError("uda uses every imagesTr case of the source domains as labeled; --num_labeled/--fraction "
                           "are for ssl/semidg. Fix: drop them.")
    if setting in ("uda", "semidg"):
        if not dom:
            raise ADInputError(f"Setting {setting} needs a domain per case. Fix: add 'ad_domains' to dataset.json "
                               f"or pass --domains cases.json.")
        nodomain = sorted(all_ids - set(dom))
        if nodomain:
            raise ADInputError(f"Case(s) {_names(nodomain)} have no domain but setting {setting} needs one per case. "
                               f"Fix: add them to dataset.json 'ad_domains' or --domains.")
    if setting == "ssl":
        if labeled_list or unlabeled_list:
            if num_labeled is not None or fraction is not None:
                raise ADInputError("Give either case lists or --num_labeled/--fraction, not both.")
            if not labeled_list:
                raise ADInputError("--unlabeled_list needs --labeled_list too.")
            if num_folds != 1:
                raise ADInputError("Case lists define one fold. Fix: drop --num_folds or use --num_labeled.")
            labeled = read_case_list(labeled_list)
            if unlabeled_list:
                hidden = read_case_list(unlabeled_list)
            else:
                hidden = [c for c in tr_ids if c not in set(labeled)]
            # imagesUnlabeled ids already in the list are not repeated
            unlabeled_extra = [c for c in unl_ids if c not in set(hidden)]
            rs = np.random.RandomState(seed)
            hidden_tr = [c for c in hidden if c in set(tr_ids)]
            val, kept = _split_val(hidden_tr, num_val, rs, labeled, "hidden-label")
            drawn_val = set(hidden_tr) - set(kept)
            unlabeled = [c for c in hidden if c not in drawn_val] + unlabeled_extra
            folds = [{"labeled": labeled, "unlabeled": unlabeled, "val": val, "heldout_domains": []}]
        else:
            n = _num_labeled(num_labeled, fraction, len(tr_ids), "imagesTr")
            folds = _drawn_folds(lambda rs: _draw(tr_ids, n, rs), tr_ids, unl_ids, num_folds, num_val, seed, [])
    elif setting == "uda":
        if not source_domains:
            raise ADInputError(f"uda needs --source DOMAIN [...]. Known domains: {known_domains}.")
        check_domain_names(source_domains, "--source")
        target = list(target_domains) if target_domains else [d for d in known_domains if d not in source_domains]
        check_domain_names(target, "--target")
        overlap = sorted(set(source_domains) & set(target))
        if overlap:
            raise ADInputError(f"Domain(s) {overlap} are both source and target. Fix: make --source and --target "
                               f"disjoint.")
        labeled = [c for c in tr_ids if dom[c] in source_domains]
        if not labeled:
            raise ADInputError(f"No imagesTr case belongs to the source domain(s) {list(source_domains)}, so fold 0 "
                               f"would have zero labeled cases. Fix: pick a source domain with labeled cases.")
        target_tr = [c for c in tr_ids if dom[c] in target]
        target_unl = [c for c in unl_ids if dom[c] in target]
        if not target_tr and not target_unl:
            raise ADInputError(f"No imagesTr or {UNLABELED_DIRNAME} case belongs to the target domain(s) {target}, "
                               f"so there would be nothing to adapt to. Fix: add target-domain images to "
                               f"{UNLABELED_DIRNAME} or pick --target domains that have cases.")
        folds = []
        for k in range(num_folds):
            rs = np.random.RandomState(seed + k)
            val, hidden = _split_val(target_tr, num_val, rs, labeled, "target-domain")
            folds.append({"labeled": list(labeled), "unlabeled": hidden + target_unl, "val": val,
                          "heldout_domains": []})
    else:  # semidg
        if not heldout_domains:
            raise ADInputError(f"semidg needs --heldout DOMAIN [...]. Known domains: {known_domains}.")
        check_domain_names(heldout_domains, "--heldout")
        leaked = sorted(c for c in all_ids if dom[c] in heldout_domains)
        if leaked:
            raise ADInputError(
                f"{len(leaked)} case(s) of the held-out domain(s) {list(heldout_domains)} are in imagesTr or "
                f"{UNLABELED_DIRNAME} (e.g. {_names(leaked, 3)}). They would enter nnU-Net's fingerprint and plans. "
                f"Fix: move them to imagesTs/labelsTs (e.g. with adnnunet_domains) and re-run "
                f"nnUNetv2_plan_and_preprocess.")
        train_domains = sorted(set(dom[c] for c in all_ids))
        by_domain = {d: [c for c in tr_ids if dom[c] == d] for d in train_domains}
        n = _num_labeled(num_labeled, fraction, sum(len(v) for v in by_domain.values()), "training-domain")
        folds = _drawn_folds(lambda rs: stratified_draw(by_domain, n, rs), tr_ids, unl_ids, num_folds, num_val, seed,
                             heldout_domains)

    settings = {"format_version": FORMAT_VERSION, "setting": setting, "command": command, "seed": int(seed),
                # all known domains, also of imagesTs cases: held-out domain names must stay resolvable
                "domains": {c: dom[c] for c in sorted(dom)},
                "folds": folds}
    validate_settings(settings, tr_ids, unl_ids)

    pre_folder = _preprocessed_folder(dataset_name_or_id)
    os.makedirs(pre_folder, exist_ok=True)
    splits = [{"train": list(f["labeled"]), "val": list(f["val"])} for f in folds]
    splits_file = os.path.join(pre_folder, "splits_final.json")
    if os.path.isfile(splits_file) and not overwrite:
        with open(splits_file) as f:
            try:
                existing = json.load(f)
            except json.JSONDecodeError:
                existing = None
        if existing != splits:
            raise ADInputError(f"{splits_file} exists with a different split (e.g. nnU-Net's default 5-fold split "
                               f"or an earlier adnnunet_make_settings run). Fix: pass --overwrite (overwrite=True) "
                               f"to replace it; models trained on the old split then no longer match it.")
    path = os.path.join(pre_folder, SETTINGS_FILENAME)
    write_json_atomic(path, settings)
    write_json_atomic(splits_file, splits)
    return path


def read_settings_file(path: str) -> dict:
    """The settings dict of an ``ad_settings.json`` (not validated: see :func:`load_settings`)."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ADInputError(f"{path} is not valid JSON ({e}). Fix: regenerate it with adnnunet_make_settings "
                           f"--overwrite.") from e


def load_settings(dataset_name_or_id: Union[int, str]) -> Optional[dict]:
    """The validated settings dict, or ``None`` when ``ad_settings.json`` does not exist.

    Validated against the raw dataset's imagesTr/imagesUnlabeled ids when the raw dataset is present (on a
    cluster with only nnUNet_preprocessed, only the internal consistency is checked).
    """
    path = settings_path(dataset_name_or_id)
    if not os.path.isfile(path):
        return None
    settings = read_settings_file(path)
    raw_folder = raw_dataset_folder(dataset_name_or_id)
    if os.path.isfile(os.path.join(raw_folder, "dataset.json")):
        tr_ids, unl_ids = _raw_ids(raw_folder, _load_dataset_json(raw_folder))
        validate_settings(settings, tr_ids, unl_ids)
    else:
        validate_settings(settings, None, None)
    return settings


def load_fold(dataset_name_or_id: Union[int, str], fold: int) -> Optional[FoldSplit]:
    """Fold ``fold`` of ``ad_settings.json`` (validated), or ``None`` when the file does not exist."""
    settings = load_settings(dataset_name_or_id)
    if settings is None:
        return None
    folds = settings["folds"]
    if not isinstance(fold, int) or not 0 <= fold < len(folds):
        raise ADInputError(f"Fold {fold!r} requested but {settings_path(dataset_name_or_id)} defines folds "
                           f"0..{len(folds) - 1}. Fix: train one of those folds or regenerate the settings with "
                           f"--num_folds.")
    f = folds[fold]
    return FoldSplit(labeled=tuple(f["labeled"]), unlabeled=tuple(f["unlabeled"]), val=tuple(f["val"]),
                     domains=dict(settings.get("domains") or {}), source=settings_path(dataset_name_or_id))


def default_fold(train_ids: Sequence[str], val_ids: Sequence[str], unlabeled_raw_ids: Iterable[str]) -> FoldSplit:
    """The split without ``ad_settings.json``: nnU-Net's own ``do_split()`` result + every imagesUnlabeled case."""
    return FoldSplit(labeled=tuple(train_ids), unlabeled=tuple(sorted(unlabeled_raw_ids)), val=tuple(val_ids),
                     domains={}, source="nnU-Net do_split() + imagesUnlabeled")


def summarize(settings: dict) -> str:
    """Human-readable counts per fold and per domain."""
    dom = settings.get("domains") or {}
    lines = [f"setting: {settings['setting']}  seed: {settings['seed']}  folds: {len(settings['folds'])}"]
    for k, f in enumerate(settings["folds"]):
        lines.append(f"fold {k}: labeled {len(f['labeled'])}, unlabeled {len(f['unlabeled'])}, val {len(f['val'])}"
                     + (f", held-out domains {f['heldout_domains']}" if f["heldout_domains"] else ""))
        if dom:
            for d in sorted(set(dom.values())):
                counts = [sum(dom.get(c) == d for c in f[key]) for key in ("labeled", "unlabeled", "val")]
                lines.append(f"    domain {d}: labeled {counts[0]}, unlabeled {counts[1]}, val {counts[2]}")
    return "\n".join(lines)
