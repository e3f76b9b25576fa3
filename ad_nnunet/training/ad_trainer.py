"""ADTrainer: Aggregating & Decoupling (Wang & Li, NeurIPS 2023) as an nnU-Net v2 trainer.

One training step, on a labeled batch (x_l, y_l) and an unlabeled batch x_u:

    theta <- m * theta + (1 - m) * (xi + psi) / 2                       (decoupled decoder, m = 0.99)
    L_deno = DiceCE(D_xi(x_l, q_sample(2 onehot(y_l) - 1, t), t), y_l)  (diffusion stream, x0-prediction)
    L_diff = nnU-Net's deep-supervised Dice+CE of D_psi(x_l) against y_l  (the paper's recipe, ADTrainer_paper:
             full-resolution DiceCE_w with w = DRS(D_xi's labeled prediction))
    y_hat  = argmax(GaussSmooth(GumbelSoftmax(clip(DDIM(x_u), -1, 1))) + Softmax(D_psi(x_u)))   (RS, no gradient;
             + w * Softmax(start model(x_u)) with start_model_vote w > 0: the frozen warm start votes too)
    L_u    = DiceCE(D_theta(x_u), y_hat)   (with pseudo_label_min_confidence: over the voxels where RS is confident)
    L      = L_deno + L_diff + mu(epoch) * L_u,   mu(epoch) = mu * exp(-5 (1 - epoch / ramp)^2)
             (+ lambda * L_theta with theta_supervised_weight lambda > 0: nnU-Net's Dice+CE of D_theta(x_l) against
             y_l at full resolution; the paper's D_theta never sees a label, lambda = 0)

Only D_theta (with the shared encoder) is used for validation and prediction: ``network(x)`` is D_theta(E(x)).
With ``final_interpolation`` a (ADTrainer_finetune), the final model is (1 - a) * warm start + a * trained for those
two (weight_interpolation.py).
Everything else is nnU-Net's: plans, preprocessing, patch sampling, optimizer, poly LR, validation, export.

Each part a recipe or ablation changes is one hook, overridden in a few lines (variants.py):

    diffusion_stream_class    D_xi's part of the step (diffusion_stream.py); ADTrainer_noDiffusion: NoDiffusionStream
    pseudo_label              y_hat from D_xi's and D_psi's logits (and the batch): RS; ADTrainer_noRS: argmax of D_xi's
    forward_and_pseudo_label  the train forward and y_hat: D_theta learns y_hat on the unlabeled batch itself;
                              ADTrainer_strongView (and ADTrainer_finetune): on a strong view of it
    class_weights             per-class weights of D_psi's loss: none; ADTrainer_paper: DRS
    labeled_augmentation      labeled batches: nnU-Net's augmentation; ADTrainer_paper: SVDA
    svda_augmentation         SVDA over nnU-Net's pipeline (unlabeled batches); ADTrainer_noSVDA: nnU-Net's pipeline

Settings (schedule, mu, DDIM steps, ...) are attributes set in ``__init__``; a variant changes them with
``make_variant`` (variants.py), which stores them in ``overrides``.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict
from functools import partial
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join, save_json
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch._dynamo import OptimizedModule

from ad_nnunet.checkpoints import load_checkpoint
from ad_nnunet.data.loaders import build_unlabeled_loader, check_label_values
from ad_nnunet.data.raw import list_unlabeled_cases, raw_dataset_folder
from ad_nnunet.data.settings import default_fold, load_fold
from ad_nnunet.data.unlabeled_preprocessing import preprocess_unlabeled, unlabeled_folder
from ad_nnunet.data.worker_exit import exiting_with_parent
from ad_nnunet.errors import ADInputError, report_input_errors_plainly
from ad_nnunet.method.decoupling import ema_blend_
from ad_nnunet.method.losses import IGNORE_LABEL, dice_ce_loss, sigmoid_rampup
from ad_nnunet.method.rs_fusion import GaussianSmoothing, rs_pseudo_label
from ad_nnunet.method.svda import svda_training_transforms
from ad_nnunet.network.ad_net import ADNet, FrozenUNet, build_ad_network
from ad_nnunet.training.diffusion_stream import DiffusionStream
from ad_nnunet.training.progress import AD_LOG_KEYS, add_missing_ad_log_keys, plot_ad_progress
from ad_nnunet.training.rng import rng_state, seed_everything, set_rng_state
from ad_nnunet.training.weight_interpolation import interpolate_towards, unet_state

CHECKPOINT_FORMAT = 1


def unwrapped_network(trainer: nnUNetTrainer) -> torch.nn.Module:
    """``trainer.network`` without nnU-Net's DDP and ``torch.compile`` wrappers (as its ``load_checkpoint`` does)."""
    net = trainer.network.module if trainer.is_ddp else trainer.network
    return net._orig_mod if isinstance(net, OptimizedModule) else net


