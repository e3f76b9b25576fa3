"""Seconds per training step of ADTrainer vs nnUNetTrainer, and prediction time of both, in one run.

Both trainers are variants made with ``make_variant`` (ad_nnunet/training/variants.py), as every configured trainer
is: nnUNetTrainer as it is, ADTrainer with ``--ddim_steps``, under names of their own so that a timing run never
overwrites a trained model's checkpoints in nnUNet_results. Both use the same plans, dataset, batch size and device.
A step is timed from the moment its batch is in memory until the optimizer has stepped (CUDA synchronised), so data
loading is excluded for both. Prediction times nnU-Net's sliding-window predictor on the same preprocessed case with
each trained network (random weights are enough: the cost does not depend on them).

    python benchmarks/step_speed.py -d 990 -c 3d_tiny --steps 10 -device cpu [--ddim_steps 10] [-o result.json]

Expected step ratio from the passes A&D needs, in units of one supervised forward+backward (~3 forward passes):
10 DDIM forwards (~10/3) + three forward/backward passes (labeled D_xi, labeled D_psi, unlabeled D_theta) + one
decoder-only forward for D_psi on the unlabeled skips (~1/6)  ->  about 6.5 at 10 DDIM steps.
"""
import argparse
import json
import os
import platform
import subprocess
import time

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from ad_nnunet.training.ad_trainer import ADTrainer
from ad_nnunet.training.variants import make_variant


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_trainer(trainer_class: type, dataset: str, configuration: str, plans_identifier: str,
                  device: torch.device) -> nnUNetTrainer:
    """``trainer_class`` on fold 0 of a planned and preprocessed dataset, as nnU-Net's ``get_trainer_from_args``
    builds the class it looks up by name (a class made here is in no folder that lookup searches)."""
    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))
    plans = {**load_json(join(folder, plans_identifier + ".json")), "continue_training": False}
    return trainer_class(plans=plans, configuration=configuration, fold=0,
                         dataset_json=load_json(join(folder, "dataset.json")), device=device)


def time_training_steps(trainer, steps: int, warmup: int) -> list:
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    times = []
    for i in range(warmup + steps):
        batch = next(trainer.dataloader_train)
        _sync(trainer.device)
        start = time.perf_counter()
        trainer.train_step(batch)
        _sync(trainer.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    trainer.on_train_end()
    return times


def time_prediction(trainer, case: np.ndarray, repeats: int, tta: bool) -> float:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=trainer.device.type == "cuda",
                                device=trainer.device, verbose=False, verbose_preprocessing=False,
                                allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    data = torch.from_numpy(case)
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        _sync(trainer.device)
        start = time.perf_counter()
        predictor.predict_sliding_window_return_logits(data)
        _sync(trainer.device)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="dataset id or name (planned and preprocessed)")
    parser.add_argument("-c", default="3d_fullres", help="configuration")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ddim_steps", type=int, default=10)
    parser.add_argument("--predict_repeats", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation during prediction")
    parser.add_argument("-device", default="cuda")
    parser.add_argument("-o", default=None, help="write the result JSON here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    result = {"dataset": str(args.d), "configuration": args.c, "device": str(device), "steps": args.steps,
              "ddim_steps": args.ddim_steps, "tta": args.tta, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()}
    trainer_classes = {"nnUNetTrainer": make_variant("nnUNetTrainer_stepSpeed", nnUNetTrainer),
                       "ADTrainer": make_variant("ADTrainer_stepSpeed", ADTrainer, ddim_steps=args.ddim_steps)}
    case = None
    for name, trainer_class in trainer_classes.items():
        torch.manual_seed(0)
        trainer = build_trainer(trainer_class, str(args.d), args.c, args.p, device)
        times = time_training_steps(trainer, args.steps, args.warmup)
        if case is None:
            dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder)
            case = np.asarray(dataset.load_case(sorted(dataset.identifiers)[0])[0], dtype=np.float32)
            result["predict_case_shape"] = list(case.shape)
        result[name] = {"step_s_median": float(np.median(times)), "step_s_mean": float(np.mean(times)),
                        "predict_s": time_prediction(trainer, case, args.predict_repeats, args.tta),
                        "batch_size": trainer.batch_size}
        print(f"{name}: {result[name]}", flush=True)
    result["step_ratio"] = result["ADTrainer"]["step_s_median"] / result["nnUNetTrainer"]["step_s_median"]
    result["predict_ratio"] = result["ADTrainer"]["predict_s"] / result["nnUNetTrainer"]["predict_s"]
    print(json.dumps(result, indent=2))
    if args.o:
        with open(args.o, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
