"""The offline payload of the GPU tier (``benchmarks/gpu_tier.sh``), packed on this machine from a source checkout;
nothing is fetched at run time.

The device machine (one H100/H200, Python 3.12, torch, numpy/scipy/scikit-image/pandas/... but no nnU-Net) receives
the working tree plus at most 64 MiB in all. The payload (default ``benchmarks/gpu_payload/``, git-ignored, passed
to the device call with ``carry``) holds:

* ``wheels.tar.xz``: the wheels of every distribution the image lacks (``gpu_wheels.WHEELS``, pinned to the versions
  installed here), re-zipped without compression so that xz compresses their contents (SimpleITK's 53 MB wheel
  becomes about 28 MB); nibabel's test suites are left out.
* ``ad_nnunet-<version>-py3-none-any.whl``: ad-nnunet itself, built from the working tree on every pack.
* ``data.tar.xz``: the LA benchmark as a raw nnU-Net dataset ``Dataset<id>_<name>gpu`` (``gpu_dataset``), training
  cases resampled by ``spacing_factor`` (default 2: 1.25 mm, the ``la_cpu`` preset's spacing), test cases at their
  original resolution; uncompressed ``.nii`` inside an xz stream with a delta filter.
* ``manifest.json``: versions, sha256 of every file, the source digest of the ad-nnunet code the wheel was built
  from (``gpu_tier.sh`` refuses a payload that does not match the working tree), the commit, and the sizes.

The two archives take minutes to compress; they are cached in ``--cache`` under a hash of what determines them
(pinned versions and Python, or the split and resampling), so re-packing after a code change takes seconds.

Why not the preprocessed data: nnU-Net stores it as float32 (z-scored, spline-resampled values that barely
compress); even the la_cpu configuration is about 80 MB for the 68 training cases, and SimpleITK alone takes 28 MB of
the 64 MiB.

:func:`verify` runs on the device before anything is installed: this module imports only the standard library and
ad_nnunet's stdlib-only modules, from the working tree.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional

from ad_nnunet.benchmark.gpu_dataset import build_dataset
from ad_nnunet.benchmark.gpu_wheels import STRIP, WHEELS, build_own_wheel, build_wheels
from ad_nnunet.benchmark.provenance import SOURCE_TREE, git_commit
from ad_nnunet.errors import ADInputError
from ad_nnunet.hashing import sha256_of
from ad_nnunet.publishing import staged_dataset

MIB = 1 << 20
TRAVEL_LIMIT = 64 * MIB  # the device call's limit: working tree + carried paths
DATA_FORMAT = 1  # bump when the content of the cached archives changes
SOURCE_GLOBS = ("ad_nnunet/**/*.py", "trainers/*.py", "plans/*.json", "setup.py")
# Not part of the working tree that travels (.gitignore'd or git's own).
NOT_TRAVELLING = {".git", "__pycache__", ".pytest_cache", "build", "dist", "benchmark_runs"}


def folder_size(folder: Path, skip: Iterable[str] = ()) -> int:
    """Bytes of all regular files under ``folder`` (not following links), skipping folders named in ``skip``."""
    total, skip = 0, set(skip)
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files
                     if os.path.isfile(os.path.join(root, f)) and not os.path.islink(os.path.join(root, f)))
    return total


def check_size(payload: Path, limit_bytes: int) -> int:
    """Raise if the payload is larger than ``limit_bytes``; return its size."""
    size = folder_size(payload)
    if size > limit_bytes:
        raise ADInputError(f"The GPU payload {payload} is {size / MIB:.2f} MiB, over the {limit_bytes / MIB:.2f} MiB "
                           f"that fit beside the working tree in one device call. Fix: drop hold-out cases "
                           f"(prepare_la.py --holdout), raise --spacing_factor, or remove wheels the image has.")
    return size


def source_digest(repo: Path = SOURCE_TREE) -> str:
    """sha256 over the ad-nnunet sources that go into its wheel (paths and contents, sorted)."""
    h = hashlib.sha256()
    files = sorted({p for g in SOURCE_GLOBS for p in repo.glob(g) if p.is_file() and "__pycache__" not in p.parts})
    for p in files:
        h.update(p.relative_to(repo).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _cached(cache: Path, key: dict, name: str, build) -> tuple:
    """``build(path)`` writes an archive; it is kept in ``cache`` under a hash of ``key`` (json) and reused."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    archive = cache / f"{name}-{digest}.tar.xz"
    info_file = archive.with_suffix(".json")
    if not (archive.is_file() and info_file.is_file()):
        cache.mkdir(parents=True, exist_ok=True)
        info = build(archive)
        info_file.write_text(json.dumps(info, indent=2))
    return archive, json.loads(info_file.read_text())


def write_tar_xz(src_dir: Path, archive: Path, delta: bool) -> None:
    """``src_dir``'s files as a tar in an xz stream (with a delta filter for image data), written atomically."""
    filters = ([{"id": lzma.FILTER_DELTA, "dist": 1}] if delta else []) + \
        [{"id": lzma.FILTER_LZMA2, "preset": 9}]
    tmp = archive.with_name(archive.name + ".tmp")
    with lzma.open(tmp, "wb", format=lzma.FORMAT_XZ, filters=filters) as xz, \
            tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(src_dir.rglob("*")):
            tar.add(p, arcname=p.relative_to(src_dir).as_posix(), recursive=False)
    os.replace(tmp, archive)


