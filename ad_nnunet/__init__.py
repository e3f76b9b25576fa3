"""ad-nnunet: the Aggregating & Decoupling semi-supervised framework as an nnU-Net v2 plugin.

Importing this package is cheap: it pulls in neither torch nor nnU-Net.
"""
__version__ = "0.1.0"


def ext_trainer_dir() -> str:
    """The folder that ``nnUNet_extTrainer`` must point at.

    It holds only a thin shim module (``trainers/ad_trainers.py`` in the source tree) that imports the trainer
    classes from this package; pointing nnU-Net at site-packages or at this package itself breaks imports.
    """
    import importlib.util

    spec = importlib.util.find_spec("ad_nnunet._nnunet_ext")
    return list(spec.submodule_search_locations)[0]


def console_command(name: str) -> str:
    """Path of an installed console command (``nnUNetv2_train``, ``adnnunet_*``): the one next to the running Python
    first, so that ``venv/bin/python ...`` finds its own environment's commands without an activated venv."""
    import os
    import shutil
    import sys

    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which(name) or name
