from setuptools import find_packages, setup

setup(
    name="ad-nnunet",
    version="0.1.0",
    description="Aggregating & Decoupling (A&D, NeurIPS 2023) semi-supervised segmentation as an nnU-Net v2 plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # trainers/ is the folder nnUNet_extTrainer points at; it is installed as ad_nnunet._nnunet_ext so that
    # `adnnunet_ext_path` finds it in editable and regular installs alike.
    packages=find_packages(include=["ad_nnunet", "ad_nnunet.*"]) + ["ad_nnunet._nnunet_ext", "ad_nnunet._plans"],
    # plans/ (presets) likewise ships as ad_nnunet._plans.
    package_dir={"ad_nnunet._nnunet_ext": "trainers", "ad_nnunet._plans": "plans"},
    package_data={"ad_nnunet._plans": ["*.json"]},
    # torch/torchvision are pinned as a pair: a torchvision built for another torch breaks timm, which
    # nnU-Net's trainer lookup imports (see docs/installation.md).
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "nnunetv2>=2.8.1,<2.9",
        "batchgeneratorsv2>=0.3.6",
        "dynamic-network-architectures>=0.4.4",
        "acvl-utils>=0.2.6",
        "SimpleITK>=2.3",
        "numpy>=1.26",
        "scipy>=1.11",
        "medpy>=0.5.2",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest>=8"]},
    entry_points={
        "console_scripts": [
            "adnnunet_ext_path = ad_nnunet.entrypoints.preparation:ext_path_entry",
            "adnnunet_warm_start = ad_nnunet.entrypoints.results:warm_start_entry",
            "adnnunet_export = ad_nnunet.entrypoints.results:export_entry",
            "adnnunet_pseudolabels = ad_nnunet.entrypoints.results:pseudolabels_entry",
            "adnnunet_rank_unlabeled = ad_nnunet.entrypoints.results:rank_unlabeled_entry",
            "adnnunet_confidence_probe = ad_nnunet.entrypoints.results:confidence_probe_entry",
            "adnnunet_demo = ad_nnunet.entrypoints.demo:demo_entry",
            "adnnunet_make_phantom = ad_nnunet.entrypoints.datasets:make_phantom_entry",
            "adnnunet_preprocess_unlabeled = ad_nnunet.entrypoints.preparation:preprocess_unlabeled_entry",
            "adnnunet_make_settings = ad_nnunet.entrypoints.preparation:make_settings_entry",
            "adnnunet_evaluate = ad_nnunet.entrypoints.results:evaluate_entry",
            "adnnunet_apply_preset = ad_nnunet.entrypoints.preparation:apply_preset_entry",
            "adnnunet_domains = ad_nnunet.entrypoints.datasets:domains_entry",
            "adnnunet_prepare_la = ad_nnunet.entrypoints.datasets:prepare_la_entry",
            "adnnunet_prepare_acdc = ad_nnunet.entrypoints.datasets:prepare_acdc_entry",
            "adnnunet_benchmark = ad_nnunet.entrypoints.benchmark:benchmark_entry",
        ]
    },
)
