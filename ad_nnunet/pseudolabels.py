r"""Pseudo-labels a person can check, and which unlabeled scan to label next.

For every unlabeled case of a fold (``fold_F/ad_split.json``, key ``unlabeled``) the trained A&D model gives, on the
preprocessed image, nnU-Net's sliding-window logits of D_psi (:math:`\ell^\psi`, full resolution) and two DDIM
samples of D_xi's :math:`x_0` logits (:math:`\ell^{\xi}`, :math:`\ell^{\xi'}`, different seeds; no mirroring, as
training makes its pseudo-labels). The pseudo-label is training's RS fusion of :math:`\ell^\xi` and :math:`\ell^\psi`
(``ad_nnunet/method/rs_fusion.py``; with the logits of the model the run started from when its trainer sets
``start_model_vote``), exported to the scan's original geometry by nnU-Net's own export path. The streams are the
teacher as trained: for a ``final_interpolation`` run, whose checkpoint saves a mix of the start and the trained
U-Net, the recorded trained U-Net (``ad_state["trained_unet"]``) replaces the mix. Scores,
with :math:`F` the foreground classes, :math:`\hat y` the fused label and
:math:`\mathrm{Dice}_F(a, b) = \frac{1}{|F|}\sum_{c \in F} \frac{2|a_c \cap b_c|}{|a_c| + |b_c|}` (a class absent from
both maps counts 1: they agree on it):

.. math::
    \text{confidence} = \operatorname{mean}_{v:\ \hat y_v > 0} \max_c \mathrm{softmax}(\ell^\psi_v)_c
        \quad (\text{all voxels if } \hat y \text{ has no foreground}),

.. math::
    \text{agreement} = \mathrm{Dice}_F(\arg\max \ell^\xi, \arg\max \ell^\psi), \qquad
    \text{spread} = 1 - \mathrm{Dice}_F(\arg\max \ell^\xi, \arg\max \ell^{\xi'}),

.. math:: \text{disagreement} = (1 - \text{agreement}) + \text{spread} \in [0, 2],

and the foreground volume in ml = foreground voxels of the exported label x original voxel volume (mm^3) / 1000.
Rank 1 is the case with the most disagreement: the one whose label would teach the model most.

Output folder: ``labels/<case><ending>``, ``overlays/<case>.png``, ``cases/<case>.json`` per case (each written to a
temporary file and renamed; a case with all three is skipped on a rerun), ``pseudolabels.csv`` and ``index.html``
(rebuilt from ``cases/`` at the end) and the marker ``pseudolabels.json`` naming the model, the settings and the
labels' format.
"""
from __future__ import annotations

import csv
import hashlib
import html
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote

import numpy as np
import torch
from torch import nn

from ad_nnunet.checkpoints import load_checkpoint, run_folder_parts
from ad_nnunet.data.raw import list_labeled_cases, list_unlabeled_cases, raw_dataset_folder
from ad_nnunet.errors import ADInputError
from ad_nnunet.hashing import sha256_of
from ad_nnunet.publishing import write_atomic, write_json_atomic
from ad_nnunet.method.diffusion import LinearDiffusionSchedule
from ad_nnunet.method.rs_fusion import GaussianSmoothing, rs_pseudo_label
from ad_nnunet.network.ad_net import ADNet, FrozenUNet
from ad_nnunet.training.weight_interpolation import weights_as_trained

MARKER = "pseudolabels.json"
# how a folder's labels were computed; raise it when that changes, so that a rerun never mixes old and new labels
# (2: a final_interpolation run's teacher as trained, and the start model's vote)
MARKER_FORMAT = 2
CSV_NAME = "pseudolabels.csv"
SCORES = ("foreground_ml", "mean_confidence", "agreement", "ddim_spread", "disagreement")
CSV_COLUMNS = ("case",) + SCORES + ("rank",)


