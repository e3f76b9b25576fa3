"""Build the offline payload of the GPU tier (benchmarks/gpu_tier.sh) on this machine; nothing is fetched at run time.

The device machine (one H100/H200, Python 3.12, torch, numpy/scipy/scikit-image/pandas/... but no nnU-Net) receives
the working tree plus at most 64 MiB in all. The payload (default ``benchmarks/gpu_payload/``, git-ignored, passed
to the device call with ``carry``) holds:

* ``wheels.tar.xz``: the wheels of every distribution the image lacks (``WHEELS`` below, pinned to the versions
  installed here), re-zipped without compression so that xz compresses their contents (SimpleITK's 53 MB wheel
  becomes about 28 MB); nibabel's test suites are left out.
* ``ad_nnunet-<version>-py3-none-any.whl``: ad-nnunet itself, built from this working tree on every pack.
* ``data.tar.xz``: the LA benchmark as a raw nnU-Net dataset ``Dataset<id>_<name>gpu``. Its training images and
  labels (labeled + hidden-label cases) are resampled once here by ``spacing_factor`` (default 2: 1.25 mm, the
  ``la_cpu`` preset's spacing) with nnU-Net's own resampling (order 3 for images, rounded back to the source's
  uint8; linear one-hot for labels); the hold-out test images and labels stay at their ORIGINAL resolution, so
  ``nnUNetv2_predict`` exports the predictions to the original grid and the metrics are in mm at that resolution.
  Files are uncompressed ``.nii`` inside an xz stream with a delta filter.
* ``manifest.json``: versions, sha256 of every file, the source digest of the ad-nnunet code the wheel was built
  from (``gpu_tier.sh`` refuses a payload that does not match the working tree), the commit, and the sizes.

The two archives take minutes to compress; they are cached in ``--cache`` under a hash of what determines them
(pinned versions and Python, or the split and resampling), so re-packing after a code change takes seconds.

Why not the preprocessed data: nnU-Net stores it as float32 (z-scored, spline-resampled values that barely
compress); even the la_cpu configuration is about 80 MB for the 68 training cases, and SimpleITK alone takes 28 MB of
the 64 MiB.

Usage (after benchmarks/prepare_la.py)::

    python benchmarks/pack_gpu_tier.py --source $nnUNet_raw/Dataset111_LA10bench      # -> benchmarks/gpu_payload/
    python benchmarks/pack_gpu_tier.py --verify benchmarks/gpu_payload               # what gpu_tier.sh runs first
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
TRAVEL_LIMIT = 64 * MIB  # the device call's limit: working tree + carried paths
# Distributions the device image lacks (see /work/.library/device/KINDS.md), found by importing everything the
# benchmark runs (nnU-Net's train/predict/plan entry points, its trainer lookup, ad_nnunet) and mapping the imported
# modules to distributions. The image already has torch, numpy, scipy, scikit-image, scikit-learn, pandas,
# matplotlib, seaborn, tifffile, tqdm, requests, einops, timm, msgpack, threadpoolctl, httpx, rich, pyyaml.
WHEELS = {
    "nnunetv2": "the pipeline itself (plan, preprocess, train, predict)",
    "acvl-utils": "imported by nnU-Net",
    "dynamic-network-architectures": "nnU-Net's networks",
    "batchgenerators": "nnU-Net's data loading",
    "batchgeneratorsv2": "nnU-Net's data augmentation",
    "nibabel": "imported by nnunetv2.imageio",
    "medpy": "HD95/ASD in ad_nnunet.evaluation",
    "simpleitk": "NIfTI reading/writing (nnU-Net, ad_nnunet.evaluation)",
    "blosc2": "nnU-Net's preprocessed-data format",
    "ndindex": "imported by blosc2",
    "numexpr": "imported by blosc2",
    "connected-components-3d": "imported by acvl_utils.morphology (nnU-Net's trainer)",
}
# Test suites never imported by the benchmark, left out of the wheel (nibabel's are 2.3 MB of its 2.6 MB, xz).
STRIP = {"nibabel": re.compile(r"nibabel/(?:[^/]+/)*tests/")}
BINARY = {"simpleitk", "blosc2", "ndindex", "numexpr", "connected-components-3d"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
DATA_FORMAT = 1  # bump when the content of the cached archives changes
SOURCE_GLOBS = ("ad_nnunet/**/*.py", "trainers/*.py", "plans/*.json", "setup.py")
# Not part of the working tree that travels (.gitignore'd or git's own).
_NOT_TRAVELLING = {".git", "__pycache__", ".pytest_cache", "build", "dist", "benchmark_runs"}


class PayloadError(ValueError):
    """The payload does not fit or does not match; the message says what to do."""


def _input_error(msg: str) -> Exception:
    try:  # ad_nnunet may not be importable yet on the device machine (gpu_tier.sh verifies before installing)
        from ad_nnunet.errors import ADInputError
        return ADInputError(msg)
    except ImportError:
        return PayloadError(msg)


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
        raise _input_error(f"The GPU payload {payload} is {size / MIB:.2f} MiB, over the {limit_bytes / MIB:.2f} MiB "
                           f"that fit beside the working tree in one device call. Fix: drop hold-out cases "
                           f"(prepare_la.py --holdout), raise --spacing_factor, or remove wheels the image has.")
    return size


def source_digest(repo: Path = REPO) -> str:
    """sha256 over the ad-nnunet sources that go into its wheel (paths and contents, sorted)."""
    h = hashlib.sha256()
    files = sorted({p for g in SOURCE_GLOBS for p in repo.glob(g) if p.is_file() and "__pycache__" not in p.parts})
    for p in files:
        h.update(p.relative_to(repo).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _sha256(path: Path) -> str:
    # not ad_nnunet.hashing: on the device this script verifies the payload before ad-nnunet is installed
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip(args: List[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise _input_error(f"pip failed: {' '.join(cmd)} (exit {rc}); see {log}. Fix: check the registry access "
                           f"and the pinned versions.")


def _stored_copy(src: Path, dst: Path, drop: Optional[re.Pattern] = None) -> int:
    """Re-zip a wheel without compression, leaving out members matching ``drop`` (and their RECORD lines);
    a valid wheel for pip. Returns the number of members left out."""
    dropped = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if drop is not None and drop.match(info.filename):
                dropped += 1
                continue
            data = zin.read(info)
            if drop is not None and info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True) if not drop.match(line.decode()))
            new = copy.copy(info)
            new.compress_type = zipfile.ZIP_STORED
            zout.writestr(new, data)
    return dropped


def build_wheels(dest: Path, cache: Path, python_version: str, log: Path) -> Dict[str, dict]:
    """Download/build the third-party wheels into ``cache`` (reused), store uncompressed copies in ``dest``."""
    from importlib.metadata import version

    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    pins = {name: version(name) for name in WHEELS}
    pure = [f"{n}=={v}" for n, v in pins.items() if n not in BINARY]
    binary = [f"{n}=={v}" for n, v in pins.items() if n in BINARY]
    _pip(["wheel", "--no-deps", "-q", "-w", str(cache), *pure], log)
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    _pip(["download", "--no-deps", "-q", "--only-binary=:all:", "--python-version", python_version,
          "--implementation", "cp", *platform_args, "-d", str(cache), *binary], log)
    wanted = {re.sub(r"[-_.]+", "_", n).lower(): (n, v) for n, v in pins.items()}
    tag = "cp" + python_version.replace(".", "")
    out = {}
    for whl in sorted(cache.glob("*.whl")):
        dist, ver = whl.name.split("-")[:2]
        key = dist.lower()
        if key not in wanted or ver != wanted[key][1]:
            continue
        if wanted[key][0] in BINARY and not (f"-{tag}-" in whl.name or "-abi3-" in whl.name):
            continue  # a wheel for another Python left in the cache
        dropped = _stored_copy(whl, dest / whl.name, STRIP.get(wanted[key][0]))
        out[whl.name] = {"distribution": wanted[key][0], "version": ver, "why": WHEELS[wanted[key][0]]}
        if dropped:
            out[whl.name]["left_out"] = f"{dropped} files matching {STRIP[wanted[key][0]].pattern}"
    missing = sorted({v[0] for v in wanted.values()} - {w["distribution"] for w in out.values()})
    if missing:
        raise _input_error(f"No wheel for {missing} in {cache}. Fix: see {log}.")
    return out


def build_own_wheel(dest: Path, log: Path) -> Path:
    """The ad-nnunet wheel, built from a copy of this working tree's sources (so the build leaves no files here)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for rel in ("ad_nnunet", "trainers", "plans"):
            shutil.copytree(REPO / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__"))
        for rel in ("setup.py", "README.md"):
            shutil.copy2(REPO / rel, src / rel)
        _pip(["wheel", "--no-deps", "-q", "-w", tmp, str(src)], log)
        (whl,) = Path(tmp).glob("ad_nnunet-*.whl")
        shutil.copy2(whl, dest / whl.name)
    return dest / whl.name


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
    """The GPU-tier raw dataset in ``staging/<Dataset>`` (see the module docstring); returns its summary."""
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


def _write_tar_xz(src_dir: Path, archive: Path, delta: bool) -> None:
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


def travelling_size(repo: Path = REPO, payload: Optional[Path] = None) -> int:
    """Rough size of the working tree that travels, without the payload (git-ignored folders skipped)."""
    skip = set(_NOT_TRAVELLING) | ({payload.name} if payload is not None else set())
    if payload is not None:  # pack()'s own staging folders, .<payload>.*
        skip |= {p.name for p in payload.parent.glob(f".{payload.name}.*")}
    return folder_size(repo, skip)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def pack(source: Path, out: Path, cache: Path, python_version: str = "3.12", factor: float = 2.0,
         dataset_id: Optional[int] = None, num_processes: int = 2) -> dict:
    """Build the payload folder ``out`` (replaced atomically); return the manifest."""
    if not (source / "benchmark_split.json").is_file():
        raise _input_error(f"{source} has no benchmark_split.json. Fix: build it with benchmarks/prepare_la.py and "
                           f"pass its folder with --source.")
    m = re.fullmatch(r"Dataset(\d{3})_(.+)", source.name)
    if m is None:
        raise _input_error(f"{source.name} is not an nnU-Net dataset folder name. Fix: pass the DatasetXXX_Name folder.")
    dataset_id = dataset_id or int(m.group(1)) + 10
    t0 = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    log = cache / "pack.log"
    try:
        from importlib.metadata import version

        def wheels_archive(archive: Path) -> dict:
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                info = build_wheels(Path(tmp) / "wheels", cache / "downloads", python_version, log)
                _write_tar_xz(Path(tmp) / "wheels", archive, delta=False)
            return info

        def data_archive(archive: Path) -> dict:
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                info = build_dataset(source, Path(tmp), dataset_id, f"{m.group(2)}gpu", factor, num_processes)
                _write_tar_xz(Path(tmp), archive, delta=True)
            return info

        # The third-party wheels and the dataset are cached (their xz compression takes minutes); the ad-nnunet
        # wheel is rebuilt on every pack from the current sources.
        wheel_key = {"format": DATA_FORMAT, "python": python_version, "strip": {k: v.pattern for k, v in STRIP.items()},
                     "pins": {n: version(n) for n in WHEELS}}
        data_key = {"format": DATA_FORMAT, "factor": factor, "id": dataset_id, "source": str(source.resolve()),
                    "split": _sha256(source / "benchmark_split.json"), "dataset": _sha256(source / "dataset.json")}
        w_archive, wheels = _cached(cache, wheel_key, "wheels", wheels_archive)
        d_archive, data = _cached(cache, data_key, "data", data_archive)
        payload = staging / "payload"
        payload.mkdir()
        shutil.copy2(w_archive, payload / "wheels.tar.xz")
        shutil.copy2(d_archive, payload / "data.tar.xz")
        own = build_own_wheel(staging / "own", log)
        shutil.copy2(own, payload / own.name)
        wheels[own.name] = {"distribution": "ad-nnunet", "version": version("ad-nnunet"),
                            "why": "the A&D plugin, built from this working tree"}
        manifest = {"format": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
                    "source_digest": source_digest(), "python_version": python_version, "wheels": wheels,
                    "data": data,
                    "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                              for p in sorted(payload.iterdir())}}
        (payload / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        limit = TRAVEL_LIMIT - travelling_size(payload=out) - MIB // 2
        manifest["size_bytes"] = check_size(payload, limit)
        manifest["limit_bytes"] = limit
        (payload / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.rename(out, old)
        os.rename(payload, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{out}: {manifest['size_bytes'] / MIB:.2f} MiB of at most {limit / MIB:.2f} MiB "
          f"({time.time() - t0:.0f} s)")
    return manifest


def verify(payload: Path, repo: Path = REPO) -> dict:
    """Check the payload's files against its manifest and its ad-nnunet wheel against the working tree."""
    manifest_file = payload / "manifest.json"
    if not manifest_file.is_file():
        raise _input_error(f"{manifest_file} is missing. Fix: run python benchmarks/pack_gpu_tier.py here and carry "
                           f"{payload} along (device call: carry=[\"{payload}\"]).")
    manifest = json.loads(manifest_file.read_text())
    for name, f in manifest["files"].items():
        p = payload / name
        if not p.is_file() or p.stat().st_size != f["bytes"] or _sha256(p) != f["sha256"]:
            raise _input_error(f"{p} is missing or differs from the manifest. Fix: re-run benchmarks/pack_gpu_tier.py.")
    if manifest["source_digest"] != source_digest(repo):
        raise _input_error(f"The payload's ad-nnunet wheel was built from other sources than this working tree "
                           f"(packed at commit {manifest['commit']}). Fix: re-run benchmarks/pack_gpu_tier.py.")
    return manifest


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, help="the benchmark raw dataset from prepare_la.py "
                                               "(default $nnUNet_raw/Dataset111_LA10bench)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu_payload")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "adnnunet_gpu_wheels",
                   help="cache of downloads and archives (reused between packs)")
    p.add_argument("--python_version", default="3.12", help="the device's Python (binary wheels), default 3.12")
    p.add_argument("--spacing_factor", type=float, default=2.0, help="training-image resampling factor (default 2)")
    p.add_argument("--dataset_id", type=int, help="id of the GPU dataset (default: source id + 10)")
    p.add_argument("-np", type=int, default=2, help="processes for the resampling")
    p.add_argument("--verify", type=Path, metavar="PAYLOAD", help="only check PAYLOAD against its manifest and "
                                                                   "the working tree")
    a = p.parse_args(argv)
    try:
        if a.verify:
            manifest = verify(a.verify)
            print(f"{a.verify}: OK (commit {manifest['commit']}, {manifest['size_bytes'] / MIB:.2f} MiB)")
            return 0
        source = a.source or (Path(os.environ.get("nnUNet_raw", "")) / "Dataset111_LA10bench")
        pack(source, a.out, a.cache, a.python_version, a.spacing_factor, a.dataset_id, a.np)
    except (PayloadError, ValueError) as e:
        print(f"pack_gpu_tier: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
