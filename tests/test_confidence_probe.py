"""adnnunet_confidence_probe: the threshold table's arithmetic, and its refusals, on the tiny phantom."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from ad_nnunet.entrypoints.results import confidence_probe_entry
from ad_nnunet.errors import ADInputError
from ad_nnunet.evaluation import confidence_probe as probe

CONFIG = "3d_tiny"


def _trainer(ds):
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(ds["dataset_id"]), CONFIG, 0, "ADTrainer_tiny", "nnUNetPlans",
                                    device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def _dataset(trainer, cases):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = trainer.preprocessed_dataset_folder
    return infer_dataset_class(folder)(folder, cases)


def test_mask_table_splits_the_same_pseudo_label(tiny):
    trainer = _trainer(tiny)
    cases = sorted(trainer.do_split()[0])[:2]
    patches = probe.foreground_patches(_dataset(trainer, cases), cases, trainer.configuration_manager.patch_size, 2)
    assert len(patches) == 4
    for image, label in patches:
        assert image.shape[2:] == label.shape[2:] == tuple(trainer.configuration_manager.patch_size)
        assert (label > 0).any()  # centred on the foreground
    rows = probe.mask_table(trainer, patches, (0.0, 0.6, 0.75, 1.0))
    by_k = {r["min_confidence"]: r for r in rows}
    assert [r["min_confidence"] for r in rows] == [None, 0.0, 0.6, 0.75, 1.0]
    # no threshold and k = 0 keep every voxel; k = 1 leaves every voxel out (full agreement never happens)
    for k in (None, 0.0):
        assert by_k[k]["ignored"] == 0 and by_k[k]["errors_removed"] == 0
    assert by_k[0.0]["error_rate_kept"] == by_k[None]["error_rate_kept"]
    assert by_k[1.0]["ignored"] == 1.0
    assert by_k[1.0]["error_rate_ignored"] == pytest.approx(by_k[None]["error_rate_kept"])
    if by_k[None]["error_rate_kept"] > 0:
        assert by_k[1.0]["errors_removed"] == pytest.approx(1.0)
    ignored = [by_k[k]["ignored"] for k in (0.0, 0.6, 0.75, 1.0)]
    assert ignored == sorted(ignored)
    # kept and ignored errors add up to the errors of the whole pseudo-label, at every threshold
    for k in (0.6, 0.75):
        r = by_k[k]
        total = r["error_rate_kept"] * (1 - r["ignored"]) + r["error_rate_ignored"] * r["ignored"]
        assert total == pytest.approx(by_k[None]["error_rate_kept"])
        assert r["errors_removed"] == pytest.approx(r["error_rate_ignored"] * r["ignored"] /
                                                    by_k[None]["error_rate_kept"])
    # the same seed repeats the table
    assert probe.mask_table(trainer, patches, (0.6,)) == [by_k[None], by_k[0.6]]
    assert "| none |" in probe.format_table(rows) and "| kappa < 0.6 |" in probe.format_table(rows)
    # a fraction leaves out that share of every patch (rounded to whole voxels); a larger one removes more errors
    none, *by_q = probe.mask_table(trainer, patches, (), fractions=(0.1, 0.5))
    assert none == by_k[None] and [r["ignore_fraction"] for r in by_q] == [0.1, 0.5]
    for r, q in zip(by_q, (0.1, 0.5)):
        assert r["ignored"] == pytest.approx(q, abs=1 / label.numel()) and r["min_confidence"] is None
    assert by_q[0]["errors_removed"] <= by_q[1]["errors_removed"]
    assert "| lowest 0.1 of each patch |" in probe.format_table(by_q)
    with pytest.raises(ADInputError, match="has no preprocessed image and label"):
        probe.foreground_patches(_dataset(trainer, cases), ["no_such_case"], (4, 4, 4), 1)


def test_cases_the_run_trained_on_are_refused(tiny, capsys):
    run = os.path.join(os.environ["nnUNet_results"], tiny["dataset_name"], f"ADTrainer_tiny__nnUNetPlans__{CONFIG}")
    fold = os.path.join(run, "fold_0")
    os.makedirs(fold)
    shutil.copy(os.path.join(tiny["preprocessed"], "nnUNetPlans.json"), os.path.join(run, "plans.json"))
    model = ["-d", str(tiny["dataset_id"]), "-c", CONFIG, "-tr", "ADTrainer_tiny", "-f", "0"]
    checkpoint = os.path.join(fold, "checkpoint_final.pth")

    def refused(*argv):
        assert confidence_probe_entry([*model, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("adnnunet_confidence_probe: error:") and "Fix:" in err, err
        return err

    assert "checkpoint_final.pth does not exist" in refused("--cases", "c1")
    torch.save({"network_weights": {"encoder.w": torch.zeros(1)}}, checkpoint)
    assert "is not an A&D checkpoint" in refused("--cases", "c1")
    torch.save({"network_weights": {"decoder_psi.w": torch.zeros(1), "decoder_xi.w": torch.zeros(1)}}, checkpoint)
    assert "ad_split.json does not exist" in refused("--cases", "c1")
    with open(os.path.join(fold, "ad_split.json"), "w") as f:
        json.dump({"labeled": ["c1", "c2"], "unlabeled": ["u1"], "val": ["c1"]}, f)
    assert "case(s) c2 are labeled training cases" in refused("--cases", "u1", "c2")
    assert "--thresholds and --fractions must lie in [0, 1]" in refused("--cases", "u1", "--thresholds", "1.5")
    assert "--thresholds and --fractions must lie in [0, 1]" in refused("--cases", "u1", "--fractions", "-0.1")
    assert sorted(os.listdir(fold)) == ["ad_split.json", "checkpoint_final.pth"]  # nothing written


def test_the_command_scores_the_saved_run(tiny, tmp_path, capsys):
    """The command rebuilds the trainer from the run folder and loads the checkpoint: its table is the library's on
    the same weights, patches and seed."""
    trainer = _trainer(tiny)
    run = os.path.dirname(trainer.output_folder)
    shutil.copy(os.path.join(tiny["preprocessed"], "nnUNetPlans.json"), os.path.join(run, "plans.json"))
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    train_cases = sorted(trainer.do_split()[0])
    dev, labeled = train_cases[:2], train_cases[2:]
    with open(os.path.join(trainer.output_folder, "ad_split.json"), "w") as f:
        json.dump({"labeled": labeled, "unlabeled": dev, "val": []}, f)
    out = tmp_path / "probe.json"
    argv = ["-d", str(tiny["dataset_id"]), "-c", CONFIG, "-tr", "ADTrainer_tiny", "-f", "0", "--cases", *dev,
            "--thresholds", "0.6", "0.75", "--fractions", "0.05", "--patches_per_case", "1", "-o", str(out)]
    assert confidence_probe_entry(argv) == 0
    printed = capsys.readouterr().out
    assert "teacher: trained (2 patches of 2 cases)" in printed and "teacher: start" not in printed
    written = json.loads(out.read_text())
    assert (written["cases"], written["patches_per_case"], written["seed"]) == (dev, 1, 0)
    patches = probe.foreground_patches(_dataset(trainer, dev), dev, trainer.configuration_manager.patch_size, 1)
    assert written["tables"] == {"trained": probe.mask_table(trainer, patches, (0.6, 0.75), fractions=(0.05,))}


class _Cases:
    """An nnU-Net dataset object's ``load_case`` for in-memory (data, seg) arrays."""

    def __init__(self, cases):
        self.cases = cases

    def load_case(self, case):
        return self.cases[case] + (None, None)


def test_patches_of_2d_configurations_are_slices_through_the_foreground():
    data = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7)
    seg = np.zeros((1, 5, 6, 7), dtype=np.int8)
    seg[0, 3, 1, 5] = 2  # one foreground voxel near a border: the patch is clipped to the slice, then padded
    patches = probe.foreground_patches(_Cases({"a": (data, seg)}), ["a"], (4, 8), per_case=2)
    assert len(patches) == 2
    for image, label in patches:
        assert image.shape == (1, 2, 4, 8) and label.shape == (1, 1, 4, 8)
        np.testing.assert_array_equal(image[0, :, :, :7].numpy(), data[:, 3, 0:4, :])  # slice 3, rows 0-3
        assert (image[0, :, :, 7] == 0).all()  # 7 columns, padded to 8
        assert label.sum() == 2 and label[0, 0, 1, 5] == 2
    image3d, label3d = probe.foreground_patches(_Cases({"a": (data, seg)}), ["a"], (3, 4, 4), per_case=1)[0]
    np.testing.assert_array_equal(image3d[0].numpy(), data[:, 2:5, 0:4, 3:7])
    assert label3d[0, 0, 1, 1, 2] == 2
