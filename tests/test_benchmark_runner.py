"""ad_nnunet/benchmark/: the SSL benchmark runner end to end on the phantom, LA preparation, and the GPU-tier
packaging."""
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ad_nnunet.benchmark import gpu_payload
from ad_nnunet.benchmark.budget import METHODS, Budget
from ad_nnunet.benchmark.gpu_wheels import stored_copy
from ad_nnunet.benchmark.pipeline import Benchmark
from ad_nnunet.benchmark.report import gap_closure, report_gap_closure
from ad_nnunet.benchmark.runner import StageError
from ad_nnunet.dataset_conversion import prepare_la
from ad_nnunet.entrypoints.benchmark import benchmark_entry, build_parser
from ad_nnunet.errors import ADInputError
from ad_nnunet.hashing import sha256_of

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_dataset(phantom_copy, tmp_path):
    """A planned phantom copy with labeled/unlabeled lists (2 labeled, 4 hidden-label) and its test folders."""
    ds = phantom_copy()
    train = sorted(f.name[: -len("_0000.nii.gz")] for f in Path(ds["raw"], "imagesTr").iterdir())
    (tmp_path / "labeled.txt").write_text("\n".join(train[:2]) + "\n")
    (tmp_path / "unlabeled.txt").write_text("\n".join(train[2:]) + "\n")
    return ds


def bench_args(ds, tmp_path, steps=4, extra=()):
    return ["--dataset", ds["dataset_name"], "--labeled", str(tmp_path / "labeled.txt"),
            "--unlabeled", str(tmp_path / "unlabeled.txt"), "--test_images", str(Path(ds["raw"], "imagesTs")),
            "--test_labels", str(Path(ds["raw"], "labelsTs")), "--preset", "tiny", "--steps", str(steps),
            "--iterations_per_epoch", "2", "--ddim_steps", "2", "--device", "cpu", "--np", "1",
            "--out", str(tmp_path / "out"), *extra]


@pytest.mark.slow
def test_benchmark_end_to_end_then_rerun_skips_everything(bench_dataset, tmp_path, capsys):
    ds = bench_dataset
    assert benchmark_entry(bench_args(ds, tmp_path)) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert [m["key"] for m in report["methods"]] == ["ad", "labeled_only", "full"]
    assert report["budget"]["optimizer_steps_per_run"] == 4 and report["budget"]["num_epochs"] == 2
    for m in report["methods"]:
        assert 0.0 <= m["metrics"]["Dice"]["mean"] <= 1.0 and m["train_wall_s"] > 0 and m["predict_wall_s"] > 0
    md = (out / "report.md").read_text()
    for label in ("A&D (ADTrainer)", "nnU-Net, labeled only", "nnU-Net, all labels (upper bound)", "Gap closure",
                  "90.31", "optimizer steps"):
        assert label in md, label
    assert report["gap_closure"] == gap_closure(*(m["metrics"]["Dice"]["mean"] for m in report["methods"]))

    # every run trained exactly the budget, with its final checkpoint, on the right fold
    for m in report["methods"]:
        folder = Path(m["model_folder"])
        assert folder.name == f"fold_{m['fold']}" and (folder / "checkpoint_final.pth").is_file()
        assert "final validation skipped" in "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    state = json.loads((out / "state.json").read_text())
    assert all(s["status"] == "done" for s in state["stages"].values())
    assert all(state["stages"][f"train_{k}"]["epochs_completed"] == 2 for k in ("ad", "labeled_only", "full"))

    # the hold-out never reaches settings or splits; fold 1 = all labels, fold 0 = labeled only
    test_ids = report["split"]["test"]
    assert test_ids
    # (the phantom's dataset.json maps every case, test cases too, to a domain; only the folds decide training)
    folds = json.dumps(json.loads(Path(ds["preprocessed"], "ad_settings.json").read_text())["folds"])
    splits = json.loads(Path(ds["preprocessed"], "splits_final.json").read_text())
    assert not any(t in folds or t in json.dumps(splits) for t in test_ids)
    labeled = (tmp_path / "labeled.txt").read_text().split()
    unlabeled = (tmp_path / "unlabeled.txt").read_text().split()
    assert splits[0]["train"] == labeled and splits[1]["train"] == sorted(labeled + unlabeled)

    # rerun: every stage is skipped, nothing is retrained
    mtime = os.path.getmtime(Path(report["methods"][0]["model_folder"]) / "checkpoint_final.pth")
    capsys.readouterr()
    assert benchmark_entry(bench_args(ds, tmp_path)) == 0
    printed = capsys.readouterr().out
    assert printed.count("already complete, skipped") == len(state["stages"])
    assert os.path.getmtime(Path(report["methods"][0]["model_folder"]) / "checkpoint_final.pth") == mtime
    assert len(json.loads((out / "state.json").read_text())["invocations"]) == 2

    # another budget in the same --out is refused
    assert benchmark_entry(bench_args(ds, tmp_path, steps=6)) == 2
    assert "other settings (steps differ)" in capsys.readouterr().err


