r"""How a confidence threshold splits A&D's pseudo-label, on development cases whose labels training never saw.

For a trained A&D run, patches of the given cases (each centred on a random foreground voxel of the case's label in
the run's preprocessed folder) get training's RS pseudo-label :math:`\hat y` (``rs_fusion.py``: D_xi's DDIM sample
fused with D_psi), once per threshold :math:`k` with the same DDIM and Gumbel draws. With :math:`I_k` the voxels
whose confidence :math:`\kappa < k` (left out of :math:`L_u` by ``pseudo_label_min_confidence = k``), :math:`K_k`
the others and :math:`E = \{v : \hat y_v \ne y_v\}` the pseudo-label's errors against the reference label :math:`y`:

.. math::
    \text{ignored} = \frac{|I_k|}{N}, \quad \text{error rate kept} = \frac{|E \cap K_k|}{|K_k|}, \quad
    \text{error rate ignored} = \frac{|E \cap I_k|}{|I_k|}, \quad
    \text{errors removed} = \frac{|E \cap I_k|}{|E|},

and the foreground-mean Dice of :math:`\hat y` against :math:`y` over :math:`K_k` (mean over patches). A useful
threshold leaves out few voxels, many of them wrong. The teachers scored: the run's trained networks and, for a
warm-started run that records its start (``ad_state["start_unet"]``), the model it started from (every decoder
computing it), i.e. the teacher of the first steps.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ad_nnunet.errors import ADInputError
from ad_nnunet.method.losses import IGNORE_LABEL
from ad_nnunet.method.rs_fusion import label_of_score, rs_score

DEFAULT_THRESHOLDS = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def foreground_patches(dataset, cases: Sequence[str], patch_size: Sequence[int], per_case: int,
                       seed: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``per_case`` (image ``(1, C, *patch)``, label ``(1, 1, *patch)``) pairs per case of an nnU-Net dataset object,
    each centred on a random foreground voxel of the case's label (clipped to the image, zero-padded if smaller)."""
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
        for _ in range(per_case):
            centre = foreground[rng.integers(len(foreground))]
            box = tuple(slice(lo, lo + p) for lo, p in (
                (int(np.clip(c - p // 2, 0, max(0, n - p))), p) for c, p, n in zip(centre, patch_size, data.shape[1:])))
            image, label = data[(slice(None),) + box], seg[(slice(None),) + box]
            pad = [(0, 0)] + [(0, p - n) for p, n in zip(patch_size, image.shape[1:])]
            patches.append((torch.from_numpy(np.pad(image, pad)).float()[None],
                            torch.from_numpy(np.pad(label, pad)).long()[None]))
    return patches


@torch.no_grad()
def threshold_table(trainer, patches: Sequence[Tuple[torch.Tensor, torch.Tensor]],
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, seed: int = 0) -> List[Dict]:
    """One row per threshold (None first: every voxel kept) for the teacher ``trainer.core`` holds now (module
    docstring). The DDIM sample of patch i is drawn under ``torch.manual_seed(seed + i)``, its Gumbel noise from a
    generator seeded alike; the fused score is computed once and every threshold applied to it."""
    core = trainer.core
    core.eval()
    foreground = trainer.label_manager.foreground_labels
    levels = (None,) + tuple(thresholds)
    counts = {k: np.zeros(4) for k in levels}  # ignored, errors kept, errors ignored, kept
    dices: Dict[Optional[float], List[float]] = {k: [] for k in levels}
    for i, (image, label) in enumerate(patches):
        image, label = image.to(trainer.device), label.to(trainer.device)
        torch.manual_seed(seed + i)
        logits_xi = trainer.diffusion.sample(image)
        logits_psi = core(image, mode="psi")
        score = rs_score(logits_xi.float(), logits_psi.float(), trainer.smoothing, tau=trainer.gumbel_tau,
                         generator=torch.Generator(trainer.device).manual_seed(seed + i))
        fused = {k: label_of_score(score, k) for k in levels}
        wrong = fused[None] != label  # the errors of y_hat, whether or not a threshold leaves them out
        for k in levels:
            ignored = fused[k] == IGNORE_LABEL
            counts[k] += [int(ignored.sum()), int((wrong & ~ignored).sum()), int((wrong & ignored).sum()),
                          int((~ignored).sum())]
            per_class = []
            for c in foreground:
                p, g = (fused[None] == c) & ~ignored, (label == c) & ~ignored
                total = int(p.sum()) + int(g.sum())
                per_class.append(1.0 if total == 0 else 2.0 * int((p & g).sum()) / total)
            dices[k].append(float(np.mean(per_class)))
    voxels = counts[None][3]
    errors = counts[None][1]
    return [{"min_confidence": k, "ignored": ig / voxels, "error_rate_kept": ek / max(kept, 1),
             "error_rate_ignored": ei / max(ig, 1), "errors_removed": ei / max(errors, 1),
             "dice_kept": 100 * float(np.mean(dices[k]))}
            for k, (ig, ek, ei, kept) in counts.items()]


def teachers(trainer, checkpoint: dict) -> Dict[str, Dict[str, torch.Tensor]]:
    """The network states to score from an A&D checkpoint: "trained" (the U-Net as trained, when a
    ``final_interpolation`` run recorded it, else the saved weights) and, if recorded, "start"."""
    from ad_nnunet.training.warm_start import warm_start_state_dict

    ad_state = checkpoint.get("ad_state") or {}
    trained = dict(checkpoint["network_weights"])
    trained.update(ad_state.get("trained_unet") or {})
    states = {"trained": trained}
    if ad_state.get("start_unet") is not None:
        states["start"] = warm_start_state_dict(trainer.core, ad_state["start_unet"], "the recorded start")
    return states


def format_table(rows: Sequence[Dict]) -> str:
    lines = ["| min_confidence | ignored | error rate kept | error rate ignored | errors removed | Dice kept (%) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {'none' if r['min_confidence'] is None else r['min_confidence']} | {r['ignored']:.4f} | "
              f"{r['error_rate_kept']:.4f} | {r['error_rate_ignored']:.4f} | {r['errors_removed']:.4f} | "
              f"{r['dice_kept']:.2f} |" for r in rows]
    return "\n".join(lines)
