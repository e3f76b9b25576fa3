"""adnnunet_pseudolabels and adnnunet_rank_unlabeled on one briefly trained tiny A&D model."""
import csv
import json
import os
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ad_nnunet import console_command, ext_trainer_dir
from ad_nnunet.checkpoints import load_checkpoint
from ad_nnunet.entrypoints.results import pseudolabels_entry, rank_unlabeled_entry
from ad_nnunet.errors import ADInputError
from ad_nnunet.data.raw import list_unlabeled_cases
from ad_nnunet.export import unet_state_dict
from ad_nnunet.hashing import sha256_of
from ad_nnunet.pseudolabels import CSV_COLUMNS, MARKER_FORMAT, SCORES, claim_output_folder, foreground_mean_dice

CONFIG = "3d_tiny"
TRAINER = "ADTrainer_pltest"
# ADTrainer_tiny shortened to one epoch of two steps, without the final validation: the test needs a checkpoint and
# ad_split.json written by nnUNetv2_train, not a good model (keeps this file within about two minutes on 2 cores).
TEST_TRAINER_MODULE = '''
from ad_nnunet.training.variants import ADTrainer_tiny, make_variant


class ADTrainer_tinyNoFinalValidation(ADTrainer_tiny):
    def perform_actual_validation(self, save_probabilities: bool = False):
        pass


ADTrainer_pltest = make_variant("ADTrainer_pltest", ADTrainer_tinyNoFinalValidation, num_epochs=1,
                                num_iterations_per_epoch=2)
'''


def run_cli(args, **kwargs):
    return subprocess.run([console_command(args[0])] + [str(a) for a in args[1:]], env=dict(os.environ),
                          capture_output=True, text=True, **kwargs)


def test_foreground_mean_dice():
    a = torch.tensor([0, 1, 1, 2, 2, 0])
    assert foreground_mean_dice(a, a, [1, 2]) == 1.0
    assert foreground_mean_dice(a, torch.tensor([0, 2, 2, 1, 1, 0]), [1, 2]) == 0.0
    # class 1: 2*1/(2+1); class 2: identical; class 3 absent from both counts as agreement
    b = torch.tensor([0, 1, 0, 2, 2, 0])
    assert abs(foreground_mean_dice(a, b, [1, 2, 3]) - (2 / 3 + 1 + 1) / 3) < 1e-12