def test_interrupted_training_resumes_with_c_and_failures_name_stage_and_log(bench_dataset, tmp_path, monkeypatch,
                                                                            capsys):
    """No training here: the commands are recorded instead of run."""
    ds = bench_dataset
    args = build_parser().parse_args(bench_args(ds, tmp_path))
    args.n_proc_da = 0
    bench = Benchmark(args, "cmd")
    method = METHODS[1]
    stage = f"train_{method.key}"
    bench.state["stages"][stage] = {"status": "started", "attempts_s": [None]}  # as left by a killed run
    calls, epoch_ends = [], [1.0, 3.5]

    def fake_run_cmd(name, cmd):
        calls.append(cmd)
        folder = bench.model_folder(method)
        folder.mkdir(parents=True, exist_ok=True)
        import torch
        torch.save({"current_epoch": len(epoch_ends) - 1, "logging": {
            "epoch_start_timestamps": [0.0, 2.0, 4.0][:len(epoch_ends)], "epoch_end_timestamps": epoch_ends}},
            folder / "checkpoint_final.pth")
        return 3.0

    monkeypatch.setattr(bench, "run_cmd", fake_run_cmd)
    monkeypatch.setenv("AD_BENCH_COMMIT", "c0ffee")  # the code the resumed attempt runs
    bench.state["stages"][stage]["commits"] = ["beef01"]  # ... and the killed one ran
    entry = bench.stage(stage, bench.train(method))
    assert calls[0][-1] == "--c" and entry["wall_s"] == 3.0 and entry["epoch_time_s"] == 2.5
    assert entry["commits"] == ["beef01", "c0ffee"]  # the report names both
    assert json.loads((tmp_path / "out" / "state.json").read_text())["stages"][stage]["status"] == "done"
    # a trainer that trained another number of epochs than the budget (its own num_epochs won) is refused
    epoch_ends.append(5.0)
    bench.state["stages"].pop(stage)
    # a fresh run never starts next to an earlier run's checkpoints: --c after an interruption would load them
    with pytest.raises(StageError, match=rf"stage '{stage}': .*fold_{method.fold} already holds "
                                         r"checkpoint_final.pth .* Fix: move that folder away"):
        bench.stage(stage, bench.train(method))
    assert len(calls) == 1
    (bench.model_folder(method) / "checkpoint_final.pth").unlink()
    bench.state["stages"].pop(stage)
    with pytest.raises(StageError, match=rf"stage '{stage}': {bench.trainer(method)} trained 3 epochs, the budget is "
                                         r"2, .* Fix: set num_epochs .* with make_variant"):
        bench.stage(stage, bench.train(method))

    monkeypatch.undo()
    bench.state["stages"].pop("plan", None)
    bad = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(StageError) as err:
        bench.stage("plan", lambda entry: {"wall_s": bench.run_cmd("plan", bad)})
    assert "stage 'plan' failed" in str(err.value) and str(tmp_path / "out" / "logs" / "plan.log") in str(err.value)
    assert "boom" in (tmp_path / "out" / "logs" / "plan.log").read_text()
    assert json.loads((tmp_path / "out" / "state.json").read_text())["stages"]["plan"]["status"] == "started"


def test_holdout_leak_and_bad_inputs_are_refused(bench_dataset, tmp_path):
    ds = bench_dataset
    parser = build_parser()
    # a test folder that contains training cases
    args = parser.parse_args(bench_args(ds, tmp_path))
    args.test_images, args.test_labels, args.n_proc_da = Path(ds["raw"], "imagesTr"), Path(ds["raw"], "labelsTr"), 0
    with pytest.raises(ADInputError, match="Hold-out case"):
        Benchmark(args, "cmd")
    (tmp_path / "bad.txt").write_text("no_such_case\n")
    args = parser.parse_args(bench_args(ds, tmp_path))
    args.labeled, args.n_proc_da = tmp_path / "bad.txt", 0
    with pytest.raises(ADInputError, match="not in"):
        Benchmark(args, "cmd")
    args = parser.parse_args(bench_args(ds, tmp_path) + ["--configuration", "3d_fullres"])
    args.n_proc_da = 0
    with pytest.raises(ADInputError, match="differs from preset"):
        Benchmark(args, "cmd")


def _test_ids(ds) -> list:
    return sorted(f.name[: -len(".nii.gz")] for f in Path(ds["raw"], "labelsTs").iterdir())


