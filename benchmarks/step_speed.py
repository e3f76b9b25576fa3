"""Seconds per training step of ADTrainer vs nnUNetTrainer, and prediction time of both, in one run.

Both trainers are built by nnU-Net's own lookup on the same plans, dataset, batch size and device. A step is timed
from the moment its batch is in memory until the optimizer has stepped (CUDA synchronised), so data loading is
excluded for both. Prediction times nnU-Net's sliding-window predictor on the same preprocessed case with each
trained network (random weights are enough: the cost does not depend on them).

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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
    from ad_nnunet import ext_trainer_dir

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

    os.environ.setdefault("nnUNet_extTrainer", ext_trainer_dir())
    from nnunetv2.run.run_training import get_trainer_from_args

    device = torch.device(args.device)
    result = {"dataset": str(args.d), "configuration": args.c, "device": str(device), "steps": args.steps,
              "ddim_steps": args.ddim_steps, "tta": args.tta, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()}
    case = None
    for name in ("nnUNetTrainer", "ADTrainer"):
        torch.manual_seed(0)
        trainer = get_trainer_from_args(str(args.d), args.c, 0, name, args.p, device=device)
        if name == "ADTrainer":
            trainer.ddim_steps = args.ddim_steps
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
