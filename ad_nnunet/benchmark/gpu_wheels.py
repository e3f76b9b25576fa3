"""The wheels of the GPU-tier payload: every distribution the device image lacks, pinned to the versions installed
here and re-zipped without compression (so that xz compresses their contents), and ad-nnunet's own wheel built from
the source checkout."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

from ad_nnunet.benchmark.provenance import SOURCE_TREE
from ad_nnunet.errors import ADInputError

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


def _pip(args: List[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise ADInputError(f"pip failed: {' '.join(cmd)} (exit {rc}); see {log}. Fix: check the registry access "
                           f"and the pinned versions.")


def stored_copy(src: Path, dst: Path, drop: Optional[re.Pattern] = None) -> int:
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
        dropped = stored_copy(whl, dest / whl.name, STRIP.get(wanted[key][0]))
        out[whl.name] = {"distribution": wanted[key][0], "version": ver, "why": WHEELS[wanted[key][0]]}
        if dropped:
            out[whl.name]["left_out"] = f"{dropped} files matching {STRIP[wanted[key][0]].pattern}"
    missing = sorted({v[0] for v in wanted.values()} - {w["distribution"] for w in out.values()})
    if missing:
        raise ADInputError(f"No wheel for {missing} in {cache}. Fix: see {log}.")
    return out


def build_own_wheel(dest: Path, log: Path) -> Path:
    """The ad-nnunet wheel, built from a copy of the checkout's sources (so the build leaves no files there)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for rel in ("ad_nnunet", "trainers", "plans"):
            shutil.copytree(SOURCE_TREE / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__"))
        for rel in ("setup.py", "README.md"):
            shutil.copy2(SOURCE_TREE / rel, src / rel)
        _pip(["wheel", "--no-deps", "-q", "-w", tmp, str(src)], log)
        (whl,) = Path(tmp).glob("ad_nnunet-*.whl")
        shutil.copy2(whl, dest / whl.name)
    return dest / whl.name