def _evaluate_untrained(bench, methods, lesion_missed_by=None):
    """No training: each method's 'predictions' are the test reference labels, except that the lesion is erased in
    the (method key, case) ``lesion_missed_by``; train/predict are recorded as done, evaluate runs for real."""
    import SimpleITK as sitk

    for m in methods:
        pred = bench.out / "predictions" / m.key
        pred.mkdir(parents=True)
        for c in bench.test:
            ref = sitk.ReadImage(str(bench.test_labels / f"{c}.nii.gz"))
            arr = sitk.GetArrayFromImage(ref)
            assert (arr == 3).any()  # every phantom case has a lesion
            if (m.key, c) == lesion_missed_by:
                arr[arr == 3] = 0
            img = sitk.GetImageFromArray(arr)
            img.CopyInformation(ref)
            sitk.WriteImage(img, str(pred / f"{c}.nii.gz"))
        bench.state["stages"][f"train_{m.key}"] = {"status": "done", "wall_s": 1.0, "attempts_s": [1.0],
                                                       "epoch_time_s": 1.0, "commits": ["abc1234"]}
        bench.state["stages"][f"predict_{m.key}"] = {"status": "done", "wall_s": 1.0}
        bench.stage(f"evaluate_{m.key}", bench.evaluate(m.key))


def test_report_per_class_and_per_domain_tables_simulated_banner_and_ad_progress(bench_dataset, tmp_path):
    """Labeled-only misses the lesion in the domain-B case; evaluate and report run for real on the phantom, whose
    dataset.json has "ad_domains"."""
    ds = bench_dataset
    raw = Path(ds["raw"])
    dataset_json = json.loads((raw / "dataset.json").read_text())
    test_ids = _test_ids(ds)
    dataset_json["ad_domains"].update({test_ids[0]: "A", test_ids[1]: "B"})
    dataset_json["ad_simulated"] = True
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    args = build_parser().parse_args(bench_args(ds, tmp_path, extra=("--setting", "uda")))
    args.n_proc_da = 0
    bench = Benchmark(args, "cmd")
    _evaluate_untrained(bench, METHODS, lesion_missed_by=("labeled_only", test_ids[1]))
    ad_folder = bench.model_folder(METHODS[0])
    ad_folder.mkdir(parents=True)
    (ad_folder / "ad_progress.png").write_bytes(b"fake png")
    bench.stage("report", bench.report)

    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["setting"] == "uda" and report["class_names"] == {"1": "organ", "2": "wall", "3": "lesion"}
    assert report["domains"] == {"source": "dataset.json ad_domains", "simulated": True,
                                 "test_cases_per_domain": {"A": 1, "B": 1}}
    rows = {r["key"]: r for r in report["methods"]}
    assert rows["ad"]["per_class"]["lesion"]["Dice"]["mean"] == pytest.approx(1.0)
    lesion = rows["labeled_only"]["per_class"]["lesion"]
    assert lesion["Dice"]["mean"] == pytest.approx(0.5) and lesion["HD95"]["mean"] > 0 and lesion["label"] == 3
    assert rows["labeled_only"]["per_domain"]["A"]["Dice"]["mean"] == pytest.approx(1.0)
    assert rows["labeled_only"]["per_domain"]["B"]["Dice"]["mean"] == pytest.approx(2 / 3)
    assert rows["labeled_only"]["per_domain"]["B"]["per_class"]["lesion"]["Dice"]["mean"] == pytest.approx(0.0)
    assert report["ad_progress"] == {"ad": "ad_progress.png"}
    assert (out / "ad_progress.png").read_bytes() == b"fake png"

    md = (out / "report.md").read_text()
    assert md.startswith("# UDA benchmark") and "SIMULATED domains" in md.split("\n\n")[1]
    for text in ("## Per class: Dice (%)", "## Per class: HD95 (mm)", "| Method | organ | wall | lesion |",
                 "## Per domain (SIMULATED domains)", "| Domain | test cases | Method | Dice (%) | HD95 (mm) |",
                 "| B | 1 | nnU-Net, labeled only | 66.67 ± 0.00 |", "| A | 1 | A&D (ADTrainer) | 100.00 ± 0.00 |",
                 "| nnU-Net, labeled only | 100.00 ± 0.00 | 100.00 ± 0.00 | 50.00 ± 50.00 |",
                 "[difficulty weights trajectory](ad_progress.png)", "trained with the code of commit abc1234",
                 "- commit when the report was written: "):
        assert text in md, text
    assert "90.31" not in md  # the paper's LA numbers belong to the plain ssl report only
    # paired per-case comparison: A&D equals labeled-only on one case and is 1/3 better on the other
    paired = report["paired"]["ad_vs_labeled_only"]
    assert (paired["n"], paired["wins"], paired["losses"], paired["ties"]) == (2, 1, 0, 1)
    assert paired["mean_diff"] == pytest.approx(1 / 6) and paired["ci95"] == pytest.approx([0.0, 1 / 3])
    assert "A&D minus nnU-Net, labeled only: **+16.67** Dice points per case" in md
    assert "includes 0: not distinguishable from noise" in md and "Equal wall time" in md