def test_rank_without_pseudolabels_is_an_error(tmp_path, capsys):
    assert rank_unlabeled_entry(["-i", str(tmp_path), "--top", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adnnunet_rank_unlabeled: error:") and "pseudolabels.csv" in err
    assert "Fix: run adnnunet_pseudolabels" in err


def _outputs(folder):
    """{relative path: mtime_ns} of every file under folder."""
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


def _labels(folder, cases, ending):
    return {c: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labels", c + ending))) for c in cases}


def _read_csv(folder):
    with open(os.path.join(folder, "pseudolabels.csv"), newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_pseudolabels_of_a_trained_model(tiny, tmp_path, monkeypatch, capsys):
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "pseudolabel_test_trainers.py").write_text(TEST_TRAINER_MODULE)
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(ext), ext_trainer_dir()]))
    dataset = str(tiny["dataset_id"])
    train = run_cli(["nnUNetv2_train", dataset, CONFIG, "0", "-tr", TRAINER, "-device", "cpu"])
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    run = os.path.join(os.environ["nnUNet_results"], tiny["dataset_name"], f"{TRAINER}__nnUNetPlans__{CONFIG}")
    unlabeled = json.load(open(os.path.join(run, "fold_0", "ad_split.json")))["unlabeled"]
    assert len(unlabeled) >= 3
    dataset_json = json.load(open(os.path.join(tiny["raw"], "dataset.json")))
    ending = dataset_json["file_ending"]
    images = list_unlabeled_cases(tiny["raw"], dataset_json)
    model = ["-d", dataset, "-c", CONFIG, "-f", "0", "-tr", TRAINER, "--ddim_steps", "2", "--device", "cpu"]

    # ---- every unlabeled case, through the installed command
    out = tmp_path / "pl"
    done = run_cli(["adnnunet_pseudolabels", *model, "-o", out])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    allowed = set(dataset_json["labels"].values())
    scores = {}
    for case in unlabeled:
        assert (out / "overlays" / f"{case}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        source = sitk.ReadImage(images[case][0])
        label = sitk.ReadImage(str(out / "labels" / f"{case}{ending}"))
        assert label.GetSize() == source.GetSize()
        np.testing.assert_allclose(label.GetSpacing(), source.GetSpacing())
        np.testing.assert_allclose(label.GetOrigin(), source.GetOrigin())
        np.testing.assert_allclose(label.GetDirection(), source.GetDirection())
        values = sitk.GetArrayFromImage(label)
        assert set(np.unique(values).tolist()) <= allowed
        scores[case] = json.load(open(out / "cases" / f"{case}.json"))
        expected_ml = (values > 0).sum() * np.prod(source.GetSpacing()) / 1000
        assert abs(scores[case]["foreground_ml"] - expected_ml) < 1e-6
        for key in ("mean_confidence", "agreement", "ddim_spread"):
            assert 0 <= scores[case][key] <= 1, (case, key)
        assert abs(scores[case]["disagreement"] - (1 - scores[case]["agreement"] + scores[case]["ddim_spread"])) < 1e-9

    columns, rows = _read_csv(out)
    assert tuple(columns) == CSV_COLUMNS
    assert sorted(r["case"] for r in rows) == sorted(unlabeled)
    for row in rows:
        for key in SCORES:
            assert float(row[key]) == scores[row["case"]][key], (row["case"], key)
    ranked = sorted(rows, key=lambda r: int(r["rank"]))
    assert [int(r["rank"]) for r in ranked] == list(range(1, len(unlabeled) + 1))
    disagreements = [float(r["disagreement"]) for r in ranked]
    assert disagreements == sorted(disagreements, reverse=True)
    page = (out / "index.html").read_text()
    positions = [page.index(f'src="overlays/{r["case"]}.png"') for r in ranked]
    assert positions == sorted(positions)
    marker = json.load(open(out / "pseudolabels.json"))
    checkpoint = os.path.join(run, "fold_0", "checkpoint_final.pth")
    assert marker["checkpoint_sha256"] == sha256_of(checkpoint)
    assert (marker["trainer"], marker["fold"], marker["ddim_steps"], marker["seed"]) == (TRAINER, "0", 2, 0)

    # ---- a rerun skips finished cases; a case whose outputs are incomplete is redone, to the same label
    first_labels = _labels(out, unlabeled, ending)
    redo = ranked[0]["case"]
    os.remove(out / "cases" / f"{redo}.json")
    before = _outputs(out)
    assert pseudolabels_entry([*model, "-o", str(out)]) == 0
    after = _outputs(out)
    for case in unlabeled:
        for path in (f"labels/{case}{ending}", f"overlays/{case}.png", f"cases/{case}.json"):
            assert (after[path] == before.get(path)) == (case != redo), path
    for case, label in _labels(out, unlabeled, ending).items():
        np.testing.assert_array_equal(label, first_labels[case], err_msg=case)
    assert _read_csv(out)[1] == rows

    # ---- --cases restricts; the same seed gives the same labels in a new folder
    chosen = sorted(unlabeled)[:2]
    only = tmp_path / "only"
    assert pseudolabels_entry([*model, "-o", str(only), "--cases", *chosen]) == 0
    assert sorted(os.listdir(only / "labels")) == [c + ending for c in chosen]
    assert sorted(os.listdir(only / "overlays")) == [c + ".png" for c in chosen]
    assert sorted(r["case"] for r in _read_csv(only)[1]) == chosen
    for case, label in _labels(only, chosen, ending).items():
        np.testing.assert_array_equal(label, first_labels[case], err_msg=case)

    # ---- which scan to label next
    capsys.readouterr()
    assert rank_unlabeled_entry(["-i", str(out), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [ranked[0]["case"], ranked[1]["case"]]
    assert f"disagreement {float(ranked[0]['disagreement']):.4f}" in lines[0]

    # ---- bad input: exit status 2, "adnnunet_pseudolabels: error: ...", nothing written
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    # a plain nnU-Net model: the run folder of another trainer whose checkpoint holds the U-Net only
    plain_fold = os.path.join(os.path.dirname(run), f"nnUNetTrainer__nnUNetPlans__{CONFIG}", "fold_0")
    os.makedirs(plain_fold)
    for name in ("plans.json", "dataset.json"):
        with open(os.path.join(run, name)) as src, open(os.path.join(plain_fold, "..", name), "w") as dst:
            dst.write(src.read())
    state = load_checkpoint(checkpoint)
    torch.save({**state, "network_weights": unet_state_dict(state["network_weights"]), "trainer_name": "nnUNetTrainer"},
               os.path.join(plain_fold, "checkpoint_final.pth"))
    new = tmp_path / "new"
    bad_inputs = [
        ([*model, "-o", str(out), "--seed", "1"], out, ["seed", str(out)]),
        ([*model, "-o", str(foreign)], foreign, [str(foreign), "pseudolabels.json"]),
        ([*model, "-o", str(new), "-chk", "checkpoint_missing.pth"], new, ["checkpoint_missing.pth"]),
        ([*model[:5], "3", *model[6:], "-o", str(new)], new, ["fold 3", "fold_0"]),
        ([*model, "-o", str(new), "--cases", "no_such_case"], new, ["no_such_case", "unlabeled"]),
        ([*model[:6], "-tr", "nnUNetTrainer", *model[8:], "-o", str(new)], new, ["not an A&D checkpoint"]),
    ]
    for argv, target, words in bad_inputs:
        existed = _outputs(target) if target.exists() else None
        capsys.readouterr()
        assert pseudolabels_entry(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("adnnunet_pseudolabels: error:") and "Fix:" in err, err
        assert all(w in err for w in words), (words, err)
        assert (_outputs(target) if target.exists() else None) == existed, argv


def test_a_folder_of_an_older_format_is_refused_not_mixed(tmp_path):
    """Pseudo-labels computed another way (an older marker format) are never topped up by a rerun."""
    marker = {"trainer": "T", "seed": 0, "format": MARKER_FORMAT}
    out = claim_output_folder(tmp_path / "out", marker)
    assert json.load(open(out / "pseudolabels.json")) == marker
    assert claim_output_folder(out, dict(marker)) == out  # the same model and settings: resumed
    old = tmp_path / "old"
    old.mkdir()
    (old / "pseudolabels.json").write_text(json.dumps({"trainer": "T", "seed": 0}))  # format 1 had no field
    with pytest.raises(ADInputError, match=rf"another version of adnnunet_pseudolabels \(format 1 there, "
                                           rf"{MARKER_FORMAT} now\).*Fix: delete .*old"):
        claim_output_folder(old, marker)
    with pytest.raises(ADInputError, match=r"another model or settings \(seed: 0 there, 1 now\)"):
        claim_output_folder(out, {**marker, "seed": 1})
