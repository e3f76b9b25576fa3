"""`adnnunet_demo`: the whole A&D path on a generated phantom dataset, with nnU-Net's stock commands, on a CPU.

Steps (each printed before it runs, so a user can copy them):
  1. adnnunet_make_phantom                           -> raw dataset with imagesTr/labelsTr, imagesUnlabeled, imagesTs
  2. nnUNetv2_plan_and_preprocess -c 3d_fullres      (stock)
  3. adnnunet_apply_preset --preset tiny             (a CPU-sized configuration "3d_tiny" in the same plans)
  4. adnnunet_preprocess_unlabeled                   (optional: training does it itself when missing or stale)
  5. nnUNetv2_train ... -tr ADTrainer_demo -device cpu   (stock, with nnUNet_extTrainer set)
  6. nnUNetv2_predict ... -tr ADTrainer_demo -device cpu --disable_tta   (stock)
  7. adnnunet_evaluate                               -> Dice / Jaccard / HD95 / ASD in mm against labelsTs
"""
import os
import shlex
import subprocess
import time

from ad_nnunet import console_command, ext_trainer_dir
from ad_nnunet.errors import ADInputError

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID:03d}_ADPhantom"
CONFIGURATION = "3d_tiny"
TRAINER = "ADTrainer_demo"


def _run(cmd: list, env: dict) -> None:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    started = time.time()
    subprocess.run([console_command(cmd[0])] + cmd[1:], env=env, check=True)
    print(f"  ({time.time() - started:.0f} s)", flush=True)


def run_demo(output: str, device: str = "cpu") -> None:
    """Run the steps of the module docstring in the new working folder ``output`` on ``device`` (cpu or cuda)."""
    root = os.path.abspath(output)
    if os.path.exists(os.path.join(root, "nnUNet_raw", DATASET_NAME)):
        raise ADInputError(f"{root} already holds a demo run; remove it or pass -o NEW_FOLDER")
    env = dict(os.environ,
               nnUNet_raw=os.path.join(root, "nnUNet_raw"),
               nnUNet_preprocessed=os.path.join(root, "nnUNet_preprocessed"),
               nnUNet_results=os.path.join(root, "nnUNet_results"),
               nnUNet_extTrainer=ext_trainer_dir(),
               nnUNet_def_n_proc=os.environ.get("nnUNet_def_n_proc", "2"))
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    print(f"Demo folder: {root}")
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        print(f"  export {key}={env[key]}")

    raw = os.path.join(env["nnUNet_raw"], DATASET_NAME)
    predictions = os.path.join(root, "predictions")
    started = time.time()
    _run(["adnnunet_make_phantom", "-o", env["nnUNet_raw"], "-d", str(DATASET_ID)], env)
    _run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "2"], env)
    _run(["adnnunet_apply_preset", "-d", str(DATASET_ID), "--preset", "tiny"], env)
    _run(["adnnunet_preprocess_unlabeled", "-d", str(DATASET_ID), "-c", CONFIGURATION], env)
    _run(["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "0", "-tr", TRAINER, "-device", device], env)
    _run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", str(DATASET_ID),
          "-c", CONFIGURATION, "-tr", TRAINER, "-f", "0", "-device", device, "--disable_tta"], env)
    _run(["adnnunet_evaluate", "-pred", predictions, "-ref", os.path.join(raw, "labelsTs"),
          "-dj", os.path.join(raw, "dataset.json"), "-o", os.path.join(root, "evaluation")], env)
    results = os.path.join(env["nnUNet_results"], DATASET_NAME, f"{TRAINER}__nnUNetPlans__{CONFIGURATION}", "fold_0")
    print(f"\nDemo finished in {time.time() - started:.0f} s.")
    print(f"  trained model, logs, progress plots: {results}")
    print(f"  segmentations of imagesTs:           {predictions}")
    print(f"  evaluation (md/json/csv):            {os.path.join(root, 'evaluation')}.md")