def test_warm_start_budget_trainers_and_commands(bench_dataset, tmp_path, monkeypatch):
    """--warm_start_steps: nnU-Net trains steps - W, A&D W steps from it (adnnunet_warm_start, then --c). No training
    here: commands are recorded; each fake run writes the checkpoint the next stage expects."""
    ds = bench_dataset
    args = build_parser().parse_args(bench_args(ds, tmp_path, steps=6, extra=(
        "--warm_start_steps", "2", "--dev_cases", "2", "--methods", "ad", "labeled_only")))
    args.n_proc_da = 0
    bench = Benchmark(args, "cmd")
    assert [m.key for m in bench.methods] == ["warm_source", "ad", "labeled_only"]
    assert [bench.trainer(m) for m in bench.methods] == [
        "BenchnnUNetTrainer_2x2", "BenchADTrainer_1x2_ddim2", "BenchnnUNetTrainer_3x2"]
    assert bench.dev == sorted((tmp_path / "unlabeled.txt").read_text().split())[:2]
    assert bench.dev_methods == bench.methods  # the all-labels run is never scored on development cases
    module = bench.write_trainers().read_text()
    for name, epochs in (("BenchnnUNetTrainer_2x2", 2), ("BenchADTrainer_1x2_ddim2", 1), ("BenchnnUNetTrainer_3x2", 3)):
        declaration = next(line for line in module.splitlines() if line.startswith(f"{name} = make_variant("))
        assert f"num_epochs={epochs}," in declaration
    assert module.count("ddim_steps=2") == 1

    calls = []

    def fake_run_cmd(stage, cmd):
        calls.append(cmd)
        return 1.0

    monkeypatch.setattr(bench, "run_cmd", fake_run_cmd)
    monkeypatch.setattr(bench, "_checkpoint_facts", lambda path: {"epochs_completed": 1})  # A&D's budget: 2 steps
    ad = bench.methods[1]
    bench.model_folder(ad).mkdir(parents=True)
    (bench.model_folder(ad) / "checkpoint_final.pth").write_bytes(b"")
    bench.stage("warm_start", bench.warm_start(ad))
    bench.stage("train_ad", bench.train(ad))
    source = bench.model_folder(bench.methods[0]) / "checkpoint_final.pth"
    assert calls[0][:1] == ["adnnunet_warm_start"] and calls[0][calls[0].index("-i") + 1] == str(source)
    assert calls[0][calls[0].index("-tr") + 1] == "BenchADTrainer_1x2_ddim2"
    assert calls[1][:1] == ["nnUNetv2_train"] and calls[1][-1] == "--c"

    # budgets that do not add up are refused
    # (and other interpolation weights need development cases, a warm-started A&D run and weights in [0, 1])
    for bad, message in ((("--warm_start_steps", "6"), "must lie between 0 and --steps"),
                         (("--warm_start_steps", "3"), "multiples of --iterations_per_epoch"),
                         (("--dev_cases", "99"), "exceeds the 4 unlabeled cases"),
                         (("--finetune_steps", "3"), "positive multiple"),
                         (("--finetune_steps", "2", "--warm_start_steps", "2"), "without --warm_start_steps"),
                         (("--finetune_steps", "2", "--finetune_lr", "0"), "--finetune_lr > 0"),
                         (("--dev_interpolations", "1"), "needs --dev_cases K and a warm-started A&D run"),
                         (("--dev_cases", "1", "--dev_interpolations", "1"), "warm-started"),
                         (("--dev_cases", "1", "--finetune_steps", "2", "--dev_interpolations", "0.5", "2"),
                          "--dev_interpolations 2: must be in \\[0, 1\\]")):
        with pytest.raises(ADInputError, match=message):  # refused before --out is made
            Benchmark(build_parser().parse_args(bench_args(ds, tmp_path, steps=6, extra=bad + ("--out", str(
                tmp_path / "x")))), "cmd")
        assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_finetune_protocol_continues_the_labeled_only_model_with_ad_and_with_its_matched_control(bench_dataset,
                                                                                                  tmp_path):
    """--finetune_steps F: labeled-only and all-labels nnU-Net train the budget; A&D, the matched control and the
    all-labels model each continue their model for F steps at --finetune_lr; A&D is compared with the control."""
    ds = bench_dataset
    assert benchmark_entry(bench_args(ds, tmp_path, steps=2, extra=(
        "--finetune_steps", "2", "--dev_cases", "1", "--ad_trainer", "ADTrainer_finetune"))) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    rows = {r["key"]: r for r in report["methods"]}
    assert list(rows) == ["labeled_only", "control", "ad", "full_source", "full"]
    assert {k: (r["trainer"], r["fold"], r["optimizer_steps"]) for k, r in rows.items()} == {
        "labeled_only": ("BenchnnUNetTrainer_1x2", 0, 2), "control": ("BenchnnUNetTrainer_1x2_lr0p001", 0, 2),
        "ad": ("BenchADTrainer_finetune_1x2_lr0p001_ddim2", 0, 2), "full_source": ("BenchnnUNetTrainer_1x2", 1, 2),
        "full": ("BenchnnUNetTrainer_1x2_lr0p001", 1, 2)}
    state = json.loads((out / "state.json").read_text())["stages"]
    for run, source in (("ad", "labeled_only"), ("control", "labeled_only"), ("full", "full_source")):
        record = json.loads((Path(rows[run]["model_folder"]) / "warm_start.json").read_text())
        assert record["source_checkpoint"] == str(Path(rows[source]["model_folder"]) / "checkpoint_final.pth")
        assert state[f"train_{run}"]["command"].endswith("--c") and state[f"train_{run}"]["epochs_completed"] == 1
    assert "warm_start" in state and "warm_start_control" in state and "warm_start_full" in state
    module = (out / "trainers" / "bench_trainers.py").read_text()
    assert module.count("initial_lr=0.001") == 2  # the A&D class; one class for control and all labels
    assert report["baseline"] == "control" and list(report["paired"]) == ["ad_vs_control", "ad_vs_labeled_only"]
    dice = {k: r["metrics"]["Dice"]["mean"] for k, r in rows.items()}
    assert report["gap_closure"] == report_gap_closure(dice, "control")[0]
    assert list(report["dev"]["methods"]) == ["labeled_only", "control", "ad"]  # the all-labels runs saw their labels
    md = (out / "report.md").read_text()
    assert "nnU-Net, labeled only, continued (A&D's matched control) (2 + 2 steps)" in md
    assert "(Dice_A&D - Dice_control) / (Dice_all_labels - Dice_control)" in md
    assert "continue that model for 2 more steps at learning rate 0.001" in md

    # a rerun adds A&D's model at other interpolation weights, scored on the development cases only: a = 0 is the
    # model A&D started from, so it predicts exactly what the labeled-only model predicts
    assert benchmark_entry(bench_args(ds, tmp_path, steps=2, extra=(
        "--finetune_steps", "2", "--dev_cases", "1", "--ad_trainer", "ADTrainer_finetune",
        "--dev_interpolations", "0", "1"))) == 0
    state = json.loads((out / "state.json").read_text())["stages"]
    assert [k for k in state if "ad_a" in k] == ["export_ad_a0", "predict_dev_ad_a0", "evaluate_dev_ad_a0",
                                                 "export_ad_a1", "predict_dev_ad_a1", "evaluate_dev_ad_a1"]
    assert "--interpolation 0" in state["export_ad_a0"]["command"] and "predict_ad_a0" not in state
    report = json.loads((out / "report.json").read_text())
    dev = report["dev"]["methods"]
    assert list(dev) == ["labeled_only", "control", "ad", "ad_a0", "ad_a1"] and dev["ad_a1"]["interpolation"] == 1
    import SimpleITK as sitk
    case = report["dev"]["cases"][0]
    np.testing.assert_array_equal(*(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions_dev" / k /
                                                                              f"{case}.nii.gz")))
                                    for k in ("labeled_only", "ad_a0")))
    assert dev["ad_a0"]["Dice"] == dev["labeled_only"]["Dice"]
    md = (out / "report.md").read_text()
    assert "| A&D exported at a = 1 ((1 - a) x start + a x trained) |" in md
    assert "dev: A&D exported at a = 0 ((1 - a) x start + a x trained) minus" in md


