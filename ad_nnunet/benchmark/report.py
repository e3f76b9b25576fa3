"""report.json: one row per run (metrics, budget, times), the gap closure, paired per-case comparisons, per-class and
per-domain breakdowns, the development cases, the budget, the split and the provenance. ``markdown.py`` renders it."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

from ad_nnunet.benchmark.budget import FULL_SOURCE, WARM_SOURCE, Method, interpolation_key
from ad_nnunet.benchmark.provenance import git_commit, machine_info
from ad_nnunet.publishing import write_atomic

if TYPE_CHECKING:
    from ad_nnunet.benchmark.pipeline import Benchmark

# The A&D paper (Wang & Li, NeurIPS 2023), LA: Dice/Jaccard in %, HD95/ASD as the official code reports them
# (voxel distances, see ad_nnunet/evaluation/metrics.py).
PAPER_LA = {
    "10% (8 labeled)": {"A&D": (90.31, 82.40, 5.55, 1.64), "V-Net labeled only": (82.74, None, None, None),
                        "V-Net all labels": (91.47, None, None, None)},
    "5% (4 labeled)": {"A&D": (89.93, 81.82, 5.25, 1.86)},
}
# Copied next to the report from each A&D run's model folder.
AD_PROGRESS = "ad_progress.png"
# Below this Dice difference between the all-labels and labeled-only models the gap closure's denominator is noise.
MEANINGFUL_GAP = 0.01


def gap_closure(dice_ad: Optional[float], dice_labeled: Optional[float], dice_full: Optional[float]) -> Optional[float]:
    """``(D_ad - D_labeled) / (D_full - D_labeled)``; ``None`` when undefined (missing values or
    D_full <= D_labeled)."""
    if None in (dice_ad, dice_labeled, dice_full) or any(math.isnan(x) for x in (dice_ad, dice_labeled, dice_full)):
        return None
    denominator = dice_full - dice_labeled
    if denominator <= 1e-9:
        return None
    return (dice_ad - dice_labeled) / denominator


def report_gap_closure(dice: Dict[str, Optional[float]], baseline: str = "labeled_only"
                       ) -> tuple[Optional[float], Optional[str]]:
    """(gap closure, None); (None, why it is missing); or (gap closure, why it is not meaningful) when the
    all-labels model beats the labeled-only one (``baseline``: ``labeled_only`` or, when fine-tuning, the matched
    ``control``) by less than ``MEANINGFUL_GAP``; from ``{method key: mean Dice}``."""
    if "full" not in dice:
        return None, "not computed, because the all-labels run was skipped (--methods without full)"
    gap = gap_closure(dice["ad"], dice[baseline], dice["full"])
    if gap is None:
        return None, ("undefined, because the all-labels model is not better than the labeled-only model at this "
                      "budget")
    if dice["full"] - dice[baseline] < MEANINGFUL_GAP:
        return gap, (f"not meaningful: the all-labels model is only {100 * (dice['full'] - dice[baseline]):.2f} "
                     f"Dice points better than the labeled-only one at this budget, well within case-to-case noise")
    return gap, None


def build_report(bench: Benchmark) -> dict:
    """report.json's content, from the completed train, predict and evaluate stages of ``bench``."""
    st = bench.state["stages"]
    b = bench.budget
    rows = []
    for m in bench.methods:
        train, pred = st[f"train_{m.key}"], st[f"predict_{m.key}"]
        rows.append({"key": m.key, "method": run_label(bench, m), "trainer": bench.trainer(m), "fold": m.fold,
                     "optimizer_steps": b.run_steps(m.key),
                     "training_data": m.data, "metrics": st[f"evaluate_{m.key}"]["metrics"],
                     "train_wall_s": train["wall_s"],
                     "train_epoch_time_s": train.get("epoch_time_s"), "predict_wall_s": pred["wall_s"],
                     "skipped_steps": train.get("skipped_steps"), "train_attempts": len(train["attempts_s"]),
                     "train_commits": train.get("commits", []),
                     "model_folder": str(bench.model_folder(m))})
    names = class_names(bench.dataset_json, bench.raw / "dataset.json")
    for row in rows:
        row.update(method_breakdown(st[f"evaluate_{row['key']}"], names))
    dice = {r["key"]: r["metrics"]["Dice"]["mean"] for r in rows}
    gap, gap_reason = report_gap_closure(dice, bench.baseline)
    paired = {f"ad_vs_{other}": paired_difference(bench, "ad", other)
              for other in dict.fromkeys((bench.baseline, "labeled_only", WARM_SOURCE.key)) if other in dice}
    dev = None
    if bench.dev:
        dev = {m.key: {"Dice": st[f"evaluate_dev_{m.key}"]["metrics"]["Dice"],
                       "paired_vs_baseline": None if m.key == bench.baseline
                       else paired_difference(bench, m.key, bench.baseline, "dev")}
               for m in bench.dev_methods}
        for a in bench.dev_interpolations:
            key = interpolation_key(a)
            dev[key] = {"label": f"A&D exported at a = {a:g} ((1 - a) x start + a x trained)",
                        "interpolation": a, "Dice": st[f"evaluate_dev_{key}"]["metrics"]["Dice"],
                        "paired_vs_baseline": paired_difference(bench, key, bench.baseline, "dev")}
    env = bench.env()
    return {
        "dataset": bench.dataset, "configuration": bench.configuration, "preset": bench.args.preset,
        "setting": bench.args.setting, "class_names": {str(k): v for k, v in names.items()},
        "domains": None if bench.domains is None else {
            "source": "dataset.json ad_domains",
            # True / False as dataset.json states it; None where it does not say
            "simulated": None if "ad_simulated" not in bench.dataset_json
            else bool(bench.dataset_json["ad_simulated"]),
            "test_cases_per_domain": {d: sum(bench.domains[c] == d for c in bench.test)
                                      for d in sorted({bench.domains[c] for c in bench.test})}},
        "ad_progress": copy_ad_progress(bench),
        "baseline": bench.baseline, "paired": paired,
        "equal_wall_time": equal_wall_time(rows, bench.starts.get("ad")),
        "dev": None if dev is None else {"cases": bench.dev, "methods": dev},
        "budget": {"requested_steps": b.steps, "num_epochs": b.num_epochs, "warm_start_steps": b.warm_start_steps,
                   "finetune_steps": b.finetune_steps, "finetune_lr": b.finetune_lr,
                   "iterations_per_epoch": b.iterations_per_epoch, "optimizer_steps_per_run": b.total_steps,
                   "val_iterations_per_epoch": b.val_iterations, "ddim_steps": b.ddim_steps},
        "split": {"labeled": bench.labeled, "unlabeled": bench.unlabeled, "test": bench.test,
                  "imagesUnlabeled": bench.extra_unlabeled, "imagesTr_unused": bench.unused},
        "methods": rows, "gap_closure": gap, "gap_closure_reason": gap_reason,
        "ad_beats_baseline": None if None in (dice["ad"], dice[bench.baseline])
        else dice["ad"] > dice[bench.baseline],
        "paper_LA": {split: {k: dict(zip(("Dice", "Jaccard", "HD95", "ASD"), v)) for k, v in d.items()}
                     for split, d in PAPER_LA.items()},
        "machine": machine_info(bench.args.device), "commit": git_commit(), "command": bench.state["invocations"][0],
        "invocations": bench.state["invocations"], "tta": bench.args.tta, "note": bench.args.note,
        "env": {k: env[k] for k in ("nnUNet_def_n_proc", "nnUNet_n_proc_DA", "nnUNet_compile")},
    }


