"""adnnunet_confidence_probe: the threshold table's arithmetic, and its refusals, on the tiny phantom."""
import json
import os

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


def test_threshold_table_splits_the_same_pseudo_label(tiny):
    trainer = _trainer(tiny)
    cases = sorted(trainer.do_split()[0])[:2]
    patches = probe.foreground_patches(_dataset(trainer, cases), cases, trainer.configuration_manager.patch_size, 2)
    assert len(patches) == 4
    for image, label in patches:
        assert image.shape[2:] == label.shape[2:] == tuple(trainer.configuration_manager.patch_size)
        assert (label > 0).any()  # centred on the foreground
    rows = probe.threshold_table(trainer, patches, (0.0, 0.6, 0.75, 1.0))
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
    assert probe.threshold_table(trainer, patches, (0.6,)) == [by_k[None], by_k[0.6]]
    assert "| none |" in probe.format_table(rows)
    with pytest.raises(ADInputError, match="has no preprocessed image and label"):
        probe.foreground_patches(_dataset(trainer, cases), ["no_such_case"], (4, 4, 4), 1)


def test_cases_the_run_trained_on_are_refused(tiny, capsys):
    run = os.path.join(os.environ["nnUNet_results"], tiny["dataset_name"], f"ADTrainer_tiny__nnUNetPlans__{CONFIG}",
                       "fold_0")
    os.makedirs(run)
    model = ["-d", str(tiny["dataset_id"]), "-c", CONFIG, "-tr", "ADTrainer_tiny", "-f", "0"]
    assert confidence_probe_entry([*model, "--cases", "c1"]) == 2
    assert "checkpoint_final.pth does not exist" in capsys.readouterr().err
    open(os.path.join(run, "checkpoint_final.pth"), "wb").close()
    assert confidence_probe_entry([*model, "--cases", "c1"]) == 2
    assert "ad_split.json does not exist" in capsys.readouterr().err
    with open(os.path.join(run, "ad_split.json"), "w") as f:
        json.dump({"labeled": ["c1", "c2"], "unlabeled": ["u1"], "val": ["c1"]}, f)
    assert confidence_probe_entry([*model, "--cases", "u1", "c2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adnnunet_confidence_probe: error: case(s) c2 are labeled training cases") and "Fix:" in err
    assert confidence_probe_entry([*model, "--cases", "u1", "--thresholds", "1.5"]) == 2
    assert "--thresholds must lie in [0, 1]" in capsys.readouterr().err
    assert np.array_equal(sorted(os.listdir(run)), ["ad_split.json", "checkpoint_final.pth"])  # nothing written
