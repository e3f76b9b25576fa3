"""Data-loading workers that exit with the training process, also when it is killed with ``kill -9``.

nnU-Net's augmenter (batchgenerators' ``NonDetMultiThreadedAugmenter``) forks worker processes that loop until an
abort event is set; a training process that dies without running its clean-up (``kill -9``, out-of-memory killer)
never sets it, and the workers keep running under PID 1. The workers run the batch's transforms, so the first
transform of every pipeline is :class:`ExitWithParent`: it leaves the data unchanged and, the first time it runs in
a process other than the one that built it, asks the kernel to kill that process when its parent dies (Linux
``prctl(PR_SET_PDEATHSIG, SIGKILL)``); if the parent is already gone, the worker exits at once. In the training
process itself (``nnUNet_n_proc_DA=0``) it does nothing. Elsewhere than Linux there is no such signal and the
transform only does the already-gone check.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int) -> bool:
    """Make this process die with ``parent_pid`` (its parent); exits now if the parent is already gone.

    Returns whether the kernel's parent-death signal was set (Linux only).
    """
    armed = False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    if os.getppid() != parent_pid:  # died before the signal was set: it would never come
        os._exit(0)
    return armed


class ExitWithParent(BasicTransform):
    """Identity transform that ties the worker process applying it to the process that built it (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.parent_pid = os.getpid()
        self.armed_in_pid = self.parent_pid

    def get_parameters(self, **data_dict) -> dict:
        return {}

    def apply(self, data_dict: dict, **params) -> dict:
        if os.getpid() != self.armed_in_pid:  # first sample in a new worker (a fork copies armed_in_pid)
            exit_with_parent(self.parent_pid)
            self.armed_in_pid = os.getpid()
        return data_dict


def exiting_with_parent(pipeline: BasicTransform) -> ComposeTransforms:
    """``pipeline`` with :class:`ExitWithParent` first (flattened when it is a ``ComposeTransforms``)."""
    steps = list(pipeline.transforms) if isinstance(pipeline, ComposeTransforms) else [pipeline]
    return ComposeTransforms([ExitWithParent()] + steps)
