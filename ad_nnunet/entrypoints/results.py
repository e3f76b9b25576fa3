"""Commands on trained models and their predictions: adnnunet_warm_start, adnnunet_export, adnnunet_pseudolabels,
adnnunet_rank_unlabeled, adnnunet_confidence_probe, adnnunet_evaluate."""
import argparse
import os
from typing import Optional, Sequence, Union

from ad_nnunet.errors import ADInputError, report_input_errors


def _model_arguments(prog: str, description: str, fold_help: str, **fold_options) -> argparse.ArgumentParser:
    """A parser with nnU-Net's model-selecting options (-d, -c, -tr, -p, -f), as nnUNetv2_train / predict spell
    them."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-c", required=True, help="configuration")
    p.add_argument("-tr", default="ADTrainer", help="A&D trainer class (default ADTrainer)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-f", required=True, help=fold_help, **fold_options)
    return p


def _fold(value: str) -> Union[int, str]:
    """A fold as nnU-Net takes it: a number, or ``"all"``."""
    if value != "all" and not value.isdigit():
        raise ADInputError(f"-f {value}: not a fold. Fix: pass a fold number (e.g. -f 0) or -f all.")
    return value if value == "all" else int(value)


def _trained_run_folder(args) -> str:
    """``$nnUNet_results/<dataset>/<-tr>__<-p>__<-c>`` for parsed ``_model_arguments``."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    if not os.environ.get("nnUNet_results"):
        raise ADInputError("nnUNet_results is not set. Fix: export nnUNet_results (the folder the run was "
                           "trained into).")
    try:
        return get_output_folder(args.d, args.tr, args.p, args.c)
    except (RuntimeError, ValueError) as e:
        raise ADInputError(f"dataset {args.d}: {e}. Fix: pass an existing dataset name or id.") from None


def warm_start_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_warm_start``: start a run from a trained nnU-Net model (ad_nnunet/training/warm_start.py)."""
    p = _model_arguments(
        "adnnunet_warm_start",
        "Write an epoch-0 checkpoint of a trainer initialised from a trained nnUNetTrainer model, then continue with "
        "`nnUNetv2_train D C F -tr TRAINER --c`. An A&D trainer (default) starts with every decoder computing that "
        "model; a plain nnU-Net trainer (e.g. one with a lower learning rate) continues the model itself, the matched "
        "control of an A&D fine-tuning run.", fold_help="fold of the new run")
    p.add_argument("-i", required=True, help="nnU-Net checkpoint of the same configuration, e.g. "
                                             ".../nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in that fold")
    args = p.parse_args(argv)

    def body():
        import torch
        from nnunetv2.run.run_training import get_trainer_from_args

        from ad_nnunet.training.warm_start import read_nnunet_checkpoint, write_warm_start_checkpoint

        checkpoint = read_nnunet_checkpoint(args.i)  # before building the trainer: a wrong path fails fast
        trainer = get_trainer_from_args(args.d, args.c, _fold(args.f), args.tr, args.p, device=torch.device("cpu"))
        path = write_warm_start_checkpoint(trainer, args.i, checkpoint, overwrite=args.overwrite)
        print(f"{path} written (epoch 0, initialised from {args.i}).\n"
              f"Next: nnUNetv2_train {args.d} {args.c} {args.f} -tr {args.tr} -p {args.p} --c")
    return report_input_errors(p.prog, body)


def export_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_export``: an A&D run as a stock nnU-Net model folder (ad_nnunet/export.py)."""
    p = _model_arguments(
        "adnnunet_export",
        "Write an A&D model as a stock nnU-Net model (trainer nnUNetTrainer: shared encoder + D_theta) that plain "
        "nnU-Net predicts with, without ad-nnunet installed.",
        fold_help="fold(s), e.g. -f 0 1 2 3 4 (an ensemble, as in nnU-Net)", nargs="+")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint to export (default checkpoint_final.pth)")
    p.add_argument("-o", required=True, help="output root, used like nnUNet_results (nnUNet_results=DIR "
                                             "nnUNetv2_predict -d D -c C -f F)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing exported model under -o")
    p.add_argument("--interpolation", type=float, metavar="A",
                   help="export (1 - A) x start + A x trained of a final_interpolation run (ADTrainer_finetune) "
                        "instead of the model it saved: 1 = the trained model, 0 = the model it started from")
    args = p.parse_args(argv)

    def body():
        from ad_nnunet.export import export_stock_model

        target = export_stock_model(_trained_run_folder(args), [_fold(f) for f in args.f], args.o, args.chk,
                                    args.overwrite, args.interpolation)
        print(f"{target} written. Predict without ad-nnunet:\n"
              f"  nnUNet_results={os.path.abspath(args.o)} nnUNetv2_predict -i IN -o OUT -d {args.d} -c {args.c} "
              f"-f {' '.join(args.f)}")
    return report_input_errors(p.prog, body)