def test_methods_without_full_two_report_rows_no_gap_closure_resume_adds_or_drops_it(bench_dataset, tmp_path, capsys):
    """--methods ad labeled_only: no training, evaluate and report run for real (as in the test above)."""
    ds = bench_dataset
    parser = build_parser()
    assert parser.parse_args(bench_args(ds, tmp_path)).methods == ["ad", "labeled_only", "full"]
    assert benchmark_entry(bench_args(ds, tmp_path, extra=("--methods", "ad", "full"))) == 2
    err = capsys.readouterr().err
    assert "--methods ad full lacks labeled_only" in err and "Fix: pass --methods ad labeled_only" in err
    assert not (tmp_path / "out").exists()  # refused before anything is written
    with pytest.raises(SystemExit):
        parser.parse_args(bench_args(ds, tmp_path, extra=("--methods", "ad", "labeled_only", "vnet")))
    assert "invalid choice: 'vnet'" in capsys.readouterr().err

    def benchmark(*methods):
        args = parser.parse_args(bench_args(ds, tmp_path, extra=("--methods", *methods)))
        args.n_proc_da = 0
        return Benchmark(args, "cmd")

    out = tmp_path / "out"
    bench = benchmark("labeled_only", "ad")
    assert [m.key for m in bench.methods] == ["ad", "labeled_only"]  # METHODS order, whatever the command line's
    _evaluate_untrained(bench, bench.methods, lesion_missed_by=("labeled_only", _test_ids(ds)[0]))
    bench.stage("report", bench.report)
    assert json.loads((out / "state.json").read_text())["methods"] == ["ad", "labeled_only"]
    report = json.loads((out / "report.json").read_text())
    assert [r["key"] for r in report["methods"]] == ["ad", "labeled_only"]
    assert report["gap_closure"] is None and report["ad_beats_baseline"] is True
    assert report["gap_closure_reason"] == ("not computed, because the all-labels run was skipped (--methods "
                                            "without full)")
    md = (out / "report.md").read_text()
    assert f"(Dice_all_labels - Dice_labeled_only): {report['gap_closure_reason']}." in md
    assert "all labels (upper bound)" not in md and "90.31" in md  # the ssl report keeps the paper's table
    # the main table and the two per-class tables: one row per run
    assert [line.split(" | ")[0] for line in md.splitlines() if line.startswith(("| A&D", "| nnU-Net"))] == \
        ["| A&D (ADTrainer)", "| nnU-Net, labeled only"] * 3
    per_domain = md.split("## Per domain")[1].split("\n## ")[0].splitlines()
    assert len([line for line in per_domain if line.startswith("| ") and "| Method |" not in line]) == \
        2 * len(report["domains"]["test_cases_per_domain"])

    # resume with full added: only its stages are new, and the report is rebuilt with three rows
    bench = benchmark("ad", "labeled_only", "full")
    assert "report" not in bench.state["stages"] and bench.state["stages"]["evaluate_ad"]["status"] == "done"
    _evaluate_untrained(bench, METHODS[2:])
    bench.stage("report", bench.report)
    report = json.loads((out / "report.json").read_text())
    assert [r["key"] for r in report["methods"]] == ["ad", "labeled_only", "full"]
    assert report["gap_closure"] == pytest.approx(gap_closure(*(r["metrics"]["Dice"]["mean"]
                                                                 for r in report["methods"])))
    assert report["gap_closure_reason"] is None

    # resume with full dropped again: its results stay on disk, the rebuilt report leaves it out
    bench = benchmark("ad", "labeled_only")
    bench.stage("report", bench.report)
    assert [r["key"] for r in json.loads((out / "report.json").read_text())["methods"]] == ["ad", "labeled_only"]


