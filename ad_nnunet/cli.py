"""Small command-line entry points that belong to no pipeline stage."""
from ad_nnunet import ext_trainer_dir


def ext_path_entry() -> None:
    """`adnnunet_ext_path`: print the folder for nnUNet_extTrainer (export nnUNet_extTrainer="$(adnnunet_ext_path)")."""
    print(ext_trainer_dir())