# ---- inputs ----------------------------------------------------------------------------------------------------
def check_ad_checkpoint(run_folder: Union[str, os.PathLike], fold: Union[int, str],
                        checkpoint_name: str) -> Tuple[Path, dict, dict]:
    """Validate an A&D run's fold, its checkpoint (both pseudo-label streams, D_psi and D_xi) and its split; returns
    (checkpoint path, the loaded checkpoint, the fold's ``ad_split.json``). Raises ADInputError naming the problem
    and the fix."""
    run = Path(run_folder)
    run_folder_parts(run)
    if not (run / "plans.json").is_file():
        raise ADInputError(f"{run} is not an nnU-Net training output folder. Fix: check -d, -c, -tr and -p, and that "
                           f"the run has been trained.")
    fold_dir = run / f"fold_{fold}"
    if not fold_dir.is_dir():
        found = sorted(p.name for p in run.glob("fold_*") if p.is_dir())
        raise ADInputError(f"fold {fold} does not exist in {run} (found: {', '.join(found) or 'none'}). Fix: pass "
                           f"one of those folds, or train fold {fold} first.")
    checkpoint_file = fold_dir / checkpoint_name
    if not checkpoint_file.is_file():
        found = sorted(p.name for p in fold_dir.glob("checkpoint*.pth"))
        raise ADInputError(f"{checkpoint_file} does not exist (found: {', '.join(found) or 'none'}). Fix: finish "
                           f"training fold {fold}, or pass an existing checkpoint with -chk.")
    checkpoint = load_checkpoint(checkpoint_file)
    weights = checkpoint.get("network_weights", {})
    if not any(k.startswith("decoder_psi.") for k in weights):
        raise ADInputError(f"{checkpoint_file} is not an A&D checkpoint (no D_psi weights). Fix: pass an ADTrainer "
                           f"run (-tr); a plain nnU-Net model has no pseudo-label streams.")
    if not any(k.startswith("decoder_xi.") for k in weights):
        raise ADInputError(f"{checkpoint_file} has no diffusion stream (D_xi), which the pseudo-label fusion needs. "
                           f"Fix: pass a run trained with the diffusion stream (e.g. -tr ADTrainer).")
    split_file = fold_dir / "ad_split.json"
    if not split_file.is_file():
        raise ADInputError(f"{split_file} does not exist, so the cases the run trained on are unknown. Fix: "
                           f"(re)start training of fold {fold} with the A&D trainer, which writes it at training "
                           f"start.")
    return checkpoint_file, checkpoint, json.loads(split_file.read_text(encoding="utf-8"))


def check_run(run_folder: Union[str, os.PathLike], fold: Union[int, str], checkpoint_name: str,
              cases: Optional[Sequence[str]] = None) -> Tuple[Dict[str, List[str]], dict]:
    """Validate an A&D run's fold and checkpoint (``check_ad_checkpoint``); returns (unlabeled case id -> raw image
    files (channel order), restricted to ``cases`` when given; the checkpoint's ``ad_state``). Raises ADInputError
    naming the problem and the fix."""
    run = Path(run_folder)
    checkpoint_file, checkpoint, split = check_ad_checkpoint(run, fold, checkpoint_name)
    split_file = checkpoint_file.parent / "ad_split.json"
    unlabeled = list(split["unlabeled"])
    if cases:
        unknown = sorted(set(cases) - set(unlabeled))
        if unknown:
            raise ADInputError(f"--cases {' '.join(unknown)}: not unlabeled case(s) of fold {fold} ({split_file}). "
                               f"Fix: pass ids from its 'unlabeled' list, e.g. {', '.join(unlabeled[:3])}.")
        wanted = set(cases)
        unlabeled = [c for c in unlabeled if c in wanted]
    if not os.environ.get("nnUNet_raw"):
        raise ADInputError("nnUNet_raw is not set, so the unlabeled images cannot be found. Fix: export nnUNet_raw.")
    raw = raw_dataset_folder(run.parent.name)
    dataset_json = json.loads((run / "dataset.json").read_text(encoding="utf-8"))
    files = list_unlabeled_cases(raw, dataset_json)
    if any(c not in files for c in unlabeled):  # hidden-label cases live in imagesTr
        files = {**list_labeled_cases(raw, dataset_json), **files}
    missing = [c for c in unlabeled if c not in files]
    if missing:
        raise ADInputError(f"no image of case(s) {', '.join(missing)} in {raw}/imagesUnlabeled or imagesTr. Fix: "
                           f"check nnUNet_raw, or restore the images.")
    return {c: files[c] for c in unlabeled}, checkpoint.get("ad_state") or {}


def model_marker(run_folder: Union[str, os.PathLike], fold: Union[int, str], checkpoint_name: str, ddim_steps: int,
                 seed: int) -> dict:
    """What ``pseudolabels.json`` records: the model (with the checkpoint's sha256), the sampling settings and the
    format of the labels (``MARKER_FORMAT``)."""
    run = Path(run_folder)
    trainer, plans, configuration = run_folder_parts(run)
    return {"dataset": run.parent.name, "configuration": configuration, "trainer": trainer, "plans": plans,
            "fold": str(fold), "checkpoint": checkpoint_name,
            "checkpoint_sha256": sha256_of(run / f"fold_{fold}" / checkpoint_name), "ddim_steps": ddim_steps,
            "seed": seed, "format": MARKER_FORMAT}