class ADTrainer(nnUNetTrainer):
    # A class attribute, not an instance one: nnU-Net's predictor builds the network through the class without
    # instantiating the trainer, and the network (so the checkpoint's keys) is the stream's.
    diffusion_stream_class = DiffusionStream
    # D_psi is trained as nnU-Net trains its U-Net, deep supervision included. A class attribute as well: which
    # parameters are trainable (and so what DDP expects gradients for) depends on it.
    psi_deep_supervision = True
    # A variant's settings, applied at the end of the settings in __init__ (declared with make_variant, variants.py).
    overrides: Dict[str, object] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise ADInputError(
                f"{type(self).__name__} supports plain label maps only; dataset {self.plans_manager.dataset_name} "
                f"uses {'regions' if self.label_manager.has_regions else 'an ignore label'}. Remove it from "
                f"dataset.json (labels) or train nnUNetTrainer.")
        # Schedule. One A&D step costs about 6.5 supervised steps (10 DDIM passes + 3 forward/backward passes),
        # so 250 x 150 A&D steps cost about what nnU-Net's default 1000 x 250 supervised steps cost.
        self.num_epochs = 250
        self.num_iterations_per_epoch = 150
        self.num_val_iterations_per_epoch = 25
        self.save_every = 5
        # nnU-Net's own flag stays off: it governs validation and prediction, which use D_theta at full resolution.
        # D_psi's deep supervision (psi_deep_supervision) is set up by this class, with nnU-Net's scales and loss.
        self.enable_deep_supervision = False
        # A&D hyperparameters (docs/method.md). Where a default departs from the paper, ADTrainer_paper restores it.
        self.ema_momentum = 0.99            # theta <- m theta + (1 - m) (xi + psi) / 2
        self.unlabeled_loss_weight = 2.0    # mu
        self.mu_rampup_epochs: Optional[float] = None  # None: the whole run (official default)
        self.diffusion_timesteps = 1000
        self.ddim_steps = 10
        self.svda_num_ops = 3
        self.svda_p_op = 0.7
        self.gumbel_tau = 1.0
        self.smoothing_kernel_size = 3
        self.smoothing_sigma = 1.0
        self.seed = 12345
        # a in [0, 1]: the saved final model is (1 - a) * start + a * trained (weight_interpolation.py); None: the
        # trained model. Needs a warm start (adnnunet_warm_start), which records the start.
        self.final_interpolation: Optional[float] = None
        # kappa in [0, 1]: pseudo-label voxels whose RS confidence is below it are left out of L_u (rs_fusion.py);
        # None: every voxel, as in the paper
        self.pseudo_label_min_confidence: Optional[float] = None
        # q in [0, 1]: in each unlabeled sample, the share q of its voxels with the lowest RS confidence is left out
        # of L_u, whatever the class count (rs_fusion.py); None: none
        self.pseudo_label_ignore_fraction: Optional[float] = None
        # lambda >= 0: D_theta also learns the labeled batch (L_theta, nnU-Net's Dice+CE at full resolution) with
        # this weight; 0: only through the EMA and the pseudo-labels, as in the paper
        self.theta_supervised_weight = 0.0
        # w >= 0: the model a warm-started run began from (frozen) votes in RS with this weight, next to D_xi and
        # D_psi (rs_fusion.py); 0: the two streams alone, as in the paper
        self.start_model_vote = 0.0
        for name, value in self.overrides.items():  # checked by make_variant, each on its own
            setattr(self, name, value)
        if self.ddim_steps > self.diffusion_timesteps:  # DDIM visits a subset of the training timesteps
            raise ADInputError(
                f"{type(self).__name__}: ddim_steps={self.ddim_steps} is more than diffusion_timesteps="
                f"{self.diffusion_timesteps}. Fix: set ddim_steps <= diffusion_timesteps (A&D samples 10 of 1000).")

        self.dataloader_unlabeled = None
        self.fold_split = None
        self.skipped_steps = 0
        # the warm start's U-Net, for final_interpolation and start_model_vote (see records_start)
        self.start_unet: Optional[Dict[str, torch.Tensor]] = None
        self.start_model: Optional[FrozenUNet] = None  # the U-Net at start_unet, built on first use
        # the U-Net as trained, before final_interpolation: with start_unet, any other a can be exported later
        self.trained_unet: Optional[Dict[str, torch.Tensor]] = None
        for key in AD_LOG_KEYS:
            self.logger.local_logger.my_fantastic_logging[key] = []
        seed_everything(self.seed + self.local_rank)
        # nnUNetv2_train's entry point is nnU-Net's: bad input raised during training setup still reads as a message
        report_input_errors_plainly(os.path.basename(sys.argv[0]) or "nnUNetv2_train")

    # ---- network ---------------------------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> ADNet:
        return build_ad_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                psi_deep_supervision=cls.psi_deep_supervision,
                                network_class=cls.diffusion_stream_class.network_class)

    def set_deep_supervision_enabled(self, enabled: bool):
        """No-op: D_theta and D_xi never use deep supervision, D_psi always does when ``psi_deep_supervision``."""

    @contextlib.contextmanager
    def _nnunet_deep_supervision_for_psi(self):
        """nnU-Net computes deep-supervision scales and builds its deep-supervised loss only while its own flag is
        on; D_psi needs both while the flag stays off for D_theta (validation, prediction)."""
        saved = self.enable_deep_supervision
        self.enable_deep_supervision = self.psi_deep_supervision
        try:
            yield
        finally:
            self.enable_deep_supervision = saved

    def _do_i_compile(self):
        # torch.compile recompiles ADNet.forward per mode; opt in with nnUNet_compile=1 only.
        return os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t") and super()._do_i_compile()

    @property
    def core(self) -> ADNet:
        """The ADNet behind the DDP / torch.compile wrappers (for state and EMA, never for forward passes)."""
        return unwrapped_network(self)

    def initialize(self):
        super().initialize()
        with self._nnunet_deep_supervision_for_psi():
            self.supervised_loss = self._build_loss()  # nnU-Net's Dice+CE (deep-supervised with psi_deep_supervision)
        self.diffusion = self.diffusion_stream_class(self)
        num_classes = self.label_manager.num_segmentation_heads
        self.smoothing = GaussianSmoothing(num_classes, self.smoothing_kernel_size, self.smoothing_sigma,
                                           dim=len(self.configuration_manager.patch_size)).to(self.device)

    # ---- data ------------------------------------------------------------------------------------------------
    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        """Labeled batches: nnU-Net's pipeline with D_psi's deep-supervision targets, through labeled_augmentation."""
        with self._nnunet_deep_supervision_for_psi():
            deep_supervision_scales = self._get_deep_supervision_scales()
        base = super().get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                               do_dummy_2d_data_aug, use_mask_for_norm, is_cascaded,
                                               foreground_labels, regions, ignore_label)
        return exiting_with_parent(self.labeled_augmentation(base, patch_size))

    def labeled_augmentation(self, transforms, patch_size):
        """Hook: the labeled batches' pipeline made from nnU-Net's ``transforms``: nnU-Net's own."""
        return transforms

    def svda_augmentation(self, transforms, patch_size):
        """Hook: SVDA in place of nnU-Net's spatial and intensity transforms of ``transforms`` (svda.py)."""
        return svda_training_transforms(transforms, patch_size, self.svda_num_ops, self.svda_p_op)

    def get_validation_transforms(self, deep_supervision_scales, is_cascaded=False, foreground_labels=None,
                                  regions=None, ignore_label=None):
        return exiting_with_parent(super().get_validation_transforms(deep_supervision_scales, is_cascaded,
                                                                     foreground_labels, regions, ignore_label))

    def get_unlabeled_transforms(self, patch_size, rotation_for_DA, mirror_axes, do_dummy_2d_data_aug):
        """Unlabeled batches: svda_augmentation of nnU-Net's pipeline."""
        base = nnUNetTrainer.get_training_transforms(
            patch_size, rotation_for_DA, None, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=self.label_manager.foreground_labels)
        return exiting_with_parent(self.svda_augmentation(base, patch_size))

    def do_split(self):
        fold_split = None if self.fold == "all" else load_fold(self.plans_manager.dataset_name, self.fold)
        if fold_split is None:
            train_ids, val_ids = super().do_split()
            fold_split = default_fold(train_ids, val_ids, self._raw_unlabeled_ids())
        self.fold_split = fold_split
        self.print_to_log_file(f"A&D split ({fold_split.source}): {len(fold_split.labeled)} labeled, "
                               f"{len(fold_split.unlabeled)} unlabeled, {len(fold_split.val)} validation cases")
        return list(fold_split.labeled), list(fold_split.val)

    def _raw_unlabeled_ids(self) -> List[str]:
        return sorted(list_unlabeled_cases(raw_dataset_folder(self.plans_manager.dataset_name), self.dataset_json))

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()  # runs do_split, so fold_split is set
        # every check of the data runs here, before any data-loading worker starts: a bad case stops training at once
        check_label_values(dataset_tr, self.label_manager)
        self._prepare_unlabeled_data()
        return dataset_tr, dataset_val

    def _prepare_unlabeled_data(self):
        if not self.fold_split.unlabeled:
            raise ADInputError(
                f"fold {self.fold} of {self.plans_manager.dataset_name} has no unlabeled cases. Fix: put unlabeled "
                f"images in imagesUnlabeled/ or hide labels of imagesTr cases with adnnunet_make_settings; for "
                f"fully supervised training use -tr nnUNetTrainer.")
        dataset = self.plans_manager.dataset_name
        if self.local_rank == 0:
            if os.path.isfile(join(raw_dataset_folder(dataset), "dataset.json")):
                preprocess_unlabeled(dataset, self.configuration_name, self.plans_manager.plans_name)
            else:  # e.g. a GPU box that received preprocessed data only; the loader still checks every case exists
                self.print_to_log_file(f"WARNING: raw dataset {dataset} not found under nnUNet_raw; using its "
                                       f"unlabeled preprocessed data as it is (not checked for staleness)")
        if self.is_ddp:
            dist.barrier()

    def get_dataloaders(self):
        dataloader_train, dataloader_val = super().get_dataloaders()
        self.dataloader_unlabeled = self._unlabeled_augmenter()
        return dataloader_train, dataloader_val

    def _unlabeled_augmenter(self):
        dataset = self.plans_manager.dataset_name
        rotation_for_DA, do_dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_unlabeled_transforms(self.configuration_manager.patch_size, rotation_for_DA,
                                                   mirror_axes, do_dummy_2d)
        folder = unlabeled_folder(dataset, self.configuration_name, self.plans_manager.plans_name)
        loader = build_unlabeled_loader(
            folder, self.fold_split.unlabeled, self.batch_size, initial_patch_size,
            self.configuration_manager.patch_size, self.label_manager, transforms)
        num_processes = get_allowed_n_proc_DA()
        if num_processes == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, num_processes, max(6, num_processes // 2), None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    @property
    def records_start(self) -> bool:
        """Whether the run needs the model it started from (``start_unet``, recorded by adnnunet_warm_start)."""
        return self.final_interpolation is not None or self.start_model_vote > 0

    def on_train_start(self):
        if self.records_start and self.start_unet is None:
            uses = ([f"final_interpolation={self.final_interpolation}"] if self.final_interpolation is not None
                    else []) + ([f"start_model_vote={self.start_model_vote}"] if self.start_model_vote > 0 else [])
            raise ADInputError(
                f"{type(self).__name__} uses the model it started from ({', '.join(uses)}), but "
                f"{self.output_folder} holds no warm start. Fix: start the run with adnnunet_warm_start -i "
                f"<nnUNetTrainer checkpoint_final.pth>, then nnUNetv2_train ... --c.")
        super().on_train_start()
        if self.local_rank == 0:
            save_json({**asdict(self.fold_split), "fold": self.fold}, join(self.output_folder, "ad_split.json"),
                      sort_keys=False)

    def on_train_end(self):
        if self.final_interpolation is not None:  # before nnU-Net saves checkpoint_final.pth and validates
            self.trained_unet = unet_state(self.core.state_dict())
            interpolate_towards(self.core, self.start_unet, self.final_interpolation)
            self.print_to_log_file(f"final model: {1 - self.final_interpolation:g} x start + "
                                   f"{self.final_interpolation:g} x trained (encoder and D_theta)")
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()

    # ---- one A&D step ----------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        image = batch["data"].to(self.device, non_blocking=True)
        # one target per deep-supervision output of D_psi, full resolution first (a single one without)
        target = batch["target"] if isinstance(batch["target"], list) else [batch["target"]]
        target = [t.to(self.device, non_blocking=True).long() for t in target]
        unlabeled = next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)

        self.update_decoupled_decoder()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            terms = self.loss_terms(image, target, unlabeled)
            mu = self.unlabeled_weight()
            loss = (terms["L_deno"] + terms["L_diff"] + mu * terms["L_u"]
                    + self.theta_supervised_weight * terms["L_theta"])
        stepped = self.backward_and_step(loss)
        return {"loss": loss.detach().cpu().numpy() if stepped else np.array(np.nan),
                "skipped": float(not stepped), "mu": mu,
                **{k: v.detach().cpu().numpy() for k, v in terms.items() if torch.is_tensor(v)},
                **{k: terms[k] for k in ("pseudo_fg_fraction", "pseudo_ignored_fraction")}}

    def loss_terms(self, image: torch.Tensor, target: List[torch.Tensor], unlabeled: torch.Tensor) -> Dict:
        """L_deno, L_diff and L_u for one labeled batch (targets per deep-supervision scale, full resolution first)
        and one unlabeled batch (plus diagnostics)."""
        labels = target[0]
        logits_xi_u = self.diffusion.sample(unlabeled)  # before the noisy labels: the seeded random draws' order
        out, pseudo = self.forward_and_pseudo_label(image, self.diffusion.noisy_labels(labels), unlabeled, logits_xi_u)
        weights = self.class_weights(self.diffusion.labeled_prediction(out), labels)
        full_resolution_loss = self.supervised_loss.loss if self.psi_deep_supervision else self.supervised_loss
        return {"L_deno": self.diffusion.loss(out, labels),
                "L_diff": self.supervised_loss_of_psi(out["psi"], target, weights),
                "L_u": dice_ce_loss(out["theta_u"], pseudo),
                "L_theta": (full_resolution_loss(out["theta"], labels) if self.theta_on_labeled
                            else torch.zeros((), device=labels.device)),
                "pseudo_fg_fraction": float((pseudo > 0).float().mean()),
                "pseudo_ignored_fraction": float((pseudo == IGNORE_LABEL).float().mean())}

    def forward_and_pseudo_label(self, image: torch.Tensor, noisy_labels: Dict[str, torch.Tensor],
                                 unlabeled: torch.Tensor, logits_xi_u: Optional[torch.Tensor]
                                 ) -> Tuple[Dict, torch.Tensor]:
        """Hook: the step's train forward (ADNet.forward) and y_hat. D_theta learns y_hat on the unlabeled batch the
        teacher saw; D_psi's teacher logits come from the same encoder pass."""
        out = self.network(image, mode="train", **noisy_labels, x_unlabeled=unlabeled,
                           theta_on_labeled=self.theta_on_labeled)
        return out, self.pseudo_label(logits_xi_u, out["psi_u"], unlabeled)

    @property
    def theta_on_labeled(self) -> bool:
        """Whether the train forward also runs D_theta on the labeled batch: only L_theta needs it."""
        return self.theta_supervised_weight > 0

    def class_weights(self, logits: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        """Hook: per-class weights of D_psi's loss from the labeled prediction ``logits`` (the diffusion stream's
        labeled_prediction); None: unweighted."""
        return None

    def supervised_loss_of_psi(self, output, target: List[torch.Tensor], class_weights: Optional[torch.Tensor]):
        """nnU-Net's loss of D_psi; with DRS weights, the class-weighted Dice+CE at every deep-supervision scale
        (nnU-Net's scale weights), since nnU-Net's Dice+CE has no per-class weights."""
        outputs = output if self.psi_deep_supervision else [output]
        if class_weights is None:
            return self.supervised_loss(output, target if self.psi_deep_supervision else target[0])
        scale_weights = self.supervised_loss.weight_factors if self.psi_deep_supervision else (1.0,)
        return DeepSupervisionWrapper(partial(dice_ce_loss, class_weights=class_weights), scale_weights)(
            outputs, target)

    @torch.no_grad()
    def update_decoupled_decoder(self):
        ema_blend_(self.core.decoder, self.core.ema_sources, self.ema_momentum)

    @torch.no_grad()
    def pseudo_label(self, logits_xi: Optional[torch.Tensor], logits_psi: torch.Tensor,
                     unlabeled: torch.Tensor) -> torch.Tensor:
        """Hook: y_hat from D_xi's DDIM logits and D_psi's logits on the unlabeled batch ``unlabeled``: RS
        (rs_fusion.py), with the start model's vote when ``start_model_vote`` > 0."""
        return rs_pseudo_label(logits_xi.float(), logits_psi.float(), self.smoothing, tau=self.gumbel_tau,
                               min_confidence=self.pseudo_label_min_confidence,
                               ignore_fraction=self.pseudo_label_ignore_fraction,
                               logits_start=self.start_model_logits(unlabeled), start_weight=self.start_model_vote)

    @torch.no_grad()
    def start_model_logits(self, unlabeled: torch.Tensor) -> Optional[torch.Tensor]:
        """The logits of the model the run started from on ``unlabeled`` (None when ``start_model_vote`` is 0): a
        frozen copy of E and D_theta with the recorded start weights, predicting as nnU-Net does."""
        if not self.start_model_vote:
            return None
        if self.start_model is None:
            self.start_model = FrozenUNet(self.core, self.start_unet)
        return self.start_model(unlabeled)

    def unlabeled_weight(self) -> float:
        ramp = self.num_epochs if self.mu_rampup_epochs is None else self.mu_rampup_epochs
        return self.unlabeled_loss_weight * sigmoid_rampup(self.current_epoch, ramp)

    def backward_and_step(self, loss: torch.Tensor) -> bool:
        """Backward + clipped optimizer step. A non-finite loss skips the step (reported), training goes on."""
        if not torch.isfinite(loss):
            self.skipped_steps += 1
            self.print_to_log_file(f"WARNING: non-finite loss ({loss.item()}) in epoch {self.current_epoch}; "
                                   f"step skipped ({self.skipped_steps} so far)")
            return False
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return True

    # ---- logging ---------------------------------------------------------------------------------------------
    def on_train_epoch_end(self, train_outputs: List[dict]):
        finite = [o for o in train_outputs if not o["skipped"]] or train_outputs
        super().on_train_epoch_end([{"loss": o["loss"]} for o in finite])
        summary = {key: float(np.nanmean([float(o[key]) for o in finite]))
                   for key in ("L_deno", "L_diff", "L_u", "L_theta", "mu", "pseudo_fg_fraction",
                               "pseudo_ignored_fraction")}
        summary["skipped_steps"] = float(sum(o["skipped"] for o in train_outputs))
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, summary)
            summary = {k: float(np.mean([g[k] for g in gathered])) for k in summary}
        summary["class_weights"] = [float(w) for w in self.core.difficulty.weights.cpu()]
        for key in AD_LOG_KEYS:
            self.logger.log(key, summary[key], self.current_epoch)
        self.print_to_log_file("A&D: " + ", ".join(
            f"{k} {np.round(v, 4) if not isinstance(v, list) else np.round(v, 3).tolist()}"
            for k, v in summary.items()))
        # kappa rarely reaches 0.8 with 4 classes (docs/method.md)
        if self.pseudo_label_min_confidence is not None and summary["pseudo_ignored_fraction"] > 0.5:
            self.print_to_log_file(
                f"warning: pseudo_label_min_confidence {self.pseudo_label_min_confidence} left "
                f"{summary['pseudo_ignored_fraction']:.0%} of the unlabeled voxels out of L_u this epoch. Fix: choose "
                f"it on development cases with adnnunet_confidence_probe (the more classes, the lower).")

    def on_epoch_end(self):
        if self.local_rank == 0:
            plot_ad_progress(self.logger.local_logger.my_fantastic_logging, self.output_folder)
        super().on_epoch_end()

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the RNG states, written atomically (a kill mid-write keeps the old file)."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        tmp = filename + ".tmp"
        super().save_checkpoint(tmp)
        checkpoint = load_checkpoint(tmp)
        checkpoint["ad_state"] = {"format": CHECKPOINT_FORMAT, "rng": rng_state(),
                                  "skipped_steps": self.skipped_steps, "start_unet": self.start_unet,
                                  "trained_unet": self.trained_unet}
        torch.save(checkpoint, tmp)
        os.replace(tmp, filename)

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError("ADTrainer.load_checkpoint takes a checkpoint path (nnU-Net 2.8.1 cannot load dicts)")
        super().load_checkpoint(filename_or_checkpoint)
        added = add_missing_ad_log_keys(self.logger.local_logger.my_fantastic_logging)
        if added:
            self.print_to_log_file(f"the checkpoint's log predates {', '.join(added)}: its epochs so far read NaN there")
        ad_state = load_checkpoint(filename_or_checkpoint).get("ad_state")
        if ad_state is not None:
            self.skipped_steps = ad_state["skipped_steps"]
            self.start_unet = ad_state.get("start_unet")
            self.trained_unet = ad_state.get("trained_unet")
            set_rng_state(ad_state["rng"])
