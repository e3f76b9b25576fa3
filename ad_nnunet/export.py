"""Export an A&D model as a stock nnU-Net model: predicted by plain nnU-Net, without ad-nnunet installed.

A&D predicts with the shared encoder and D_theta, which is exactly nnU-Net's U-Net (same module tree and parameter
names; ``tests/test_ad_net.py``). The export writes, per fold, a checkpoint whose ``trainer_name`` is
``nnUNetTrainer`` and whose ``network_weights`` hold only that U-Net: ``encoder.*``, ``decoder.*`` (D_theta) and the
``decoder.encoder.*`` duplicates that dynamic-network-architectures' ``UNetDecoder`` registers. Around it, nnU-Net's
results layout::

    OUT/<DatasetXXX_Name>/nnUNetTrainer__<plans>__<configuration>/
        dataset.json  plans.json  [dataset_fingerprint.json]  ad_export.json (source run, checkpoint, sha256)
        fold_F/<checkpoint name>

``nnUNetv2_predict -d D -c C -f F`` with ``nnUNet_results=OUT`` (or ``nnUNetv2_predict_from_modelfolder``) then
predicts exactly what ``nnUNetv2_predict -tr ADTrainer`` predicts, and ``nnUNetv2_export_model_to_zip`` /
``nnUNetv2_install_pretrained_model_from_zip`` handle the folder like any nnU-Net model.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch

from ad_nnunet.checkpoints import load_checkpoint, run_folder_parts
from ad_nnunet.errors import ADInputError
from ad_nnunet.hashing import sha256_of
from ad_nnunet.training.weight_interpolation import recorded_unet

STOCK_TRAINER = "nnUNetTrainer"


def unet_state_dict(ad_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The nnU-Net U-Net state dict (encoder + D_theta) inside an ADNet state dict (module docstring)."""
    own = {k: v for k, v in ad_state.items() if k.split(".", 1)[0] in ("encoder", "decoder")}
    return {**own, **{f"decoder.{k}": v for k, v in own.items() if k.startswith("encoder.")}}


def export_stock_model(run_folder: Union[str, os.PathLike], folds: Sequence[Union[int, str]],
                       out_root: Union[str, os.PathLike], checkpoint_name: str = "checkpoint_final.pth",
                       overwrite: bool = False, interpolation: Optional[float] = None) -> Path:
    """Write the stock nnU-Net model folder of the A&D run in ``run_folder`` (a
    ``<trainer>__<plans>__<configuration>`` folder) for ``folds`` under ``out_root``; returns the model folder.

    ``interpolation`` a: instead of the U-Net the checkpoint predicts with, export (1 - a) * start + a * trained of
    a finished ``final_interpolation`` run (training/weight_interpolation.py; 1 = the trained model, 0 = the start).

    Everything is written into a temporary folder next to the target and renamed into place at the end.

    Raises:
        ADInputError: not an A&D run, a fold or checkpoint missing, or a target that exists (without overwrite).
    """
    run = Path(run_folder)
    if not (run / "plans.json").is_file() or not (run / "dataset.json").is_file():
        raise ADInputError(f"{run} is not an nnU-Net training output folder (no plans.json / dataset.json). Fix: "
                           f"check -d, -c, -tr and -p, and that the run has been trained.")
    trainer_name, plans_identifier, configuration = run_folder_parts(run)
    if interpolation is not None and not 0 <= interpolation <= 1:
        raise ADInputError(f"--interpolation {interpolation}: must be in [0, 1] (0 = the start, 1 = the trained "
                           f"model). Fix: pass e.g. --interpolation 0.5.")
    if not folds:
        raise ADInputError("No fold given. Fix: pass -f with one or more folds (e.g. -f 0 1 2 3 4).")
    checkpoints = {}
    for fold in folds:
        path = run / f"fold_{fold}" / checkpoint_name
        if not path.is_file():
            raise ADInputError(f"{path} does not exist. Fix: train fold {fold} first (nnUNetv2_train ... {fold} -tr "
                               f"{trainer_name}), or pick an existing fold / -chk checkpoint.")
        checkpoint = load_checkpoint(path)
        if not any(k.startswith("decoder_psi.") for k in checkpoint.get("network_weights", {})):
            raise ADInputError(f"{path} is not an A&D checkpoint (no D_psi weights). Fix: pass an ADTrainer run; a "
                               f"plain nnU-Net model needs no export.")
        if interpolation is not None:
            checkpoint["network_weights"] = {**checkpoint["network_weights"],
                                             **recorded_unet(checkpoint.get("ad_state"), interpolation, str(path))}
        checkpoints[fold] = (path, checkpoint)

    dataset_name = run.parent.name
    target = Path(out_root) / dataset_name / f"{STOCK_TRAINER}__{plans_identifier}__{configuration}"
    if target.exists() and not overwrite:
        raise ADInputError(f"{target} already exists. Fix: choose another -o, or pass --overwrite to replace it.")
    staging = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        for name in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
            if (run / name).is_file():
                shutil.copy2(run / name, staging / name)
        record = {"source_run": str(run.resolve()), "checkpoint": checkpoint_name, "interpolation": interpolation,
                  "folds": {}}
        for fold, (path, checkpoint) in checkpoints.items():
            (staging / f"fold_{fold}").mkdir()
            torch.save({"network_weights": unet_state_dict(checkpoint["network_weights"]),
                        "trainer_name": STOCK_TRAINER, "init_args": checkpoint["init_args"],
                        "inference_allowed_mirroring_axes": checkpoint.get("inference_allowed_mirroring_axes"),
                        "current_epoch": checkpoint.get("current_epoch")},
                       staging / f"fold_{fold}" / checkpoint_name)
            record["folds"][str(fold)] = {"source": str(path.resolve()), "source_sha256": sha256_of(str(path)),
                                          "source_trainer": checkpoint.get("trainer_name")}
        (staging / "ad_export.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