def extract(archive: Path, dest: Path) -> None:
    """Unpack a payload archive (tar.xz, any xz filters) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(dest, filter="data")


def travelling_size(repo: Path = SOURCE_TREE, payload: Optional[Path] = None) -> int:
    """Rough size of the working tree that travels, without the payload (git-ignored folders skipped)."""
    skip = set(NOT_TRAVELLING) | ({payload.name} if payload is not None else set())
    if payload is not None:  # pack()'s own staging folders, .<payload>.*
        skip |= {p.name for p in payload.parent.glob(f".{payload.name}.*")}
    return folder_size(repo, skip)


def pack(source: Path, out: Path, cache: Path, python_version: str = "3.12", factor: float = 2.0,
         dataset_id: Optional[int] = None, num_processes: int = 2) -> dict:
    """Build the payload folder ``out`` (replaced atomically); return the manifest."""
    if not (source / "benchmark_split.json").is_file():
        raise ADInputError(f"{source} has no benchmark_split.json. Fix: build it with benchmarks/prepare_la.py and "
                           f"pass its folder with --source.")
    m = re.fullmatch(r"Dataset(\d{3})_(.+)", source.name)
    if m is None:
        raise ADInputError(f"{source.name} is not an nnU-Net dataset folder name. Fix: pass the DatasetXXX_Name "
                           f"folder.")
    dataset_id = dataset_id or int(m.group(1)) + 10
    t0 = time.time()
    log = cache / "pack.log"
    from importlib.metadata import version

    def wheels_archive(archive: Path) -> dict:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            info = build_wheels(Path(tmp) / "wheels", cache / "downloads", python_version, log)
            write_tar_xz(Path(tmp) / "wheels", archive, delta=False)
        return info

    def data_archive(archive: Path) -> dict:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            info = build_dataset(source, Path(tmp), dataset_id, f"{m.group(2)}gpu", factor, num_processes)
            write_tar_xz(Path(tmp), archive, delta=True)
        return info

    # The third-party wheels and the dataset are cached (their xz compression takes minutes); the ad-nnunet
    # wheel is rebuilt on every pack from the current sources.
    wheel_key = {"format": DATA_FORMAT, "python": python_version, "strip": {k: v.pattern for k, v in STRIP.items()},
                 "pins": {n: version(n) for n in WHEELS}}
    data_key = {"format": DATA_FORMAT, "factor": factor, "id": dataset_id, "source": str(source.resolve()),
                "split": sha256_of(source / "benchmark_split.json"), "dataset": sha256_of(source / "dataset.json")}
    with staged_dataset(out) as payload:  # a hidden .<out>.tmp-* folder until complete, then renamed onto out
        w_archive, wheels = _cached(cache, wheel_key, "wheels", wheels_archive)
        d_archive, data = _cached(cache, data_key, "data", data_archive)
        payload.mkdir()
        shutil.copy2(w_archive, payload / "wheels.tar.xz")
        shutil.copy2(d_archive, payload / "data.tar.xz")
        own = build_own_wheel(payload, log)
        wheels[own.name] = {"distribution": "ad-nnunet", "version": version("ad-nnunet"),
                            "why": "the A&D plugin, built from this working tree"}
        manifest = {"format": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
                    "source_digest": source_digest(), "python_version": python_version, "wheels": wheels,
                    "data": data,
                    "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
                              for p in sorted(payload.iterdir())}}
        (payload / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        limit = TRAVEL_LIMIT - travelling_size(payload=out) - MIB // 2
        manifest["size_bytes"] = check_size(payload, limit)
        manifest["limit_bytes"] = limit
        (payload / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{out}: {manifest['size_bytes'] / MIB:.2f} MiB of at most {limit / MIB:.2f} MiB "
          f"({time.time() - t0:.0f} s)")
    return manifest


def verify(payload: Path, repo: Path = SOURCE_TREE) -> dict:
    """Check the payload's files against its manifest and its ad-nnunet wheel against the working tree."""
    manifest_file = payload / "manifest.json"
    if not manifest_file.is_file():
        raise ADInputError(f"{manifest_file} is missing. Fix: run python benchmarks/pack_gpu_tier.py here and carry "
                           f"{payload} along (device call: carry=[\"{payload}\"]).")
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as e:
        raise ADInputError(f"{manifest_file} is not valid JSON ({e}). Fix: re-run benchmarks/pack_gpu_tier.py.") \
            from None
    for name, f in manifest["files"].items():
        p = payload / name
        if not p.is_file() or p.stat().st_size != f["bytes"] or sha256_of(p) != f["sha256"]:
            raise ADInputError(f"{p} is missing or differs from the manifest. Fix: re-run benchmarks/pack_gpu_tier.py.")
    if manifest["source_digest"] != source_digest(repo):
        raise ADInputError(f"The payload's ad-nnunet wheel was built from other sources than this working tree "
                           f"(packed at commit {manifest['commit']}). Fix: re-run benchmarks/pack_gpu_tier.py.")
    return manifest
