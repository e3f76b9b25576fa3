"""Hand-written nnU-Net configurations for network unit tests (no planning needed)."""
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager


def configuration(dim: int = 3, features=(4, 8, 16), arch: str = "PlainConvUNet") -> ConfigurationManager:
    n = len(features)
    conv = "torch.nn.Conv3d" if dim == 3 else "torch.nn.Conv2d"
    norm = "torch.nn.InstanceNorm3d" if dim == 3 else "torch.nn.InstanceNorm2d"
    kwargs = {
        "n_stages": n, "features_per_stage": list(features), "conv_op": conv,
        "kernel_sizes": [[3] * dim] * n, "strides": [[1] * dim] + [[2] * dim] * (n - 1),
        "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True, "norm_op": norm,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    if arch == "PlainConvUNet":
        kwargs["n_conv_per_stage"] = [1] * n
        cls = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    else:
        kwargs["n_blocks_per_stage"] = [1] * n
        cls = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    return ConfigurationManager({
        "data_identifier": "test", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [16] * dim, "median_image_size_in_voxels": [16] * dim, "spacing": [1.0] * dim,
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities":
            "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {}, "batch_dice": True,
        "architecture": {"network_class_name": cls, "arch_kwargs": kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    })