def test_budget_and_gap_closure():
    b = Budget(steps=101, iterations_per_epoch=50, ddim_steps=10)
    assert (b.num_epochs, b.total_steps) == (3, 150)
    assert b.trainer_name("ad") == "BenchADTrainer_3x50_ddim10" and b.trainer_name("nnunet") == "BenchnnUNetTrainer_3x50"
    assert gap_closure(0.85, 0.80, 0.90) == pytest.approx(0.5)
    assert gap_closure(0.75, 0.80, 0.90) == pytest.approx(-0.5)
    assert gap_closure(0.85, 0.80, 0.80) is None and gap_closure(0.85, 0.80, 0.70) is None
    assert gap_closure(None, 0.8, 0.9) is None
    assert report_gap_closure({"ad": 0.85, "labeled_only": 0.80, "full": 0.90}) == (pytest.approx(0.5), None)
    gap, reason = report_gap_closure({"ad": 0.85, "labeled_only": 0.80, "full": 0.80})
    assert gap is None and reason.startswith("undefined, because the all-labels model is not better")
    # session 2's LA result: the denominator (0.31 points) is noise, so the ratio comes with a caution
    gap, reason = report_gap_closure({"ad": 0.7140, "labeled_only": 0.8213, "full": 0.8244})
    assert gap == pytest.approx(-34.6, abs=0.1) and reason.startswith("not meaningful: the all-labels model is only "
                                                                       "0.31 Dice points better")


def _fake_la(root: Path, n: int = 10) -> Path:
    """A miniature Dataset101_LA: n cases of 4x5x6 voxels, lists with 2 labeled / n-2 unlabeled cases."""
    import SimpleITK as sitk

    src = root / "Dataset101_LA"
    for sub in ("imagesTr", "labelsTr", "splits"):
        (src / sub).mkdir(parents=True)
    ids = [f"LA_{i:02d}" for i in range(n)]
    for c in ids:
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8)), str(src / "imagesTr" / f"{c}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8)), str(src / "labelsTr" / f"{c}.nii.gz"))
    (src / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "la": 1},
                                                  "numTraining": n, "file_ending": ".nii.gz"}))
    (src / "splits" / "labeled_0.1.txt").write_text("\n".join(ids[:2]) + "\n")
    (src / "splits" / "unlabeled_0.1.txt").write_text("\n".join(ids[2:]) + "\n")
    return src


