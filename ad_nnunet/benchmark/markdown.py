"""report.md, rendered from report.json (``report.build_report``): the main table, paired comparisons, per-class and
per-domain tables, the gap closure, the paper's LA numbers (ssl), the budget, the split and the provenance."""
from __future__ import annotations

from typing import Dict, List, Optional

from ad_nnunet.benchmark.report import AD_PROGRESS
from ad_nnunet.benchmark.runner import format_duration

# --setting: only the report titles depend on it.
SETTING_TITLES = {"ssl": "SSL benchmark", "imbssl": "Class-imbalanced SSL benchmark",
                  "uda": "UDA benchmark (unsupervised domain adaptation)",
                  "semidg": "SemiDG benchmark (semi-supervised domain generalisation)"}


def _pct(stat: dict) -> str:
    return "n/a" if stat["mean"] is None else f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def _mm(stat: dict) -> str:
    return "n/a" if stat["mean"] is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


# One line under the title of a non-ssl report: what the three runs mean in that setting.
SETTING_ROLES = {
    "imbssl": "Class-imbalanced SSL: few labeled cases, classes of very different size; the per-class tables show "
              "whether the small classes profit.",
    "uda": "UDA: labeled = source-domain cases, unlabeled = target-domain training cases (images only for A&D), "
           "test = held-out target-domain cases. 'labeled only' = source only; 'all labels' = source + target "
           "labels (an oracle).",
    "semidg": "SemiDG: labeled and unlabeled cases come from the training domains; the test domain is unseen (not in "
              "training, planning or fingerprint). 'all labels' = every training-domain label.",
}


def _paired_line(p: Optional[dict], what: str) -> str:
    if p is None:
        return f"- {what}: no case scored by both."
    lo, hi = p["ci95"]
    verdict = ("above 0: larger than the noise" if lo > 0 else "below 0" if hi < 0 else "includes 0: not "
               "distinguishable from noise")
    return (f"- {what}: **{100 * p['mean_diff']:+.2f}** Dice points per case, bootstrap 95 % interval "
            f"[{100 * lo:+.2f}, {100 * hi:+.2f}] ({verdict}); better on {p['wins']} of {p['n']} cases, worse on "
            f"{p['losses']}.")


def labels_of(r: dict) -> Dict[str, str]:
    """``{method key: its row's label}`` of a report."""
    return {row["key"]: row["method"] for row in r["methods"]}


def _paired_markdown(r: dict) -> List[str]:
    """Paired per-case differences, the equal-wall-time line and the development-case table."""
    labels = labels_of(r)
    lines = []
    paired = r.get("paired") or {}
    if paired:
        lines += ["", "## Paired comparison on the test cases", "",
                  "Per-case difference of the foreground-mean Dice, mean over cases, percentile bootstrap "
                  "(10,000 resamples of the cases, seed 0)."]
        for key, p in paired.items():
            other = key.split("_vs_", 1)[1]
            lines.append(_paired_line(p, f"A&D minus {labels.get(other, other)}"))
    eq = r.get("equal_wall_time")
    if eq:
        lines += ["", f"Equal wall time: A&D trained for {format_duration(eq['ad_train_s'])} (sum of epoch times, warm "
                  f"source included); "
                  f"labeled-only nnU-Net took {format_duration(eq['labeled_only_train_s'])} for "
                  f"{eq['labeled_only_steps']} steps, so in A&D's time it would have had about "
                  f"{eq['labeled_only_steps_in_ad_time']} steps (an estimate from its measured speed, not a run)."]
    dev = r.get("dev")
    if dev:
        lines += ["", f"## Development cases ({len(dev['cases'])} unlabeled training cases, for decisions)", "",
                  "The first unlabeled cases of the split: A&D saw their images (never their labels); the all-labels "
                  "run trained on their labels and is not scored here. Methods are chosen on these, never on the "
                  "test cases.", "", "| Method | Dice (%) |", "|---|---|"]
        names = {key: entry.get("label") or labels.get(key, key)  # --dev_interpolations entries carry a label
                 for key, entry in dev["methods"].items()}
        for key, entry in dev["methods"].items():
            lines.append(f"| {names[key]} | {_pct(entry['Dice'])} |")
        baseline = r.get("baseline", "labeled_only")
        for key, entry in dev["methods"].items():
            if entry["paired_vs_baseline"] is not None:
                lines.append(_paired_line(entry["paired_vs_baseline"],
                                          f"dev: {names[key]} minus {labels.get(baseline, baseline)}"))
    return lines


