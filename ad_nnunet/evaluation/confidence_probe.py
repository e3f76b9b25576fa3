r"""How a confidence mask splits A&D's pseudo-label, on development cases whose labels training never saw.

For a trained A&D run, patches of the given cases (each centred on a random foreground voxel of the case's label in
the run's preprocessed folder) get training's RS pseudo-label :math:`\hat y` (``rs_fusion.py``: D_xi's DDIM sample
fused with D_psi), fused once per patch and split at every threshold :math:`k` and every fraction :math:`q`. With
:math:`I_k` the voxels whose confidence :math:`\kappa < k` (left out of :math:`L_u` by
``pseudo_label_min_confidence = k``), or :math:`I_q` the share :math:`q` of each patch's voxels with the lowest
:math:`\kappa` (``pseudo_label_ignore_fraction = q``; a patch stands for a training sample), :math:`K` the others and
:math:`E = \{v : \hat y_v \ne y_v\}` the pseudo-label's errors against the reference label :math:`y`:

.. math::
    \text{ignored} = \frac{|I_k|}{N}, \quad \text{error rate kept} = \frac{|E \cap K_k|}{|K_k|}, \quad
    \text{error rate ignored} = \frac{|E \cap I_k|}{|I_k|}, \quad
    \text{errors removed} = \frac{|E \cap I_k|}{|E|},

(likewise for :math:`I_q`) and the foreground-mean Dice of :math:`\hat y` against :math:`y` over the kept voxels
(mean over patches). A useful mask leaves out few voxels, many of them wrong. The teachers scored: the run's trained
networks and, for a warm-started run that records its start (``ad_state["start_unet"]``), the model it started from
(every decoder computing it), i.e. the teacher of the first steps.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ad_nnunet.checkpoints import run_folder_parts
from ad_nnunet.errors import ADInputError
from ad_nnunet.method.losses import IGNORE_LABEL
from ad_nnunet.method.rs_fusion import label_of_score, rs_score

DEFAULT_THRESHOLDS = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def foreground_patches(dataset, cases: Sequence[str], patch_size: Sequence[int], per_case: int,
                       seed: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``per_case`` (image ``(1, C, *patch)``, label ``(1, 1, *patch)``) pairs per case of an nnU-Net dataset object,
    each centred on a random foreground voxel of the case's label (clipped to the image, zero-padded if smaller). A
    2D ``patch_size`` on 3D cases (a 2d configuration) takes the patch from the slice through that voxel."""
    rng = np.random.default_rng(seed)
    patches = []
    for case in cases:
        try:
            data, seg = (np.asarray(a) for a in dataset.load_case(case)[:2])
        except FileNotFoundError:
            raise ADInputError(f"case {case} has no preprocessed image and label in the run's preprocessed folder. "
                               f"Fix: pass training cases of the dataset whose labels nnU-Net preprocessed (the "
                               f"benchmark's development cases are).") from None
        foreground = np.argwhere(seg[0] > 0)
        if not len(foreground):
            raise ADInputError(f"case {case} has no foreground in its label, so no patch can be centred on it. Fix: "
                               f"leave it out of --cases.")
        sliced = seg.ndim - 1 - len(patch_size)  # leading spatial axes fixed at the centre (1 for 2d on 3D cases)
        for _ in range(per_case):
            centre = foreground[rng.integers(len(foreground))]
            at_centre = (slice(None),) + tuple(int(c) for c in centre[:sliced])
            case_data, case_seg = data[at_centre], seg[at_centre]
            box = tuple(slice(lo, lo + p) for lo, p in (
                (int(np.clip(c - p // 2, 0, max(0, n - p))), p)
                for c, p, n in zip(centre[sliced:], patch_size, case_data.shape[1:])))
            image, label = case_data[(slice(None),) + box], case_seg[(slice(None),) + box]
            pad = [(0, 0)] + [(0, p - n) for p, n in zip(patch_size, image.shape[1:])]
            patches.append((torch.from_numpy(np.pad(image, pad)).float()[None],
                            torch.from_numpy(np.pad(label, pad)).long()[None]))
    return patches


@torch.no_grad()
def mask_table(trainer, patches: Sequence[Tuple[torch.Tensor, torch.Tensor]],
               thresholds: Sequence[float] = DEFAULT_THRESHOLDS, seed: int = 0,
               fractions: Sequence[float] = ()) -> List[Dict]:
    """One row per mask for the teacher ``trainer.core`` holds now (module docstring): no mask first (every voxel
    kept), then each threshold (``min_confidence``), then each fraction (``ignore_fraction``). The DDIM sample of
    patch i is drawn under ``torch.manual_seed(seed + i)``, its Gumbel noise from a generator seeded alike; the fused
    score is computed once and every mask applied to it."""
    core = trainer.core
    core.eval()
    foreground = trainer.label_manager.foreground_labels
    none = (None, None)  # (min_confidence, ignore_fraction)
    levels = [none] + [(k, None) for k in thresholds] + [(None, q) for q in fractions]
    counts = {k: np.zeros(4) for k in levels}  # ignored, errors kept, errors ignored, kept
    dices: Dict[Tuple[Optional[float], Optional[float]], List[float]] = {k: [] for k in levels}
    for i, (image, label) in enumerate(patches):
        image, label = image.to(trainer.device), label.to(trainer.device)
        torch.manual_seed(seed + i)
        logits_xi = trainer.diffusion.sample(image)
        logits_psi = core(image, mode="psi")
        score = rs_score(logits_xi.float(), logits_psi.float(), trainer.smoothing, tau=trainer.gumbel_tau,
                         generator=torch.Generator(trainer.device).manual_seed(seed + i))
        fused = {k: label_of_score(score, *k) for k in levels}
        wrong = fused[none] != label  # the errors of y_hat, whether or not a mask leaves them out
        for k in levels:
            ignored = fused[k] == IGNORE_LABEL
            counts[k] += [int(ignored.sum()), int((wrong & ~ignored).sum()), int((wrong & ignored).sum()),
                          int((~ignored).sum())]
            per_class = []
            for c in foreground:
                p, g = (fused[none] == c) & ~ignored, (label == c) & ~ignored
                total = int(p.sum()) + int(g.sum())
                per_class.append(1.0 if total == 0 else 2.0 * int((p & g).sum()) / total)
            dices[k].append(float(np.mean(per_class)))
    voxels = counts[none][3]
    errors = counts[none][1]
    return [{"min_confidence": k, "ignore_fraction": q, "ignored": ig / voxels, "error_rate_kept": ek / max(kept, 1),
             "error_rate_ignored": ei / max(ig, 1), "errors_removed": ei / max(errors, 1),
             "dice_kept": 100 * float(np.mean(dices[k, q]))}
            for (k, q), (ig, ek, ei, kept) in counts.items()]


def teachers(trainer, checkpoint: dict) -> Dict[str, Dict[str, torch.Tensor]]:
    """The network states to score from an A&D checkpoint: "trained" (the U-Net as trained, when a
    ``final_interpolation`` run recorded it, else the saved weights) and, if recorded, "start"."""
    from ad_nnunet.training.warm_start import warm_start_state_dict
    from ad_nnunet.training.weight_interpolation import weights_as_trained

    ad_state = checkpoint.get("ad_state") or {}
    states = {"trained": weights_as_trained(checkpoint["network_weights"], ad_state)}
    if ad_state.get("start_unet") is not None:
        states["start"] = warm_start_state_dict(trainer.core, ad_state["start_unet"], "the recorded start")
    return states


def _mask_name(row: Dict) -> str:
    if row["min_confidence"] is not None:
        return f"kappa < {row['min_confidence']}"
    return "none" if row["ignore_fraction"] is None else f"lowest {row['ignore_fraction']:g} of each patch"


def format_table(rows: Sequence[Dict]) -> str:
    lines = ["| mask | ignored | error rate kept | error rate ignored | errors removed | Dice kept (%) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {_mask_name(r)} | {r['ignored']:.4f} | "
              f"{r['error_rate_kept']:.4f} | {r['error_rate_ignored']:.4f} | {r['errors_removed']:.4f} | "
              f"{r['dice_kept']:.2f} |" for r in rows]
    return "\n".join(lines)


def probe_run(run_folder: Union[str, os.PathLike], fold: int, cases: Sequence[str],
              checkpoint_name: str = "checkpoint_final.pth", thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
              patches_per_case: int = 2, seed: int = 0,
              fractions: Sequence[float] = ()) -> Tuple[Path, int, Dict[str, List[Dict]]]:
    """Mask tables (``mask_table``: ``thresholds``, then ``fractions``) of every teacher of an A&D run's fold, on
    ``patches_per_case`` foreground patches of each development case; returns (checkpoint path, number of patches,
    teacher -> table). Refuses cases the run trained on: their labels would flatter the pseudo-label."""
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from ad_nnunet.pseudolabels import check_ad_checkpoint

    if any(not 0 <= v <= 1 for v in (*thresholds, *fractions)) or patches_per_case < 1:
        raise ADInputError("--thresholds and --fractions must lie in [0, 1] and --patches_per_case be >= 1. Fix: "
                           "e.g. --thresholds 0.7 0.8 0.9 --fractions 0.05 0.1 --patches_per_case 2.")
    run = Path(run_folder)
    checkpoint_file, checkpoint, split = check_ad_checkpoint(run, fold, checkpoint_name)
    trained_on = sorted(set(cases) & set(split["labeled"]))
    if trained_on:
        raise ADInputError(f"case(s) {', '.join(trained_on)} are labeled training cases of fold {fold}: the run "
                           f"learned their labels. Fix: pass development cases (unlabeled cases whose labels were "
                           f"hidden from training, e.g. the benchmark's --dev_cases).")
    trainer_name, plans_identifier, configuration = run_folder_parts(run)
    trainer = get_trainer_from_args(run.parent.name, configuration, fold, trainer_name, plans_identifier,
                                    device=torch.device("cpu"))
    trainer.initialize()
    folder = trainer.preprocessed_dataset_folder
    patches = foreground_patches(infer_dataset_class(folder)(folder, cases), cases,
                                 trainer.configuration_manager.patch_size, patches_per_case, seed)
    tables = {}
    for name, state in teachers(trainer, checkpoint).items():
        trainer.core.load_state_dict(state)
        tables[name] = mask_table(trainer, patches, thresholds, seed, fractions)
    return checkpoint_file, len(patches), tables