def test_prepare_la_holdout_from_unlabeled_atomic_and_no_overwrite(tmp_path):
    src = _fake_la(tmp_path / "shared")
    raw = tmp_path / "raw"
    target = prepare_la.prepare(src, raw, "0.1", holdout=3, seed=0)
    split = json.loads((target / "benchmark_split.json").read_text())
    unlabeled_src = (src / "splits" / "unlabeled_0.1.txt").read_text().split()
    assert split["test"] == prepare_la.draw_holdout(unlabeled_src, 3, 0) and set(split["test"]) <= set(unlabeled_src)
    assert split["labeled"] == ["LA_00", "LA_01"] and len(split["unlabeled"]) == 5
    tr = sorted(f.name for f in (target / "imagesTr").iterdir())
    ts = sorted(f.name for f in (target / "imagesTs").iterdir())
    assert len(tr) == 7 and len(ts) == 3 and not set(tr) & set(ts)
    assert sorted(f.name for f in (target / "labelsTs").iterdir()) == [f"{c}.nii.gz" for c in split["test"]]
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 7
    assert (target / "splits" / "unlabeled.txt").read_text().split() == split["unlabeled"]
    assert [p.name for p in raw.iterdir()] == [target.name]  # no temp folder left behind
    with pytest.raises(ADInputError, match="already exists"):
        prepare_la.prepare(src, raw, "0.1", holdout=3, seed=0)
    target = prepare_la.prepare(src, raw, "0.1", holdout=3, seed=1, overwrite=True)
    assert json.loads((target / "benchmark_split.json").read_text())["seed"] == 1
    with pytest.raises(ADInputError, match="between 1 and"):
        prepare_la.prepare(src, raw, "0.1", holdout=8, seed=0, overwrite=True)


def test_gpu_tier_script_syntax_and_pack_size_check(tmp_path):
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_tier.sh")]).returncode == 0
    (tmp_path / "a.bin").write_bytes(os.urandom(3000))
    (tmp_path / "b.bin").write_bytes(os.urandom(2000))
    assert gpu_payload.folder_size(tmp_path) == 5000
    gpu_payload.check_size(tmp_path, limit_bytes=5000)
    with pytest.raises(ADInputError, match="over"):
        gpu_payload.check_size(tmp_path, limit_bytes=4999)


