"""Small command-line entry points that belong to no pipeline stage."""
from ad_nnunet import ext_trainer_dir
from ad_nnunet.errors import report_input_errors


def ext_path_entry() -> None:
    """`adnnunet_ext_path`: print the folder for nnUNet_extTrainer (export nnUNet_extTrainer="$(adnnunet_ext_path)")."""
    print(ext_trainer_dir())


def _model_arguments(prog: str, description: str):
    """A parser with nnU-Net's model-selecting options (-d, -c, -tr, -p), as nnUNetv2_train / predict spell them."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-c", required=True, help="configuration")
    p.add_argument("-tr", default="ADTrainer", help="A&D trainer class (default ADTrainer)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    return p


def warm_start_entry(argv=None) -> int:
    """`adnnunet_warm_start`: start an A&D run from a trained nnU-Net model (ad_nnunet/training/warm_start.py)."""
    p = _model_arguments(
        "adnnunet_warm_start",
        "Write an epoch-0 checkpoint of an A&D trainer initialised from a trained nnUNetTrainer model (every decoder "
        "then computes that model); continue with `nnUNetv2_train D C F -tr ADTrainer --c`.")
    p.add_argument("-f", required=True, help="fold of the A&D run")
    p.add_argument("-i", required=True, help="nnU-Net checkpoint of the same configuration, e.g. "
                                             ".../nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth")
    p.add_argument("--overwrite", action="store_true", help="replace an existing A&D run in that fold")
    args = p.parse_args(argv)

    def body():
        import torch
        from nnunetv2.run.run_training import get_trainer_from_args

        from ad_nnunet.errors import ADInputError
        from ad_nnunet.training.ad_trainer import ADTrainer
        from ad_nnunet.training.warm_start import read_nnunet_checkpoint, write_warm_start_checkpoint

        checkpoint = read_nnunet_checkpoint(args.i)  # before building the trainer: a wrong path fails fast
        fold = args.f if args.f == "all" else int(args.f)
        trainer = get_trainer_from_args(args.d, args.c, fold, args.tr, args.p, device=torch.device("cpu"))
        if not isinstance(trainer, ADTrainer):
            raise ADInputError(f"-tr {args.tr} is not an A&D trainer. Fix: pass ADTrainer or one of its variants.")
        path = write_warm_start_checkpoint(trainer, args.i, checkpoint, overwrite=args.overwrite)
        print(f"{path} written (epoch 0, initialised from {args.i}).\n"
              f"Next: nnUNetv2_train {args.d} {args.c} {args.f} -tr {args.tr} -p {args.p} --c")
    return report_input_errors(p.prog, body)


def export_entry(argv=None) -> int:
    """`adnnunet_export`: an A&D run as a stock nnU-Net model folder (ad_nnunet/export.py)."""
    p = _model_arguments(
        "adnnunet_export",
        "Write an A&D model as a stock nnU-Net model (trainer nnUNetTrainer: shared encoder + D_theta) that plain "
        "nnU-Net predicts with, without ad-nnunet installed.")
    p.add_argument("-f", nargs="+", required=True, help="fold(s), e.g. -f 0 1 2 3 4 (an ensemble, as in nnU-Net)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint to export (default checkpoint_final.pth)")
    p.add_argument("-o", required=True, help="output root, used like nnUNet_results (nnUNet_results=DIR "
                                             "nnUNetv2_predict -d D -c C -f F)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing exported model under -o")
    args = p.parse_args(argv)

    def body():
        import os

        from nnunetv2.utilities.file_path_utilities import get_output_folder

        from ad_nnunet.errors import ADInputError
        from ad_nnunet.export import export_stock_model

        if not os.environ.get("nnUNet_results"):
            raise ADInputError("nnUNet_results is not set. Fix: export nnUNet_results (the folder the run was "
                               "trained into).")
        try:
            run = get_output_folder(args.d, args.tr, args.p, args.c)
        except (RuntimeError, ValueError) as e:
            raise ADInputError(f"dataset {args.d}: {e}. Fix: pass an existing dataset name or id.") from None
        folds = [f if f == "all" else int(f) for f in args.f]
        target = export_stock_model(run, folds, args.o, args.chk, args.overwrite)
        print(f"{target} written. Predict without ad-nnunet:\n"
              f"  nnUNet_results={os.path.abspath(args.o)} nnUNetv2_predict -i IN -o OUT -d {args.d} -c {args.c} "
              f"-f {' '.join(args.f)}")
    return report_input_errors(p.prog, body)