def run_label(bench: Benchmark, m: Method) -> str:
    """The run's name in the report, with its steps where runs continue one another."""
    b = bench.budget
    if b.warm_start_steps and m.key in ("ad", WARM_SOURCE.key):
        return m.label + (f", {b.run_steps(m.key)} steps" if m.key != "ad" else
                          f" (warm start: {b.run_steps(WARM_SOURCE.key)} nnU-Net + {b.run_steps('ad')} A&D steps)")
    if m.key in bench.starts:
        return m.label + f" ({b.run_steps(bench.starts[m.key])} + {b.run_steps(m.key)} steps)"
    if b.finetune_steps and m.key in ("labeled_only", FULL_SOURCE.key):
        return m.label + f", {b.run_steps(m.key)} steps"
    return m.label


def paired_difference(bench: Benchmark, key: str, other: str, split: str = "test") -> Optional[dict]:
    """Per-case paired difference ``key - other`` (foreground-mean Dice) with its bootstrap interval."""
    from ad_nnunet.evaluation.paired import paired_bootstrap, per_case_foreground_mean

    suffix = bench.split_folders(split)[3]
    scores = [per_case_foreground_mean(json.loads(Path(bench.state["stages"][f"evaluate{suffix}_{k}"]["json"])
                                                  .read_text(encoding="utf-8"))) for k in (key, other)]
    return paired_bootstrap(*scores)