def claim_output_folder(out_dir: Union[str, os.PathLike], marker: dict) -> Path:
    """Make ``out_dir`` ours: new or empty (the marker is written), or made before for the same marker."""
    out = Path(out_dir)
    marker_file = out / MARKER
    if marker_file.is_file():
        old = json.loads(marker_file.read_text(encoding="utf-8"))
        if old.get("format") != marker.get("format"):
            raise ADInputError(f"{out} holds pseudo-labels made by another version of adnnunet_pseudolabels (format "
                               f"{old.get('format', 1)} there, {marker.get('format')} now), which computed them "
                               f"differently. Fix: delete {out} to make them again, or choose another -o.")
        if old != marker:
            diff = ", ".join(f"{k}: {old.get(k)!r} there, {marker[k]!r} now" for k in marker if old.get(k) != marker[k])
            raise ADInputError(f"{out} holds pseudo-labels of another model or settings ({diff}). Fix: choose another "
                               f"-o, or delete {out} to start over.")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ADInputError(f"{out} is not empty and holds no {MARKER}. Fix: choose a new or empty -o folder.")
    for sub in ("labels", "overlays", "cases"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if not marker_file.is_file():
        write_json_atomic(marker_file, marker)
    return out


# ---- the model's streams as modules nnU-Net's sliding window can run ---------------------------------------------
class _StreamOfADNet(nn.Module):
    """Base of the stream wrappers: nnU-Net's predictor loads each fold's parameters with
    ``network.load_state_dict``, which must reach the ADNet itself."""

    def __init__(self, net: ADNet):
        super().__init__()
        self.net = net

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)


class PsiLogits(_StreamOfADNet):
    """D_psi(E(x)) at full resolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ADNet.full_resolution(self.net.decoder_psi(self.net.encode(x)))


class StartModelLogits(nn.Module):
    """The U-Net the run started from (``start_unet``), as training's start model (``FrozenUNet``)."""

    def __init__(self, net: ADNet, start_unet: Dict[str, torch.Tensor]):
        super().__init__()
        self.start_model = FrozenUNet(net, start_unet)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Ignored: the predictor loads the fold's trained parameters before each prediction; this stream keeps the
        start weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.start_model(x)


class DiffusionLogits(_StreamOfADNet):
    """D_xi's DDIM x0 logits for x, as ``DiffusionStream.sample`` in training; ``generator`` (on the model's device)
    draws x_T, so a reseeded generator repeats the sample."""

    def __init__(self, net: ADNet, schedule: LinearDiffusionSchedule, num_steps: int):
        super().__init__(net)
        self.schedule, self.num_steps, self.generator = schedule, num_steps, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], self.net.num_classes, *x.shape[2:])
        return self.schedule.ddim_sample(lambda x_t, t: self.net(x, mode="denoise", x_t=x_t, t=t), shape,
                                         num_steps=self.num_steps, device=x.device, generator=self.generator)


# ---- scores and pictures ------------------------------------------------------------------------------------------
def foreground_mean_dice(a: torch.Tensor, b: torch.Tensor, foreground: Sequence[int]) -> float:
    r""":math:`\mathrm{Dice}_F(a, b)` of two label maps (module docstring); 1 for a class absent from both."""
    dices = []
    for c in foreground:
        in_a, in_b = a == c, b == c
        total = int(in_a.sum()) + int(in_b.sum())
        dices.append(1.0 if total == 0 else 2.0 * int((in_a & in_b).sum()) / total)
    return float(np.mean(dices)) if dices else 1.0


def _case_seed(seed: int, case: str, stream: str) -> int:
    """A seed per (seed, case, stream): a case's result does not depend on which other cases run, or in what order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{case}:{stream}".encode()).digest()[:8], "little") >> 1


def write_overlay(path: Path, image: np.ndarray, label: np.ndarray, class_names: Dict[int, str], title: str) -> None:
    """Three slices along the first axis at 25/50/75 % of the label's foreground extent (of the whole axis without
    foreground): the image in grey, each class's contour in its own colour, a legend with the class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    occupied = np.flatnonzero((label > 0).reshape(label.shape[0], -1).any(axis=1))
    first, last = (occupied[0], occupied[-1]) if occupied.size else (0, label.shape[0] - 1)
    slices = [int(round(first + q * (last - first))) for q in (0.25, 0.5, 0.75)]
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(sorted(class_names))}
    grey_range = np.percentile(image, [0.5, 99.5])  # one grey scale for the three slices
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    for ax, z in zip(axes, slices):
        ax.imshow(image[z], cmap="gray", vmin=grey_range[0], vmax=grey_range[1])
        for c, colour in colours.items():
            if (label[z] == c).any():
                ax.contour(label[z] == c, levels=[0.5], colors=[colour], linewidths=1.2)
        ax.set_title(f"slice {z}")
        ax.axis("off")
    fig.legend([Line2D([], [], color=colours[c]) for c in sorted(class_names)],
               [class_names[c] for c in sorted(class_names)], loc="lower center", ncol=max(1, len(class_names)))
    fig.suptitle(title)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)


