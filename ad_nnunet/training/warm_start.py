"""Warm start: begin A&D from a trained nnU-Net model (labeled-only ``nnUNetTrainer``) instead of from scratch.

Many users already have a labeled-only nnU-Net model; A&D then only has to add what the unlabeled scans give.
The nnU-Net U-Net's weights are mapped onto every part of ADNet so that, before the first A&D step, every decoder
computes exactly that model:

=========================  ===================================================================================
ADNet                      initialised from
=========================  ===================================================================================
``encoder``                the U-Net's encoder
``decoder`` (D_theta),     the U-Net's decoder, deep-supervision heads included (each decoder its own copy)
``decoder_psi``,
``decoder_xi``
``stem_diffusion``         the encoder's first block; its first convolution's weights for the image channels
                           are the U-Net's, those for the ``num_classes`` noisy-label channels are 0
``temb_encoder``,          0 (weights and biases): the timestep adds nothing yet; their gradients are not 0,
``temb_decoder_xi``        so the diffusion stream learns to use x_t and t from the first step on
``time_embedding``,        as freshly initialised
``difficulty``
=========================  ===================================================================================

so that D_xi(x, x_t, t) = D_psi(x) = D_theta(x) = U-Net(x) for every x_t and t at step 0 (``tests/test_warm_start.py``).

Why not ``nnUNetv2_train ... -pretrained_weights``: nnU-Net 2.8.1's ``load_pretrained_weights`` asserts that every
key of the network is in the file (ADNet has keys a U-Net does not) and never transfers ``.seg_layers.``, so a
decoder would start with a random output layer. ``adnnunet_warm_start`` instead writes an epoch-0
``checkpoint_latest.pth`` of the A&D trainer (the trainer's own ``save_checkpoint``: fresh optimizer, epoch 0),
and ``nnUNetv2_train D C F -tr ADTrainer --c`` trains from it with nnU-Net's own resume path.

The same command starts any plain nnU-Net trainer from the model (the U-Net's weights as they are, output layers
included; fresh optimizer, epoch 0): the matched control of an A&D fine-tuning run, i.e. nnU-Net trained on the
labeled cases for the same extra steps from the same start, at the same learning rate.
"""
from __future__ import annotations

import os
from typing import Dict

import torch

from ad_nnunet.checkpoints import checkpoints_in, load_checkpoint
from ad_nnunet.errors import ADInputError
from ad_nnunet.hashing import sha256_of
from ad_nnunet.network.ad_net import ADNet
from ad_nnunet.training.ad_trainer import ADTrainer, unwrapped_network
from ad_nnunet.training.weight_interpolation import unet_state

WARM_START_RECORD = "warm_start.json"


def warm_start_state_dict(net: ADNet, unet_state: Dict[str, torch.Tensor], source: str = "the checkpoint") -> dict:
    """ADNet state dict initialised from an nnU-Net U-Net's ``state_dict`` (module docstring).

    Raises:
        ADInputError: a U-Net key is missing or has another shape (a model of other plans / configuration).
    """
    def take(key: str) -> torch.Tensor:
        if key not in unet_state:
            raise ADInputError(
                f"{source} has no parameter {key!r}: it is not a U-Net of this plans file and configuration. Fix: "
                f"pass the checkpoint of nnUNetTrainer trained with the same -p plans and configuration.")
        return unet_state[key]

    new = {}
    stem_prefix = "encoder.stem." if net.has_separate_stem else "encoder.stages.0."
    for key, current in net.state_dict().items():
        top, _, rest = key.partition(".")
        if top == "encoder":
            value = take(key)
        elif top in ("decoder", "decoder_psi", "decoder_xi"):
            value = take(f"decoder.{rest}")
        elif top == "stem_diffusion":
            value = take(stem_prefix + rest)
            if value.shape != current.shape:  # the first convolution: image channels + noisy-label channels
                if value.shape[:1] + value.shape[2:] != current.shape[:1] + current.shape[2:]:
                    raise ADInputError(f"{source}: {stem_prefix + rest} has shape {tuple(value.shape)}, the A&D "
                                       f"stem expects {tuple(current.shape)}. Fix: use a model of the same plans.")
                extended = torch.zeros_like(current)
                extended[:, :value.shape[1]] = value
                value = extended
        elif top in ("temb_encoder", "temb_decoder_xi"):
            value = torch.zeros_like(current)
        else:  # time_embedding (inert while the projections are 0), difficulty (fresh DRS state)
            value = current
        if value.shape != current.shape:
            raise ADInputError(f"{source}: parameter for {key} has shape {tuple(value.shape)}, ADNet expects "
                               f"{tuple(current.shape)}. Fix: use a model trained with the same plans and "
                               f"configuration (and the same number of input channels and classes).")
        new[key] = value.to(dtype=current.dtype)
    return new


