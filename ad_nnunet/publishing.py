"""Writing files and datasets so that no reader ever sees half of one, and naming raw dataset folders.

* :func:`write_atomic`, :func:`write_json_atomic`: a file is written under a hidden temporary name in its own folder
  and renamed onto its final name (a rename within one file system is atomic), so a killed run leaves the old file
  or the new one, never a truncated one.
* :func:`staged_dataset`: a dataset folder is built in a hidden staging folder next to its target and renamed into
  place at the end, so an interrupted build leaves no half-written dataset.
* :func:`link_or_copy`: dataset builders hard-link the files they take over unchanged.
* :func:`raw_root_or_env`, :func:`dataset_folder_name`, :func:`new_dataset_folder`, :func:`existing_raw_dataset`:
  ``DatasetXXX_Name`` folders under a raw root, for the dataset builders (``ad_nnunet.dataset_conversion``) and the
  benchmark.

Training resolves datasets with nnU-Net's own lookup instead (``ad_nnunet.data.raw.raw_dataset_folder``, which also
searches nnUNet_preprocessed and nnUNet_results), as ``nnUNetv2_train`` does.
"""
from __future__ import annotations

import json
import numbers
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

from ad_nnunet.errors import ADInputError

PathLike = Union[str, os.PathLike]


def write_atomic(path: PathLike, write: Callable[[Path], object]) -> None:
    """``write(tmp)``, then rename ``tmp`` onto ``path``.

    ``tmp`` is hidden, unique, in ``path``'s folder and keeps ``path``'s file ending (writers such as matplotlib pick
    the format by it); it is removed if ``write`` fails.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name.split('.')[0]}.tmp{uuid.uuid4().hex[:8]}{''.join(path.suffixes)}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: PathLike, obj, *, indent: int = 2, sort_keys: bool = False) -> None:
    """``obj`` as JSON (UTF-8, a final newline) at ``path``, through :func:`write_atomic`."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def staged_dataset(target: PathLike) -> Iterator[Path]:
    """Build a dataset folder at the yielded path; it becomes ``target`` when the ``with`` block ends without error.

    The yielded path is ``<hidden staging folder>/<target's name>`` in ``target``'s parent and does not exist yet, so
    a builder that writes ``<raw root>/DatasetXXX_Name`` itself (``simulate_domains``) can take the staging folder as
    its raw root. An existing ``target`` (overwrite) is moved into the staging folder, put back if the final rename
    fails, and deleted with the staging folder. On an error ``target`` stays as it was and nothing else remains.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        staged = staging / target.name
        yield staged
        if target.exists():
            old = staging / f"{target.name}.old"
            os.rename(target, old)
            try:
                os.rename(staged, target)
            except BaseException:
                os.rename(old, target)
                raise
        else:
            os.rename(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def link_or_copy(src: PathLike, dst: PathLike) -> str:
    """Hard-link ``src`` at ``dst``, else copy it with its metadata; returns ``"link"`` or ``"copy"``.

    A link costs no space and nnU-Net never edits raw files; a copy is needed across file systems, or where
    protected_hardlinks forbids linking a file this user does not own.
    """
    try:
        os.link(src, dst)
        return "link"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def describe_file_modes(modes: Iterable[str]) -> str:
    """``"hard links"``, ``"copies"`` or ``"mixed"``: how the results of :func:`link_or_copy` placed a dataset's
    files (recorded in its split file)."""
    modes = set(modes)
    return "hard links" if modes == {"link"} else ("copies" if modes == {"copy"} else "mixed")


def raw_root_or_env(raw_root: Optional[PathLike], option: str) -> Path:
    """``raw_root``, else ``$nnUNet_raw``; ``option`` names how a user passes it (e.g. ``"--raw"``)."""
    root = raw_root or os.environ.get("nnUNet_raw")
    if not root:
        raise ADInputError(f"No raw folder: nnUNet_raw is not set. Fix: export nnUNet_raw or pass {option}.")
    return Path(root)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_<name>``; refuses an id outside 1..999 and a name nnU-Net cannot parse back."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, numbers.Integral) or not 1 <= dataset_id <= 999:
        raise ADInputError(f"Dataset id {dataset_id!r} is not in 1..999. Fix: pass a 3-digit id.")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name)):
        raise ADInputError(f"Dataset name {name!r} is invalid. Fix: use letters, digits, '_', '.', '-' only (it "
                           f"becomes Dataset{int(dataset_id):03d}_<name>).")
    return f"Dataset{int(dataset_id):03d}_{name}"


def new_dataset_folder(raw_root: PathLike, dataset_id: int, name: str, overwrite: bool) -> Path:
    """``<raw_root>/DatasetXXX_<name>`` (:func:`dataset_folder_name`) for a raw dataset about to be written.

    Refuses an id that another dataset already uses (nnU-Net resolves datasets by id) and, unless ``overwrite``, an
    existing folder of that name.
    """
    root = Path(raw_root)
    target = root / dataset_folder_name(dataset_id, name)
    prefix = target.name[:len("DatasetXXX_")]
    clash = sorted(p.name for p in root.glob(f"{prefix}*") if p.is_dir() and p.name != target.name) \
        if root.is_dir() else []
    if clash:
        raise ADInputError(f"Dataset id {dataset_id} is already used by {clash} in {root}; nnU-Net needs unique "
                           f"ids. Fix: choose another dataset id, or remove {clash}.")
    if target.exists() and not overwrite:
        raise ADInputError(f"{target} already exists. Fix: pass overwrite=True (CLI: --overwrite) to replace it "
                           f"(models trained on it then no longer match), or choose another dataset id/name.")
    return target


def existing_raw_dataset(dataset: Union[int, str], raw_root: PathLike) -> Path:
    """``<raw_root>/DatasetXXX_Name`` of an existing raw dataset given by id (``111``, ``"111"``) or folder name;
    it must hold dataset.json."""
    raw_root = Path(raw_root)
    name = str(dataset)
    if re.fullmatch(r"\d+", name):
        prefix = f"Dataset{int(name):03d}_"
        found = sorted(p.name for p in raw_root.iterdir() if p.is_dir() and p.name.startswith(prefix)) \
            if raw_root.is_dir() else []
        if len(found) != 1:
            raise ADInputError(f"Dataset id {dataset}: {'no' if not found else 'several'} raw folder(s) {found} in "
                               f"{raw_root}. Fix: pass the dataset name (DatasetXXX_Name) or create the dataset.")
        name = found[0]
    if not re.fullmatch(r"Dataset\d{3}_.+", name) or not (raw_root / name / "dataset.json").is_file():
        raise ADInputError(f"Dataset {dataset!r}: {raw_root / name / 'dataset.json'} not found. Fix: pass an "
                           f"existing raw dataset (DatasetXXX_Name or its id) under {raw_root}.")
    return raw_root / name