# ---- the run --------------------------------------------------------------------------------------------------------
def make_pseudolabels(run_folder: Union[str, os.PathLike], fold: Union[int, str], out_dir: Union[str, os.PathLike],
                      checkpoint_name: str = "checkpoint_final.pth", cases: Optional[Sequence[str]] = None,
                      ddim_steps: int = 10, seed: int = 0, device: str = "cpu") -> Path:
    """Write pseudo-labels, overlays and scores of the fold's unlabeled cases (module docstring) into ``out_dir``;
    returns the path of ``pseudolabels.csv``. Every input is checked before anything is written."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from tqdm import tqdm

    if ddim_steps < 1:
        raise ADInputError(f"--ddim_steps {ddim_steps}: must be at least 1. Fix: pass e.g. --ddim_steps 10.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ADInputError("--device cuda: no CUDA device is available. Fix: pass --device cpu.")
    case_files, ad_state = check_run(run_folder, fold, checkpoint_name, cases)
    out = claim_output_folder(out_dir, model_marker(run_folder, fold, checkpoint_name, ddim_steps, seed))

    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=device == "cuda",
                                device=torch.device(device), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(run_folder), (fold,), checkpoint_name)
    net = getattr(predictor.network, "_orig_mod", predictor.network)
    plans, config, labels = predictor.plans_manager, predictor.configuration_manager, predictor.label_manager
    # The fusion as ADTrainer.initialize builds it; ADTrainer's defaults are those of these classes, variants
    # change them through `overrides`.
    overrides = getattr(recursive_find_trainer_class_by_name(predictor.trainer_name), "overrides", {})
    smoothing = GaussianSmoothing(labels.num_segmentation_heads, dim=len(config.patch_size), **{
        arg: overrides[name] for name, arg in (("smoothing_kernel_size", "kernel_size"), ("smoothing_sigma", "sigma"))
        if name in overrides})
    fusion_kwargs = {"tau": overrides["gumbel_tau"]} if "gumbel_tau" in overrides else {}
    schedule = LinearDiffusionSchedule(overrides.get("diffusion_timesteps", 1000))
    psi, xi = PsiLogits(net), DiffusionLogits(net, schedule, ddim_steps)
    # the teacher as trained, not the saved mix (module docstring)
    predictor.list_of_parameters = [weights_as_trained(p, ad_state) for p in predictor.list_of_parameters]
    start = None
    if overrides.get("start_model_vote"):
        if ad_state.get("start_unet") is None:
            raise ADInputError(f"{predictor.trainer_name} lets the model it started from vote in the pseudo-label, "
                               f"but {checkpoint_name} of fold {fold} does not record that model. Fix: use a "
                               f"checkpoint of a run started with adnnunet_warm_start.")
        start = StartModelLogits(net, ad_state["start_unet"])
        fusion_kwargs["start_weight"] = overrides["start_model_vote"]
    preprocessor = config.preprocessor_class(verbose=False)
    ending = predictor.dataset_json["file_ending"]
    class_names = {int(v): k for k, v in predictor.dataset_json["labels"].items() if int(v) > 0}

    def fuse(logits_xi: torch.Tensor, logits_psi: torch.Tensor, logits_start: Optional[torch.Tensor],
             generator: torch.Generator) -> torch.Tensor:
        # 2D configurations smooth within slices: the first spatial axis becomes the batch
        batched = (lambda t: t[None]) if smoothing.dim == logits_psi.ndim - 1 else (lambda t: t.movedim(0, 1))
        fused = rs_pseudo_label(batched(logits_xi), batched(logits_psi), smoothing, generator=generator,
                                logits_start=None if logits_start is None else batched(logits_start),
                                **fusion_kwargs)
        return fused[0, 0] if smoothing.dim == logits_psi.ndim - 1 else fused[:, 0]

    for case, files in tqdm(case_files.items(), desc="pseudo-labels", unit="case"):
        label_file, overlay_file, json_file = (out / "labels" / f"{case}{ending}", out / "overlays" / f"{case}.png",
                                               out / "cases" / f"{case}.json")
        if label_file.is_file() and overlay_file.is_file() and json_file.is_file():
            continue
        data, _, properties = preprocessor.run_case(files, None, plans, config, predictor.dataset_json)
        data = torch.from_numpy(data).float()
        predictor.network = psi
        logits_psi = predictor.predict_logits_from_preprocessed_data(data).float()
        samples = []
        for stream in ("ddim", "ddim_second"):
            xi.generator = torch.Generator(device).manual_seed(_case_seed(seed, case, stream))
            predictor.network = xi
            samples.append(predictor.predict_logits_from_preprocessed_data(data).float())
        logits_start = None
        if start is not None:
            predictor.network = start
            logits_start = predictor.predict_logits_from_preprocessed_data(data).float()
        fused = fuse(samples[0], logits_psi, logits_start,
                     torch.Generator().manual_seed(_case_seed(seed, case, "gumbel")))

        onehot = torch.nn.functional.one_hot(fused, labels.num_segmentation_heads).movedim(-1, 0).float()
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            onehot, plans, config, labels, properties)
        write_atomic(label_file, lambda tmp: plans.image_reader_writer_class().write_seg(
            segmentation, str(tmp), properties))

        foreground = labels.foreground_labels
        confidence = torch.softmax(logits_psi, dim=0).amax(dim=0)
        agreement = foreground_mean_dice(samples[0].argmax(0), logits_psi.argmax(0), foreground)
        spread = 1.0 - foreground_mean_dice(samples[0].argmax(0), samples[1].argmax(0), foreground)
        scores = {"case": case,
                  "foreground_ml": float((segmentation > 0).sum() * np.prod(properties["spacing"]) / 1000.0),
                  "mean_confidence": float(confidence[fused > 0].mean() if (fused > 0).any() else confidence.mean()),
                  "agreement": agreement, "ddim_spread": spread, "disagreement": (1.0 - agreement) + spread,
                  "label": f"labels/{label_file.name}", "overlay": f"overlays/{overlay_file.name}",
                  "images": [str(f) for f in files]}
        write_overlay(overlay_file, data[0].numpy(), fused.numpy(), class_names,
                      f"{case}: disagreement {scores['disagreement']:.3f}, confidence {scores['mean_confidence']:.3f}")
        write_json_atomic(json_file, scores)
    return write_reports(out)


# ---- reports ----------------------------------------------------------------------------------------------------
def write_reports(out_dir: Union[str, os.PathLike]) -> Path:
    """Rebuild ``pseudolabels.csv`` and ``index.html`` from ``cases/*.json``: ranked, 1 = most disagreement (ties
    by case id); returns the CSV's path."""
    out = Path(out_dir)
    rows = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "cases").glob("*.json"))
            if not p.name.startswith(".")]  # a killed run's temporary file
    rows.sort(key=lambda r: (-r["disagreement"], r["case"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    csv_file = out / CSV_NAME
    write_atomic(csv_file, write_csv)
    marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    sections = []
    for row in rows:
        cells = "".join(f"<td>{row[k]:.3f}</td>" for k in SCORES)
        sections.append(f'<section><h2>{row["rank"]}. {html.escape(row["case"])}</h2><table><tr>'
                        f'{"".join(f"<th>{k}</th>" for k in SCORES)}</tr><tr>{cells}</tr></table>'
                        f'<a href="{quote(row["label"])}">label</a><br><img src="{quote(row["overlay"])}" '
                        f'alt="{html.escape(row["case"])}"></section>')
    title = html.escape(f"Pseudo-labels: {marker['dataset']} {marker['trainer']} {marker['configuration']} "
                        f"fold {marker['fold']} ({marker['checkpoint']})")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>"
            f"body{{font-family:sans-serif}} td,th{{padding:2px 10px;text-align:right}} img{{max-width:100%}}"
            f"</style></head><body><h1>{title}</h1><p>{len(rows)} cases, most disagreement between the diffusion "
            f"and plain decoders (the scan to label next) first.</p>{''.join(sections)}</body></html>\n")
    write_atomic(out / "index.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return csv_file


def ranked_cases(out_dir: Union[str, os.PathLike], top: Optional[int] = None) -> List[dict]:
    """The rows of ``pseudolabels.csv`` by rank (most disagreement first), the first ``top`` of them."""
    csv_file = Path(out_dir) / CSV_NAME
    if not csv_file.is_file():
        raise ADInputError(f"{csv_file} does not exist. Fix: run adnnunet_pseudolabels -d D -c C -f F -o {out_dir} "
                           f"first.")
    with open(csv_file, newline="", encoding="utf-8") as f:
        rows = [{**r, **{k: float(r[k]) for k in SCORES}, "rank": int(r["rank"])} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: r["rank"])[:top]