def equal_wall_time(rows: List[dict], ad_start: Optional[str] = None) -> Optional[dict]:
    """A&D's training time (the run it starts from included) against labeled-only nnU-Net's time per step: how many
    steps labeled-only nnU-Net would have had in the same time (an estimate from its measured speed). Times are
    nnU-Net's epoch times (training and validation iterations, without process start-up), which are also
    correct for runs that were interrupted and resumed."""
    by_key = {r["key"]: r for r in rows}
    if "ad" not in by_key or "labeled_only" not in by_key or not by_key["labeled_only"]["train_epoch_time_s"]:
        return None
    ad_s = sum(by_key[k]["train_epoch_time_s"] or 0.0 for k in ("ad", ad_start) if k in by_key)
    lab = by_key["labeled_only"]
    steps = ad_s / (lab["train_epoch_time_s"] / lab["optimizer_steps"])
    return {"ad_train_s": round(ad_s, 1), "labeled_only_train_s": lab["train_epoch_time_s"],
            "labeled_only_steps": lab["optimizer_steps"], "labeled_only_steps_in_ad_time": int(steps)}


def class_names(dataset_json: dict, dataset_json_path: Path) -> Dict[int, str]:
    """``{label: name}`` of the scored foreground labels, from dataset.json's ``labels``."""
    from ad_nnunet.evaluation.evaluate import foreground_labels

    names = {v: k for k, v in dataset_json["labels"].items() if isinstance(v, int)}
    return {lab: names[lab] for lab in foreground_labels(dataset_json, str(dataset_json_path))}


def method_breakdown(evaluation: dict, names: Dict[int, str]) -> dict:
    """Per-class and per-domain summaries of one method, read from its evaluation JSON (write_reports)."""
    results = json.loads(Path(evaluation["json"]).read_text(encoding="utf-8"))

    def per_class(summary: dict) -> dict:
        return {name: {**{k: summary["per_class"][str(lab)][k] for k in ("Dice", "Jaccard", "HD95", "ASD")},
                       "label": lab, "n_empty": summary["per_class"][str(lab)]["n_empty"]}
                for lab, name in names.items()}

    per_domain = None
    if "per_domain" in results:
        per_domain = {d: {"n_cases": s["n_cases"], **s["foreground_mean"], "per_class": per_class(s)}
                      for d, s in results["per_domain"].items()}
    return {"per_class": per_class(results["summary"]), "per_domain": per_domain}


def copy_ad_progress(bench: Benchmark) -> Dict[str, Optional[str]]:
    """Copy each A&D run's ad_progress.png (losses, mu, DRS difficulty weights per class per epoch) into --out;
    returns ``{method key: file name in --out, or None when the run wrote none}``."""
    copied = {}
    for m in bench.methods:
        if m.kind != "ad":
            continue
        src = bench.model_folder(m) / AD_PROGRESS
        name = AD_PROGRESS if m.key == "ad" else f"{m.key}_{AD_PROGRESS}"
        copied[m.key] = None
        if src.is_file():
            write_atomic(bench.out / name, lambda tmp: shutil.copy2(src, tmp))
            copied[m.key] = name
    return copied