def _breakdown_markdown(r: dict) -> List[str]:
    """Per-class Dice/HD95 tables, the per-domain table and the link to A&D's difficulty-weight plot."""
    rows = r["methods"]
    names = list(r["class_names"].values())
    lines = []
    for metric, unit, fmt in (("Dice", "%", _pct), ("HD95", "mm", _mm)):
        lines += ["", f"## Per class: {metric} ({unit})", "",
                  "| Method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for row in rows:
            lines.append(f"| {row['method']} | " + " | ".join(fmt(row["per_class"][n][metric]) for n in names) + " |")
    empty = {n: max(row["per_class"][n]["n_empty"] for row in rows) for n in names}
    if any(empty.values()):
        lines += ["", "Cases where both prediction and reference are empty for a class are excluded from that "
                  "class's mean (at most " + ", ".join(f"{n}: {k}" for n, k in empty.items() if k) + " per method)."]
    if r.get("domains"):
        dom = r["domains"]
        lines += ["", "## Per domain" + (" (SIMULATED domains)" if dom["simulated"] else ""), "",
                  "Test cases grouped by dataset.json `ad_domains`"
                  + {True: " (simulated scanner shifts)", False: " (real domains)", None: ""}[dom["simulated"]]
                  + "; mean ± std over the domain's cases of the per-case foreground mean over classes.", "",
                  "| Domain | test cases | Method | Dice (%) | HD95 (mm) |", "|---|---|---|---|---|"]
        for d, n in dom["test_cases_per_domain"].items():
            for row in rows:
                pd = (row["per_domain"] or {}).get(d)
                cells = (_pct(pd["Dice"]), _mm(pd["HD95"])) if pd else ("n/a (evaluated without domains)", "n/a")
                lines.append(f"| {d} | {n} | {row['method']} | {cells[0]} | {cells[1]} |")
    progress = r.get("ad_progress") or {}
    if progress:
        legend = ", ".join(["0 = background"] + [f"{k} = {n}" for k, n in r["class_names"].items()])
        lines += ["", "## A&D training curves", "", f"In the plot, class k is label k ({legend}).", ""]
        for row in rows:
            if row["key"] in progress:
                name = progress[row["key"]]
                lines.append(f"- {row['method']}: [difficulty weights trajectory]({name}) (`{name}`: losses, mu, "
                             f"pseudo-label foreground fraction and the DRS difficulty weights per class per epoch)"
                             if name else f"- {row['method']}: no {AD_PROGRESS} in {row['model_folder']}")
    return lines


def render_markdown(r: dict) -> str:
    """report.md's text from report.json's content ``r``."""
    b, s, mach = r["budget"], r["split"], r["machine"]
    setting = r.get("setting", "ssl")
    simulated = bool(r.get("domains") and r["domains"]["simulated"])
    lines = [f"# {SETTING_TITLES[setting]}: {r['dataset']} ({r['configuration']})"
             + (" on SIMULATED domains" if simulated else ""), ""]
    if simulated:
        lines += ["> **SIMULATED domains.** The domains of this dataset are simulated scanner shifts (dataset.json "
                  "`\"ad_simulated\": true`; parameters in the dataset's `domain_shift_recipe.json`), not real "
                  "scanners or vendors. Every number below was measured on simulated domains and must be reported "
                  "as such.", ""]
    if setting in SETTING_ROLES:
        lines += [SETTING_ROLES[setting], ""]
    lines += [f"{len(s['test'])} held-out test cases; mean ± std over cases; Dice/Jaccard in %, distances in mm at "
              f"the test labels' own (original) resolution. Final checkpoint of every run, "
              f"{'with mirroring test-time augmentation' if r['tta'] else 'no test-time augmentation'}.", "",
              "| Method | Dice (%) | Jaccard (%) | HD95 (mm) | ASD (mm) | train wall time | predict time |",
              "|---|---|---|---|---|---|---|"]
    for row in r["methods"]:
        m = row["metrics"]
        lines.append(f"| {row['method']} | {_pct(m['Dice'])} | {_pct(m['Jaccard'])} | {_mm(m['HD95'])} | "
                     f"{_mm(m['ASD'])} | {format_duration(row['train_wall_s'])} | {row['predict_wall_s']:.0f} s |")
    lines += _paired_markdown(r)
    lines += _breakdown_markdown(r)
    d = {row["key"]: row["metrics"]["Dice"]["mean"] for row in r["methods"]}
    lines += ["", "## Gap closure", ""]
    baseline = r.get("baseline", "labeled_only")
    formula = f"Gap closure (Dice_A&D - Dice_{baseline}) / (Dice_all_labels - Dice_{baseline})"
    if r["gap_closure"] is None:
        lines.append(f"{formula}: {r['gap_closure_reason']}.")
    else:
        caution = f" Caution, {r['gap_closure_reason']}." if r.get("gap_closure_reason") else ""
        lines.append(f"{formula} = **{100 * r['gap_closure']:.1f} %**.{caution}")
    if r["ad_beats_baseline"] is False:
        lines.append(f"\n**A&D does NOT beat {labels_of(r)[baseline]} here** (Dice {100 * d['ad']:.2f} % vs. "
                     f"{100 * d[baseline]:.2f} %).")
    if setting == "ssl":
        lines += ["", "## The paper's LA numbers (for orientation only)", "",
                  "| Split | Method | Dice (%) | Jaccard (%) | HD95 | ASD |", "|---|---|---|---|---|---|"]
        for split, methods in r["paper_LA"].items():
            for name, v in methods.items():
                cells = ["–" if v[k] is None else f"{v[k]:.2f}" for k in ("Dice", "Jaccard", "HD95", "ASD")]
                lines.append(f"| {split} | {name} | " + " | ".join(cells) + " |")
        lines += ["", "Paper gap closure at 10 %: (90.31 - 82.74) / (91.47 - 82.74) = 86.7 % (V-Net baselines). "
                  "Not comparable one to one: the paper trains for tens of thousands of steps, tests on the 20 "
                  "official test cases (here: a hold-out of training cases), and reports HD95/ASD as voxel distances "
                  "(here: mm; on LA's 0.625 mm grid, 1 voxel = 0.625 mm)."]
    lines += ["", "## Budget", "",
              f"- Requested {b['requested_steps']} optimizer steps; every run trains {b['num_epochs']} epochs x "
              f"{b['iterations_per_epoch']} iterations = **{b['optimizer_steps_per_run']} optimizer steps** "
              f"(one step = one labeled batch; A&D adds one unlabeled batch and {b['ddim_steps']} DDIM passes "
              f"without gradient per step)."
              + (f" With warm start, A&D's total is the same: nnU-Net on the labeled cases for "
                 f"{b['optimizer_steps_per_run'] - b['warm_start_steps']} steps, then {b['warm_start_steps']} A&D "
                 f"steps from that model (`adnnunet_warm_start`, then `nnUNetv2_train ... --c`)."
                 if b.get("warm_start_steps") else "")
              + (f" With fine-tuning, labeled-only (and all-labels) nnU-Net train {b['optimizer_steps_per_run']} "
                 f"steps; then A&D, the matched control (nnU-Net alone on the labeled cases) and the all-labels "
                 f"model each continue that model for {b['finetune_steps']} more steps at learning rate "
                 f"{b['finetune_lr']:g} (`adnnunet_warm_start`, then `nnUNetv2_train ... --c`)."
                 if b.get("finetune_steps") else ""),
              f"- {b['val_iterations_per_epoch']} validation iterations per epoch on the labeled cases (logged only; "
              f"no checkpoint selection). nnU-Net's final validation is skipped: the benchmark evaluates "
              f"checkpoint_final.pth on the hold-out test folder instead.",
              "- Train wall time: the whole `nnUNetv2_train` process (start-up, data loaders, training, "
              "checkpoints), summed over resumed attempts; predict time: the whole `nnUNetv2_predict` process.",
              f"- Environment: " + ", ".join(f"{k}={v}" for k, v in r["env"].items()) + "."]
    for row in r["methods"]:
        extra = f", {row['skipped_steps']} non-finite steps skipped" if row["skipped_steps"] is not None else ""
        if row["train_attempts"] > 1:
            extra += (f"; trained in {row['train_attempts']} attempts (resumed with --c; the wall time of "
                      f"interrupted attempts is not counted, the epoch time covers all epochs)")
        if row.get("train_commits"):
            extra += f"; trained with the code of commit {', '.join(row['train_commits'])}"
        lines.append(f"- {row['method']}: `{row['trainer']}` fold {row['fold']} ({row['training_data']}); "
                     f"epoch time {row['train_epoch_time_s']} s{extra}; model {row['model_folder']}")
    lines += ["", "## Split", "",
              f"- labeled (fold 0 train and validation): {len(s['labeled'])} cases",
              f"- unlabeled (imagesTr cases with hidden labels; A&D sees their images only): {len(s['unlabeled'])}"
              + (f", plus {len(s['imagesUnlabeled'])} imagesUnlabeled cases" if s["imagesUnlabeled"] else ""),
              f"- test (hold-out, never in planning, fingerprint or training): {len(s['test'])}: "
              + ", ".join(s["test"]),
              "- splits_final.json: fold 0 = {train: labeled, val: labeled} (written by `adnnunet_make_settings "
              "--setting ssl`, the paper's protocol: validation measures training fit, not generalization); fold 1 "
              "= {train: labeled + unlabeled, val: labeled}, appended by this benchmark for the fully supervised "
              "upper bound (it is the only run that reads the unlabeled cases' labels)."]
    if s["imagesTr_unused"]:
        lines.append(f"- imagesTr cases in neither list (unused): {len(s['imagesTr_unused'])}")
    lines += ["", "## Machine and provenance", "",
              f"- CPU: {mach['cpu']}, {mach['cores']} cores ({mach['usable_cores']} usable); device: {mach['device']}"
              + (f" ({mach['gpu']})" if mach.get("gpu") else ""),
              f"- Python {mach['python']}, torch {mach['torch']}, nnunetv2 {mach['nnunetv2']}",
              f"- commit when the report was written: {r['commit']} (each run's training commit: above)",
              f"- command: `{r['command']}`"]
    if len(r["invocations"]) > 1:
        lines.append(f"- resumed {len(r['invocations']) - 1} time(s)")
    if r["note"]:
        lines.append(f"- note: {r['note']}")
    return "\n".join(lines) + "\n"

