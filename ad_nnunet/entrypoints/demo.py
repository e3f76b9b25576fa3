"""adnnunet_demo: the whole A&D path on a phantom with nnU-Net's stock commands (ad_nnunet/demo.py)."""
import argparse
from typing import Optional, Sequence

from ad_nnunet.errors import report_input_errors


def demo_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_demo``: make a phantom, plan, train, predict and evaluate it, printing every command it runs."""
    from ad_nnunet import demo

    parser = argparse.ArgumentParser(prog="adnnunet_demo", description=demo.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", default="ad_nnunet_demo",
                        help="working folder (nnUNet_raw, nnUNet_preprocessed, nnUNet_results go inside)")
    parser.add_argument("-device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args(argv)
    return report_input_errors(parser.prog, lambda: demo.run_demo(args.output, args.device))
