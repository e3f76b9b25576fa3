"""Shim folder for ``nnUNet_extTrainer`` (installed as ``ad_nnunet._nnunet_ext``). See ad_trainers.py."""
