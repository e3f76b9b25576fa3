"""Commands that build raw datasets (``ad_nnunet.dataset_conversion``): adnnunet_make_phantom, adnnunet_domains,
adnnunet_prepare_la, adnnunet_prepare_acdc."""
import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

from ad_nnunet.errors import ADInputError, report_input_errors


def make_phantom_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_make_phantom``: a synthetic phantom dataset (ad_nnunet/dataset_conversion/phantom.py)."""
    p = argparse.ArgumentParser(prog="adnnunet_make_phantom",
                                description="Write a synthetic 3D phantom dataset in nnU-Net raw layout "
                                            "(imagesTr/labelsTr, imagesUnlabeled, imagesTs/labelsTs).")
    p.add_argument("-o", "--output", default=None, help="raw root folder (default: $nnUNet_raw)")
    p.add_argument("-d", "--dataset_id", type=int, default=990)
    p.add_argument("--name", default="ADPhantom")
    p.add_argument("--num_labeled", type=int, default=8)
    p.add_argument("--num_unlabeled", type=int, default=16)
    p.add_argument("--num_test", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=(32, 48, 48), help="z y x voxels")
    p.add_argument("--spacing", type=float, nargs=3, default=(2.0, 1.0, 1.0), help="z y x mm")
    p.add_argument("--domains", nargs="+", default=["A"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)

    def body():
        from ad_nnunet.dataset_conversion.phantom import make_phantom_dataset
        from ad_nnunet.publishing import raw_root_or_env

        print(make_phantom_dataset(raw_root_or_env(a.output, "-o RAW_ROOT"), a.dataset_id, a.name, a.num_labeled,
                                   a.num_unlabeled, a.num_test, tuple(a.shape), tuple(a.spacing), tuple(a.domains),
                                   a.seed, a.overwrite))
    return report_input_errors(p.prog, body)


def _parse_domain_specs(specs: Sequence[str]) -> Dict[str, Union[str, dict]]:
    """``{domain: preset name or dict of ShiftParams fields}`` from ``NAME=PRESET`` / ``NAME='{json}'`` words."""
    domains = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise ADInputError(f"--domains entry {spec!r} is not NAME=PRESET. Fix: write e.g. A=identity B=vendorB, "
                               f"or NAME='{{\"gamma\": 0.8}}' for explicit parameters.")
        if name in domains:
            raise ADInputError(f"Domain {name!r} is given twice in --domains. Fix: name each domain once.")
        if value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ADInputError(f"--domains {name}: {value!r} is not valid JSON ({e}). Fix: quote it, e.g. "
                                   f"{name}='{{\"gamma\": 0.8, \"noise_std\": 0.02}}'.") from e
        domains[name] = value
    return domains


def domains_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_domains simulate|derive``: a domain-shift dataset (ad_nnunet/dataset_conversion/domain_dataset.py)."""
    from ad_nnunet.data.raw import UNLABELED_DIRNAME
    from ad_nnunet.dataset_conversion import domain_dataset
    from ad_nnunet.dataset_conversion.scanner_shift import vendor_presets

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="adnnunet_domains", description=domain_dataset.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-i", required=True, help="source raw dataset: folder path, or id/name under $nnUNet_raw")
    common.add_argument("-d", type=int, required=True, help="id of the new dataset (1..999)")
    common.add_argument("-n", required=True, help="name of the new dataset (DatasetXXX_<name>)")
    common.add_argument("--heldout", nargs="*", default=[], help="domains written only to imagesTs/labelsTs")
    common.add_argument("--unlabeled", nargs="*", default=[], help="domains to treat as unlabeled")
    common.add_argument("--unlabeled_folder", action="store_true",
                        help="put --unlabeled domains into imagesUnlabeled without labels (default: keep them in "
                             "imagesTr with labels; the settings file decides what is hidden)")
    common.add_argument("--raw_root", default=None, help="where the new dataset goes (default: $nnUNet_raw)")
    common.add_argument("--overwrite", action="store_true", help="replace an existing target dataset")
    sim = sub.add_parser("simulate", parents=[common], help="apply simulated scanner shifts per domain")
    sim.add_argument("--domains", nargs="+", required=True,
                     help=f"NAME=PRESET ({', '.join(vendor_presets())}) or NAME='{{json ShiftParams fields}}'")
    sim.add_argument("--assign", default="random",
                     help="'random' (balanced by patient, seeded) or a JSON file {domain: [cases]} / {case: domain}")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("-np", type=int, default=1, help="number of worker processes")
    der = sub.add_parser("derive", parents=[common], help="re-arrange by real domains (no simulation)")
    der.add_argument("--domains_json", required=True, help="JSON {case: domain}, e.g. pathology_groups.json")
    args = parser.parse_args(argv)
    command = shlex.join(["adnnunet_domains", *argv])

    def body():
        if args.mode == "simulate":
            folder = domain_dataset.simulate_domains(
                args.i, args.d, args.n, args.assign, _parse_domain_specs(args.domains), heldout_domains=args.heldout,
                unlabeled_domains=args.unlabeled, unlabeled_folder=args.unlabeled_folder, seed=args.seed,
                num_processes=args.np, overwrite=args.overwrite, raw_root=args.raw_root, command=command)
        else:
            folder = domain_dataset.derive_domain_dataset(
                args.i, args.d, args.n, args.domains_json, args.heldout, unlabeled_domains=args.unlabeled,
                unlabeled_folder=args.unlabeled_folder, overwrite=args.overwrite, raw_root=args.raw_root,
                command=command)
        counts = domain_dataset.domain_counts(folder)
        columns = ["imagesTr", UNLABELED_DIRNAME, "imagesTs"]
        print(f"Wrote {folder}")
        print(f"{'domain':<12}" + "".join(f"{c:>17}" for c in columns))
        for domain, row in counts.items():
            print(f"{domain:<12}" + "".join(f"{row[c]:>17}" for c in columns))
        print(f"{'total':<12}" + "".join(f"{sum(r[c] for r in counts.values()):>17}" for c in columns))
    return report_input_errors(parser.prog, body)