def test_pack_helpers_wheel_rezip_archive_roundtrip_and_verify(tmp_path):
    src = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr("pkg/sub/tests/test_a.py", "assert True\n")
        z.writestr("pkg-1.0.dist-info/RECORD", "pkg/__init__.py,,\npkg/sub/tests/test_a.py,,\n"
                                               "pkg-1.0.dist-info/RECORD,,\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    assert stored_copy(src, wheels / src.name, re.compile(r"pkg/(?:[^/]+/)*tests/")) == 1
    with zipfile.ZipFile(wheels / src.name) as z:
        assert z.namelist() == ["pkg/__init__.py", "pkg-1.0.dist-info/RECORD"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        assert b"tests" not in z.read("pkg-1.0.dist-info/RECORD")

    payload = tmp_path / "payload"
    payload.mkdir()
    gpu_payload.write_tar_xz(wheels, payload / "wheels.tar.xz", delta=True)
    gpu_payload.extract(payload / "wheels.tar.xz", tmp_path / "unpacked")
    assert (tmp_path / "unpacked" / src.name).read_bytes() == (wheels / src.name).read_bytes()

    archive = payload / "wheels.tar.xz"
    manifest = {"commit": "abc", "source_digest": gpu_payload.source_digest(), "size_bytes": 1,
                "files": {archive.name: {"bytes": archive.stat().st_size, "sha256": sha256_of(archive)}}}
    (payload / "manifest.json").write_text(json.dumps(manifest))
    assert gpu_payload.verify(payload)["commit"] == "abc"
    (payload / "manifest.json").write_text(json.dumps(dict(manifest, source_digest="0" * 64)))
    with pytest.raises(ADInputError, match="other sources"):
        gpu_payload.verify(payload)
    (payload / "manifest.json").write_text(json.dumps(manifest))
    archive.write_bytes(archive.read_bytes()[:-1])
    with pytest.raises(ADInputError, match="differs from the manifest"):
        gpu_payload.verify(payload)


def test_extra_trainers_are_ladder_rungs_with_the_same_budget(bench_dataset, tmp_path):
    ds = bench_dataset
    args = build_parser().parse_args(bench_args(ds, tmp_path, extra=(
        "--methods", "ad", "labeled_only", "--extra_trainers", "nnUNetTrainerNoDeepSupervision", "ADTrainer_paper")))
    bench = Benchmark(args, "cmd")
    assert [bench.trainer(m) for m in bench.methods] == [
        "BenchADTrainer_2x2_ddim2", "BenchnnUNetTrainer_2x2", "BenchnnUNetTrainerNoDeepSupervision_2x2",
        "BenchADTrainer_paper_2x2_ddim2"]
    module_file = bench.write_trainers()
    namespace = {}
    exec(compile(module_file.read_text(), str(module_file), "exec"), namespace)  # the generated module imports
    from ad_nnunet.training.variants import ADTrainer_paper
    from nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerNoDeepSupervision import (
        nnUNetTrainerNoDeepSupervision)
    assert issubclass(namespace["BenchADTrainer_paper_2x2_ddim2"], ADTrainer_paper)
    assert issubclass(namespace["BenchnnUNetTrainerNoDeepSupervision_2x2"], nnUNetTrainerNoDeepSupervision)
    with pytest.raises(ADInputError, match="no such trainer class"):
        Benchmark(build_parser().parse_args(bench_args(ds, tmp_path / "y", extra=(
            "--extra_trainers", "NoSuchTrainer"))), "cmd")


def test_ad_trainer_variant_is_the_ad_method_with_the_budget(bench_dataset, tmp_path):
    ds = bench_dataset
    args = build_parser().parse_args(bench_args(ds, tmp_path, steps=6, extra=(
        "--warm_start_steps", "2", "--methods", "ad", "labeled_only", "--ad_trainer", "ADTrainer_finetune")))
    bench = Benchmark(args, "cmd")
    assert [bench.trainer(m) for m in bench.methods] == [
        "BenchnnUNetTrainer_2x2", "BenchADTrainer_finetune_1x2_ddim2", "BenchnnUNetTrainer_3x2"]
    assert bench.methods[1].label == "A&D (ADTrainer_finetune)" and bench.config()["ad_trainer"] == "ADTrainer_finetune"
    module_file = bench.write_trainers()
    namespace = {}
    exec(compile(module_file.read_text(), str(module_file), "exec"), namespace)
    from ad_nnunet.training.variants import ADTrainer_finetune
    assert issubclass(namespace["BenchADTrainer_finetune_1x2_ddim2"], ADTrainer_finetune)
    with pytest.raises(ADInputError, match="is not an A&D trainer"):
        Benchmark(build_parser().parse_args(bench_args(ds, tmp_path / "y", extra=(
            "--ad_trainer", "nnUNetTrainerNoDeepSupervision"))), "cmd")



def test_with_finetune_steps_an_ad_extra_trainer_continues_the_labeled_only_model(bench_dataset, tmp_path):
    # A&D variants are compared with A&D under the same protocol; an nnU-Net rung stays a cold run of the budget
    ds = bench_dataset
    protocol = ("--finetune_steps", "2", "--finetune_lr", "0.005", "--methods", "ad", "labeled_only",
                "--ad_trainer", "ADTrainer_finetune")
    Benchmark(build_parser().parse_args(bench_args(ds, tmp_path, extra=protocol)), "cmd")
    # a rerun in the same --out may add rungs, as it may add methods
    bench = Benchmark(build_parser().parse_args(bench_args(ds, tmp_path, extra=protocol + (
        "--extra_trainers", "ADTrainer_finetune_confident", "nnUNetTrainerNoDeepSupervision"))), "cmd")
    assert [bench.trainer(m) for m in bench.methods] == [
        "BenchnnUNetTrainer_2x2", "BenchnnUNetTrainer_1x2_lr0p005", "BenchADTrainer_finetune_1x2_lr0p005_ddim2",
        "BenchADTrainer_finetune_confident_1x2_lr0p005_ddim2", "BenchnnUNetTrainerNoDeepSupervision_2x2"]
    assert bench.starts == {"control": "labeled_only", "ad": "labeled_only",
                            "ADTrainer_finetune_confident": "labeled_only"}
    module_file = bench.write_trainers()
    namespace = {}
    exec(compile(module_file.read_text(), str(module_file), "exec"), namespace)
    rung = namespace["BenchADTrainer_finetune_confident_1x2_lr0p005_ddim2"]
    assert rung.overrides["initial_lr"] == 0.005 and rung.overrides["num_epochs"] == 1
    extra = next(m for m in bench.methods if m.key == "ADTrainer_finetune_confident")
    assert bench.warm_start_stage(extra) == "warm_start_ADTrainer_finetune_confident"
    assert bench.state["methods"][-2:] == ["ADTrainer_finetune_confident", "nnUNetTrainerNoDeepSupervision"]