def pseudolabels_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_pseudolabels``: pseudo-labels of a fold's unlabeled cases to check (ad_nnunet/pseudolabels.py)."""
    p = _model_arguments(
        "adnnunet_pseudolabels",
        "Write, for every unlabeled case of an A&D run's fold, the fused pseudo-label as training makes it (in the "
        "scan's original geometry), a PNG overlay, and scores (foreground volume, confidence, D_xi/D_psi agreement, "
        "DDIM spread); index.html shows them all, pseudolabels.csv ranks them (1 = label this scan next). A rerun "
        "skips finished cases.", fold_help="fold of the A&D run (its fold_F/ad_split.json lists the unlabeled cases)")
    p.add_argument("-o", required=True, help="output folder (new or empty, or one this command made for the same "
                                             "model and settings)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint (default checkpoint_final.pth)")
    p.add_argument("--cases", nargs="+", help="only these unlabeled case ids (default: all of the fold)")
    p.add_argument("--ddim_steps", type=int, default=10, help="DDIM steps of the diffusion stream (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the DDIM and Gumbel noise (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    args = p.parse_args(argv)

    def body():
        import torch

        from ad_nnunet.pseudolabels import make_pseudolabels

        fold = _fold(args.f)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        csv_file = make_pseudolabels(_trained_run_folder(args), fold, args.o, args.chk, args.cases, args.ddim_steps,
                                     args.seed, device)
        print(f"{csv_file} written; open {csv_file.parent / 'index.html'} to check the pseudo-labels.\n"
              f"Next scan to label: adnnunet_rank_unlabeled -i {args.o} --top 5")
    return report_input_errors(p.prog, body)


def rank_unlabeled_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_rank_unlabeled``: which unlabeled scans to label next, from adnnunet_pseudolabels' ranking."""
    p = argparse.ArgumentParser(
        prog="adnnunet_rank_unlabeled",
        description="Print the unlabeled cases with the most disagreement between the diffusion and plain decoders "
                    "(the scans to label next), one per line: case id, then its scores.")
    p.add_argument("-i", required=True, help="output folder of adnnunet_pseudolabels")
    p.add_argument("--top", type=int, default=10, help="how many cases (default 10)")
    args = p.parse_args(argv)

    def body():
        from ad_nnunet.pseudolabels import SCORES, ranked_cases

        if args.top < 1:
            raise ADInputError(f"--top {args.top}: must be at least 1. Fix: pass e.g. --top 5.")
        for row in ranked_cases(args.i, args.top):
            print("\t".join([row["case"], f"rank {row['rank']}"] + [f"{k} {row[k]:.4f}" for k in SCORES]))
    return report_input_errors(p.prog, body)


def confidence_probe_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_confidence_probe``: what a confidence threshold on the pseudo-label leaves out, on development
    cases (ad_nnunet/evaluation/confidence_probe.py)."""
    p = _model_arguments(
        "adnnunet_confidence_probe",
        "For a trained A&D run, score training's RS pseudo-label on patches of development cases (cases whose labels "
        "the run never trained on, e.g. the benchmark's --dev_cases) under each confidence mask (a threshold on kappa, "
        "or the least confident fraction of each patch): the fraction of voxels it leaves out of L_u, the error rates "
        "of kept and left-out voxels, the share of errors removed. How pseudo_label_min_confidence or "
        "pseudo_label_ignore_fraction is chosen.", fold_help="fold of the A&D run", type=int)
    p.add_argument("--cases", nargs="+", required=True, help="development case ids (training cases with labels in "
                                                             "the run's preprocessed folder, not trained on)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint (default checkpoint_final.pth)")
    p.add_argument("--thresholds", nargs="+", type=float, metavar="K", help="thresholds in [0, 1] (default 0.55 "
                                                                            "to 0.9 in steps of 0.05)")
    p.add_argument("--fractions", nargs="+", type=float, default=[], metavar="Q",
                   help="fractions in [0, 1]: also mask each patch's least confident share Q (default: none)")
    p.add_argument("--patches_per_case", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", help="also write the tables to this JSON file")
    args = p.parse_args(argv)

    def body():
        from ad_nnunet.evaluation.confidence_probe import DEFAULT_THRESHOLDS, format_table, probe_run
        from ad_nnunet.publishing import write_json_atomic

        checkpoint_file, n_patches, tables = probe_run(
            _trained_run_folder(args), args.f, args.cases, args.chk, args.thresholds or DEFAULT_THRESHOLDS,
            args.patches_per_case, args.seed, args.fractions)
        for name, table in tables.items():
            print(f"teacher: {name} ({n_patches} patches of {len(args.cases)} cases)\n{format_table(table)}\n")
        if args.o:
            write_json_atomic(args.o, {"checkpoint": str(checkpoint_file), "cases": list(args.cases),
                                       "patches_per_case": args.patches_per_case, "seed": args.seed,
                                       "tables": tables})
    return report_input_errors(p.prog, body)


def evaluate_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_evaluate``: Dice, Jaccard, HD95, ASD of a prediction folder (ad_nnunet/evaluation/evaluate.py)."""
    parser = argparse.ArgumentParser(
        prog="adnnunet_evaluate",
        description="Dice, Jaccard, HD95 and ASD (distances in mm) of every prediction in -pred against the "
                    "same-named reference in -ref. Both-empty classes are not applicable (NaN, counted as n_empty); "
                    "a missed or hallucinated class gets Dice 0 and the image diagonal in mm as distance.")
    parser.add_argument("-pred", required=True, help="folder with predicted label files")
    parser.add_argument("-ref", required=True, help="folder with reference label files of the same names")
    lab = parser.add_mutually_exclusive_group(required=True)
    lab.add_argument("-dj", help="dataset.json: foreground labels and file_ending come from it")
    lab.add_argument("-l", nargs="+", type=int, help="foreground labels to score, e.g. -l 1 2 3")
    parser.add_argument("-o", help="output prefix (default <pred>/ad_evaluation): writes .json, .csv and .md")
    dom = parser.add_mutually_exclusive_group()
    dom.add_argument("--domains", help="JSON with a case -> domain mapping (plain, or under 'ad_domains'/'domains')")
    dom.add_argument("--settings", help="ad_settings.json whose 'ad_domains'/'domains' entry maps case -> domain")
    parser.add_argument("--file_ending", help="file ending of the label files (default: dataset.json's, "
                                              "else .nii.gz)")
    parser.add_argument("-np", type=int, default=1, help="number of worker processes (default 1)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    def body():
        from ad_nnunet.evaluation.evaluate import evaluate_predictions
        from ad_nnunet.evaluation.metrics import markdown_report

        results, paths = evaluate_predictions(
            args.pred, args.ref, dataset_json=args.dj, labels=args.l, out_prefix=args.o, domains_file=args.domains,
            settings_file=args.settings, file_ending=args.file_ending, num_processes=args.np,
            progress=not args.no_progress)
        print(markdown_report(results))
        print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return report_input_errors(parser.prog, body)
