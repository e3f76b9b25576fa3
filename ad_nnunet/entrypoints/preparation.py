"""Commands run before ``nnUNetv2_train``: adnnunet_ext_path, adnnunet_apply_preset, adnnunet_make_settings,
adnnunet_preprocess_unlabeled."""
import argparse
import shlex
import sys
from typing import Optional, Sequence

from ad_nnunet.errors import report_input_errors


def ext_path_entry() -> None:
    """``adnnunet_ext_path``: print the folder for nnUNet_extTrainer
    (``export nnUNet_extTrainer="$(adnnunet_ext_path)"``)."""
    from ad_nnunet import ext_trainer_dir

    print(ext_trainer_dir())


def apply_preset_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_apply_preset``: a reduced configuration in a planned dataset's plans (ad_nnunet/plans_presets.py)."""
    from ad_nnunet import plans_presets

    parser = argparse.ArgumentParser(
        prog="adnnunet_apply_preset",
        description="Add a reduced configuration (inheriting from a planned one) to an nnU-Net plans file. Shipped "
                    f"presets: {', '.join(plans_presets.available_presets())}.")
    parser.add_argument("-d", required=True, help="dataset id or name (already planned)")
    parser.add_argument("--preset", required=True, help="preset name or path to a preset JSON")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--preprocess", action="store_true",
                        help="run nnU-Net's preprocessing for the new configuration if its data is missing")
    parser.add_argument("-np", type=int, default=1, help="processes for --preprocess (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing configuration of that name")
    args = parser.parse_args(argv)

    def body():
        from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        name = plans_presets.apply_preset(args.d, args.preset, args.p, args.overwrite, preprocess=args.preprocess,
                                          num_processes=args.np)
        folder = plans_presets.preprocessed_dataset_folder(args.d)
        needs = plans_presets.preset_needs_preprocessing(folder.name, name, args.p)
        c = PlansManager(str(folder / f"{args.p}.json")).get_configuration(name)
        kw = c.network_arch_init_kwargs
        print(f"Configuration '{name}' (inherits from '{c.configuration['inherits_from']}') written to "
              f"{folder / (args.p + '.json')}\n"
              f"  spacing:         {c.spacing}\n"
              f"  patch size:      {c.patch_size}\n"
              f"  stages:          {kw['n_stages']} (strides {kw['strides']})\n"
              f"  features:        {kw['features_per_stage']}\n"
              f"  batch size:      {c.batch_size}\n"
              f"  data_identifier: {c.data_identifier}{' (not preprocessed yet)' if needs else ''}")
        dataset_id = convert_dataset_name_to_id(folder.name)
        if needs:
            print(f"Preprocess first:\n  nnUNetv2_preprocess -d {dataset_id} -plans_name {args.p} -c {name} "
                  f"-np {args.np}")
        print(f"Next:\n  nnUNetv2_train {dataset_id} {name} 0 -tr ADTrainer -p {args.p}")
    return report_input_errors(parser.prog, body)


def make_settings_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_make_settings``: ad_settings.json and splits_final.json (ad_nnunet/data/settings.py)."""
    from ad_nnunet.data.settings import SETTINGS, make_settings, read_settings_file, summarize

    argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the settings file
    p = argparse.ArgumentParser(
        prog="adnnunet_make_settings",
        description="Write ad_settings.json (labeled/unlabeled/val cases per fold) and the matching nnU-Net "
                    "splits_final.json. Default validation (no --num_val) uses the labeled cases (the A&D paper's "
                    "protocol): it measures training fit, not generalization.")
    p.add_argument("-d", "--dataset", required=True, help="dataset name or id")
    p.add_argument("--setting", required=True, choices=SETTINGS)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num_labeled", type=int)
    g.add_argument("--fraction", type=float)
    p.add_argument("--labeled_list", help="text file, one labeled imagesTr id per line (ssl)")
    p.add_argument("--unlabeled_list", help="text file, one hidden-label id per line (ssl)")
    p.add_argument("--num_val", type=int, default=0, help="validation cases drawn from hidden-label/target cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_folds", type=int, default=1)
    p.add_argument("--domains", help="JSON file case->domain (default: dataset.json 'ad_domains')")
    p.add_argument("--source", nargs="+", help="uda source domains")
    p.add_argument("--target", nargs="+", help="uda target domains (default: all others)")
    p.add_argument("--heldout", nargs="+", help="semidg held-out domains")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different splits_final.json")
    a = p.parse_args(argv)

    def body():
        path = make_settings(a.dataset, a.setting, num_labeled=a.num_labeled, fraction=a.fraction,
                             labeled_list=a.labeled_list, unlabeled_list=a.unlabeled_list, num_val=a.num_val,
                             seed=a.seed, num_folds=a.num_folds, domains=a.domains, source_domains=a.source,
                             target_domains=a.target, heldout_domains=a.heldout, overwrite=a.overwrite,
                             command=shlex.join([p.prog, *argv]))
        print(summarize(read_settings_file(path)))
        print(path)
    return report_input_errors(p.prog, body)


def preprocess_unlabeled_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_preprocess_unlabeled``: the unlabeled images with the labeled cases' plans
    (ad_nnunet/data/unlabeled_preprocessing.py)."""
    p = argparse.ArgumentParser(prog="adnnunet_preprocess_unlabeled",
                                description="Preprocess imagesUnlabeled and hidden-label imagesTr images "
                                            "(image files only) with the labeled cases' plans.")
    p.add_argument("-d", "--dataset", required=True, help="dataset name or id")
    p.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"])
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-np", "--num_processes", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)

    def body():
        from ad_nnunet.data.unlabeled_preprocessing import preprocess_unlabeled

        for c in a.configurations:
            print(preprocess_unlabeled(a.dataset, c, a.plans, a.num_processes, verbose=not a.quiet))
    return report_input_errors(p.prog, body)
