"""Reading checkpoints without running arbitrary code: ``torch.load(weights_only=True)`` with an allow-list.

nnU-Net's checkpoints (and ADTrainer's, which add the RNG states) hold, besides tensors and plain containers, numpy
scalars (in the logs and ``_best_ema``) and numpy arrays (NumPy's RNG state). Exactly those numpy types are allowed;
any other global in the file (a pickled function or class) makes the load fail instead of executing it. Everything
ad-nnunet reads itself goes through :func:`load_checkpoint`; nnU-Net 2.8.1's own resume (``--c``), predictor and
``-pretrained_weights`` still call ``torch.load(weights_only=False)``: that is nnU-Net's behaviour, not ours.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch

from ad_nnunet.errors import ADInputError

_multiarray = importlib.import_module("numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2
                                      else "numpy.core.multiarray")
SAFE_NUMPY_GLOBALS = [_multiarray.scalar, _multiarray._reconstruct, np.ndarray, np.dtype] + sorted(
    {type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                 np.uint64, np.float16, np.float32, np.float64)}, key=lambda t: t.__name__)


# The checkpoints nnUNetv2_train writes into a model folder, in the order ``--c`` looks for one to continue from.
NNUNET_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def checkpoints_in(folder: Union[str, os.PathLike]) -> list:
    """The names of nnU-Net's checkpoints present in the model folder ``folder``: what ``--c`` would continue from."""
    return [name for name in NNUNET_CHECKPOINTS if os.path.isfile(os.path.join(folder, name))]


def run_folder_parts(run_folder: Union[str, os.PathLike]) -> Tuple[str, str, str]:
    """(trainer, plans identifier, configuration) of a model folder, which nnUNetv2_train names
    ``<trainer>__<plans>__<configuration>``. Raises ADInputError for any other name (nnU-Net's own parser asserts)."""
    parts = Path(run_folder).name.split("__")
    if len(parts) != 3 or not all(parts):
        raise ADInputError(f"{run_folder} is not named <trainer>__<plans>__<configuration>, so it is not a folder "
                           f"nnUNetv2_train wrote. Fix: pass the run's folder (check -d, -c, -tr and -p).")
    return parts[0], parts[1], parts[2]


def load_checkpoint(path: Union[str, os.PathLike], map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)`` allowing the numpy types of nnU-Net / ADTrainer checkpoints only."""
    with torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)
