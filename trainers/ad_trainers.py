"""The module nnU-Net's trainer lookup imports when nnUNet_extTrainer points at this folder.

It only re-exports classes whose real home is the ad_nnunet package (so they keep their canonical module path).
Set it up with:  export nnUNet_extTrainer="$(adnnunet_ext_path)"
"""
from ad_nnunet.training.ad_trainer import ADTrainer  # noqa: F401
from ad_nnunet.training.variants import (  # noqa: F401
    ADTrainer_50epochs,
    ADTrainer_demo,
    ADTrainer_finetune,
    ADTrainer_finetune_anchored,
    ADTrainer_finetune_confident,
    ADTrainer_finetune_dropunsure,
    ADTrainer_finetune_thetaSupervised,
    ADTrainer_noDiffusion,
    ADTrainer_noDRS,
    ADTrainer_noRS,
    ADTrainer_noSVDA,
    ADTrainer_paper,
    ADTrainer_strongView,
    ADTrainer_tiny,
)