def read_nnunet_checkpoint(path: str) -> dict:
    """The nnU-Net checkpoint at ``path`` (checked: it exists, loads safely and holds network weights)."""
    if not os.path.isfile(path):
        raise ADInputError(f"{path} does not exist. Fix: pass the checkpoint_final.pth of a trained nnUNetTrainer "
                           f"model (nnUNet_results/<dataset>/<trainer>__<plans>__<config>/fold_F/).")
    try:
        checkpoint = load_checkpoint(path)
        checkpoint["network_weights"]
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise ADInputError(f"{path} is not a readable nnU-Net checkpoint ({type(e).__name__}: {e}). Fix: pass a "
                           f"checkpoint_*.pth written by nnUNetv2_train.") from None
    return checkpoint


def load_unet_weights(net: torch.nn.Module, unet_state: Dict[str, torch.Tensor], source: str) -> None:
    """Load an nnU-Net U-Net's weights into the same U-Net ``net`` (every key, every shape).

    Raises:
        ADInputError: the weights belong to another architecture, plans or configuration.
    """
    expected = net.state_dict()
    missing = sorted(set(expected) - set(unet_state))
    wrong = sorted(k for k in expected if k in unet_state and unet_state[k].shape != expected[k].shape)
    if missing or wrong:
        what = f"has no parameter {missing[0]!r}" if missing else \
            f"has {wrong[0]} of shape {tuple(unet_state[wrong[0]].shape)}, not {tuple(expected[wrong[0]].shape)}"
        raise ADInputError(f"{source} {what}: it is not a U-Net of this plans file and configuration. Fix: pass the "
                           f"checkpoint of nnUNetTrainer trained with the same -p plans and configuration.")
    net.load_state_dict({k: unet_state[k] for k in expected})


def write_warm_start_checkpoint(trainer, source: str, checkpoint: dict, overwrite: bool = False) -> str:
    """Initialise ``trainer`` (an ADTrainer or any nnU-Net trainer, not yet trained) from the nnU-Net ``checkpoint`` read from ``source``
    (:func:`read_nnunet_checkpoint`) and write its epoch-0 ``checkpoint_latest.pth``; returns that path.
    ``nnUNetv2_train ... --c`` continues from it."""
    from batchgenerators.utilities.file_and_folder_operations import join, save_json

    target = join(trainer.output_folder, "checkpoint_latest.pth")
    existing = checkpoints_in(trainer.output_folder)
    if existing and not overwrite:
        raise ADInputError(f"{trainer.output_folder} already holds {', '.join(existing)} of a run. Fix: pick "
                           f"another fold or trainer, or pass --overwrite to replace that run.")
    source_config = checkpoint.get("init_args", {}).get("configuration")
    if source_config is not None and source_config != trainer.configuration_name:
        raise ADInputError(f"{source} was trained with configuration {source_config}, this run uses "
                           f"{trainer.configuration_name}. Fix: warm-start from a model of the same configuration.")
    if not trainer.was_initialized:
        trainer.initialize()
    if isinstance(trainer, ADTrainer):
        trainer.core.load_state_dict(warm_start_state_dict(trainer.core, checkpoint["network_weights"], source))
        if trainer.records_start:  # kept in every checkpoint of the run
            trainer.start_unet = unet_state(trainer.core.state_dict())
    else:
        load_unet_weights(unwrapped_network(trainer), checkpoint["network_weights"], source)
    for name in existing:
        os.remove(join(trainer.output_folder, name))
    # nnU-Net stores the epoch to continue with as current_epoch + 1; --c must start at epoch 0
    trainer.current_epoch = -1
    trainer.save_checkpoint(target)
    trainer.current_epoch = 0
    save_json({"source_checkpoint": os.path.abspath(source), "source_sha256": sha256_of(source),
               "source_trainer": checkpoint.get("trainer_name"), "written": target},
              join(trainer.output_folder, WARM_START_RECORD), sort_keys=False)
    return target