def prepare_la_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_prepare_la``: the LA benchmark dataset (ad_nnunet/dataset_conversion/prepare_la.py)."""
    from ad_nnunet.dataset_conversion import prepare_la

    p = argparse.ArgumentParser(prog="adnnunet_prepare_la", description=prepare_la.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=prepare_la.DEFAULT_SOURCE,
                   help=f"the shared Dataset101_LA (default {prepare_la.DEFAULT_SOURCE})")
    p.add_argument("--fraction", default="0.1", help="which paper split: 0.1 (8 labeled) or 0.05 (4 labeled)")
    p.add_argument("--labeled_list", type=Path, help="override: labeled list file (default splits/labeled_F.txt)")
    p.add_argument("--unlabeled_list", type=Path, help="override: unlabeled list (default splits/unlabeled_F.txt)")
    p.add_argument("--holdout", type=int, default=12, help="test cases drawn from the unlabeled list (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out draw (default 0)")
    p.add_argument("--raw", type=Path, default=None, help="nnU-Net raw root (default $nnUNet_raw)")
    p.add_argument("--dataset_id", type=int, help="default 111 (0.1) / 112 (0.05)")
    p.add_argument("--dataset_name", help="default LA10bench (0.1) / LA5bench (0.05)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    a = p.parse_args(argv)

    def body():
        from ad_nnunet.publishing import raw_root_or_env

        target = prepare_la.prepare(a.source, raw_root_or_env(a.raw, "--raw"), a.fraction, a.holdout, a.seed,
                                    a.dataset_id, a.dataset_name, a.overwrite, a.labeled_list, a.unlabeled_list)
        split = json.loads((target / prepare_la.SPLIT_FILENAME).read_text())
        print(f"{target}: {len(split['labeled'])} labeled + {len(split['unlabeled'])} unlabeled (labels hidden from "
              f"A&D) in imagesTr, {len(split['test'])} hold-out test cases in imagesTs ({split['files']})")
        print(f"Next: adnnunet_benchmark --dataset {target.name} "
              f"--labeled {target}/splits/labeled.txt --unlabeled {target}/splits/unlabeled.txt "
              f"--test_images {target}/imagesTs --test_labels {target}/labelsTs --out <DIR> ...")
    return report_input_errors(p.prog, body)


def _prepare_acdc_parser() -> argparse.ArgumentParser:
    from ad_nnunet.dataset_conversion import prepare_acdc
    from ad_nnunet.dataset_conversion.scanner_shift import vendor_presets

    p = argparse.ArgumentParser(prog="adnnunet_prepare_acdc", description=prepare_acdc.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="setting", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--source", type=Path, default=prepare_acdc.DEFAULT_SOURCE,
                        help=f"the shared Dataset102_ACDC (default {prepare_acdc.DEFAULT_SOURCE})")
    common.add_argument("--groups", type=Path,
                        help=f"case -> pathology group JSON (default <source>/{prepare_acdc.GROUPS_FILENAME})")
    common.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    common.add_argument("--raw", type=Path, default=None, help="nnU-Net raw root (default $nnUNet_raw)")
    common.add_argument("--dataset_id", type=int, help="default 121 (imbssl) / 122 (uda) / 123 (semidg)")
    common.add_argument("--dataset_name", help="default ACDCimb / ACDCuda / ACDCdg")
    common.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    imb = sub.add_parser("imbssl", parents=[common], help="class-imbalanced SSL (Dataset121_ACDCimb)")
    imb.add_argument("--num_test", type=int, default=16, help="test patients, stratified by group (default 16)")
    imb.add_argument("--num_labeled", type=int, default=7, help="labeled patients, stratified (default 7, ~10 %%)")
    uda = sub.add_parser("uda", parents=[common], help="UDA on a simulated vendor shift (Dataset122_ACDCuda)")
    uda.add_argument("--num_test", type=int, default=16, help="target-domain test patients (default 16)")
    uda.add_argument("--target_preset", default="vendorC", choices=list(vendor_presets()),
                     help="simulated target scanner (default vendorC: gamma 1.4, blur 1.0 mm, noise 0.05)")
    uda.add_argument("-np", type=int, default=1, help="processes for the simulation (default 1)")
    dg = sub.add_parser("semidg", parents=[common], help="SemiDG over pathology groups (Dataset123_ACDCdg)")
    dg.add_argument("--heldout", default="HCM", help="held-out (test) group (default HCM)")
    amount = dg.add_mutually_exclusive_group()
    amount.add_argument("--fraction", type=float, help="labeled fraction of the training patients (default 0.1)")
    amount.add_argument("--num_labeled", type=int, help="labeled training patients (instead of --fraction)")
    return p


def prepare_acdc_entry(argv: Optional[Sequence[str]] = None) -> int:
    """``adnnunet_prepare_acdc imbssl|uda|semidg``: the ACDC benchmark datasets
    (ad_nnunet/dataset_conversion/prepare_acdc.py)."""
    from ad_nnunet.dataset_conversion import prepare_acdc

    argv = list(sys.argv[1:] if argv is None else argv)
    p = _prepare_acdc_parser()
    a = p.parse_args(argv)

    def body():
        target = prepare_acdc.prepare(
            a.setting, a.source, a.raw, seed=a.seed, num_test=getattr(a, "num_test", 16),
            num_labeled=getattr(a, "num_labeled", None), fraction=getattr(a, "fraction", None),
            heldout=getattr(a, "heldout", "HCM"), target_preset=getattr(a, "target_preset", "vendorC"),
            groups_file=a.groups, dataset_id=a.dataset_id, dataset_name=a.dataset_name, overwrite=a.overwrite,
            num_processes=getattr(a, "np", 1), command=shlex.join([p.prog, *argv]))
        split = json.loads((target / prepare_acdc.SPLIT_FILENAME).read_text(encoding="utf-8"))
        pats = split["patients"]
        print(f"{target}: {len(split['labeled'])} labeled ({len(pats['labeled'])} patients) + "
              f"{len(split['unlabeled'])} unlabeled ({len(pats['unlabeled'])} patients, labels hidden from A&D) in "
              f"imagesTr, {len(split['test'])} test cases ({len(pats['test'])} patients) in imagesTs only; seed "
              f"{split['seed']}" + ("; SIMULATED target domain" if split["simulated"] else ""))
        for what in ("labeled", "unlabeled", "test"):
            print(f"  {what:<9} patients per group: {split['patients_per_group'][what]}")
        print("Next (CPU tier, docs/benchmarks.md; the step budget is an estimate for a 2-core machine):")
        print(f"  {prepare_acdc.next_command(target, a.setting)}")
    return report_input_errors(p.prog, body)
