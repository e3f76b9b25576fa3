"""The benchmark's commands (``ad_nnunet.benchmark``): adnnunet_benchmark (also ``python
benchmarks/run_ssl_benchmark.py``) and the GPU-tier packer (``python benchmarks/pack_gpu_tier.py``)."""
import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

from ad_nnunet.errors import report_input_errors


def build_parser(prog: str = "adnnunet_benchmark") -> argparse.ArgumentParser:
    import ad_nnunet.benchmark
    from ad_nnunet.benchmark.budget import METHOD_KEYS
    from ad_nnunet.benchmark.markdown import SETTING_TITLES

    p = argparse.ArgumentParser(prog=prog, description=ad_nnunet.benchmark.__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="raw dataset name or id (nnU-Net raw layout)")
    p.add_argument("--labeled", required=True, type=Path, help="text file: labeled imagesTr case ids")
    p.add_argument("--unlabeled", required=True, type=Path, help="text file: imagesTr case ids whose labels are "
                                                                 "hidden from A&D (used by the all-labels run)")
    p.add_argument("--test_images", required=True, type=Path, help="hold-out images (<case>_0000<ending>)")
    p.add_argument("--test_labels", required=True, type=Path, help="hold-out reference labels")
    p.add_argument("--preset", help="plans preset (e.g. la_cpu, tiny); optional")
    p.add_argument("-c", "--configuration", help="default: the preset's configuration, else 3d_fullres")
    p.add_argument("--steps", type=int, required=True, help="optimizer-step budget, the same for every run")
    p.add_argument("--iterations_per_epoch", type=int, default=50)
    p.add_argument("--ddim_steps", type=int, default=10, help="A&D's DDIM steps for its pseudo-labels")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--out", required=True, type=Path, help="output folder (state, logs, predictions, report)")
    p.add_argument("--np", type=int, default=2, help="processes for preprocessing, prediction and evaluation")
    p.add_argument("--n_proc_da", type=int, default=None,
                   help="nnU-Net data augmentation workers per loader (default: $nnUNet_n_proc_DA, else --np)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                   help="mirroring test-time augmentation (default: off)")
    p.add_argument("--note", default="", help="free text copied into the report (e.g. 'shared machine')")
    p.add_argument("--setting", choices=tuple(SETTING_TITLES), default="ssl",
                   help="label for the report titles only (ssl, imbssl, uda, semidg; default ssl); the runs, the "
                        "splits and the metrics do not depend on it")
    p.add_argument("--warm_start_steps", type=int, default=0,
                   help="A&D starts from nnU-Net trained on the labeled cases for steps - W steps and trains W "
                        "steps (adnnunet_warm_start); 0 (default): A&D trains all steps from scratch")
    p.add_argument("--finetune_steps", type=int, default=0,
                   help="fine-tuning protocol: labeled-only nnU-Net trains --steps, then A&D continues that model for "
                        "F steps and so does nnU-Net alone (the matched control A&D is compared with; the all-labels "
                        "model likewise); 0 (default): off")
    p.add_argument("--finetune_lr", type=float, default=1e-3,
                   help="learning rate of the --finetune_steps runs, A&D and nnU-Net alike (default 1e-3)")
    p.add_argument("--dev_cases", type=int, default=0,
                   help="also score every run but the all-labels one on the first K unlabeled cases (development "
                        "cases for decisions; default 0)")
    p.add_argument("--dev_interpolations", nargs="+", type=float, default=[], metavar="A",
                   help="also score A&D's model at these interpolation weights on the development cases, exported "
                        "with adnnunet_export --interpolation A ((1 - A) x start + A x trained; needs --dev_cases and "
                        "a warm-started A&D trainer that sets final_interpolation, e.g. ADTrainer_finetune): how the "
                        "saved model's weight is checked. A rerun may add them.")
    p.add_argument("--ad_trainer", default="ADTrainer", metavar="TRAINER",
                   help="the A&D trainer class of the ad method (default ADTrainer), e.g. ADTrainer_finetune with "
                        "--warm_start_steps: its hyperparameters with the benchmark's budget")
    p.add_argument("--extra_trainers", nargs="+", default=[], metavar="TRAINER",
                   help="more runs with the same budget on fold 0, one per trainer class (nnU-Net or A&D variants, "
                        "e.g. nnUNetTrainerNoDeepSupervision ADTrainer_paper): the rungs of an attribution ladder")
    p.add_argument("--methods", nargs="+", choices=METHOD_KEYS, default=list(METHOD_KEYS),
                   help="runs to train, predict, evaluate and report (default: all three); ad and labeled_only are "
                        "required, drop full (the all-labels upper bound, needed for the gap closure) when time is "
                        "short: --methods ad labeled_only")
    return p


def benchmark_entry(argv: Optional[Sequence[str]] = None, prog: str = "adnnunet_benchmark",
                    launcher: Optional[List[str]] = None) -> int:
    """``adnnunet_benchmark``: run (or resume) the benchmark in --out. Exit status 2 for bad input (nothing run),
    1 for a failed stage (its log named; a rerun resumes), 0 with the report written. ``launcher``: the words that
    started the command, recorded in state.json and the report (default ``[prog]``)."""
    from ad_nnunet.benchmark.pipeline import Benchmark
    from ad_nnunet.benchmark.runner import StageError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    if args.n_proc_da is None:
        args.n_proc_da = int(os.environ.get("nnUNet_n_proc_DA", args.np))
    command = shlex.join((launcher or [prog]) + argv)
    try:
        return report_input_errors(prog, lambda: Benchmark(args, command).run())
    except StageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


def pack_gpu_tier_entry(argv: Optional[Sequence[str]] = None, prog: str = "pack_gpu_tier") -> int:
    """``python benchmarks/pack_gpu_tier.py``: build the GPU tier's payload, or ``--verify`` one (on the device,
    before anything is installed: this imports only the standard library and ad_nnunet's stdlib-only modules)."""
    from ad_nnunet.benchmark import gpu_payload

    p = argparse.ArgumentParser(prog=prog, description=gpu_payload.__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, help="the benchmark raw dataset from prepare_la.py "
                                               "(default $nnUNet_raw/Dataset111_LA10bench)")
    p.add_argument("--out", type=Path, default=gpu_payload.SOURCE_TREE / "benchmarks" / "gpu_payload")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "adnnunet_gpu_wheels",
                   help="cache of downloads and archives (reused between packs)")
    p.add_argument("--python_version", default="3.12", help="the device's Python (binary wheels), default 3.12")
    p.add_argument("--spacing_factor", type=float, default=2.0, help="training-image resampling factor (default 2)")
    p.add_argument("--dataset_id", type=int, help="id of the GPU dataset (default: source id + 10)")
    p.add_argument("-np", type=int, default=2, help="processes for the resampling")
    p.add_argument("--verify", type=Path, metavar="PAYLOAD", help="only check PAYLOAD against its manifest and "
                                                                   "the working tree")
    a = p.parse_args(argv)

    def body():
        if a.verify:
            manifest = gpu_payload.verify(a.verify)
            print(f"{a.verify}: OK (commit {manifest['commit']}, {manifest['size_bytes'] / gpu_payload.MIB:.2f} MiB)")
            return
        source = a.source or (Path(os.environ.get("nnUNet_raw", "")) / "Dataset111_LA10bench")
        gpu_payload.pack(source, a.out, a.cache, a.python_version, a.spacing_factor, a.dataset_id, a.np)
    return report_input_errors(p.prog, body)
