import os

import numpy as np
import pytest
import torch

from ad_nnunet.checkpoints import load_checkpoint, run_folder_parts
from ad_nnunet.errors import ADInputError


class _Payload:
    def __reduce__(self):  # what a malicious checkpoint does: run code while being unpickled
        return (os.system, ("echo pwned",))


def test_checkpoint_contents_of_nnunet_and_ADTrainer_load(tmp_path):
    state = np.random.RandomState(0).get_state()
    ckpt = {"network_weights": {"w": torch.ones(2)}, "logging": {"mean_fg_dice": [np.float32(0.5), np.float64(0.7)]},
            "_best_ema": np.float64(0.8), "current_epoch": 3, "init_args": {"device": torch.device("cpu")},
            "ad_state": {"rng": {"numpy": state, "torch": torch.get_rng_state()}}}
    torch.save(ckpt, tmp_path / "c.pth")
    loaded = load_checkpoint(tmp_path / "c.pth")
    assert loaded["logging"]["mean_fg_dice"] == [0.5, 0.7] and loaded["_best_ema"] == 0.8
    np.testing.assert_array_equal(loaded["ad_state"]["rng"]["numpy"][1], state[1])


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    torch.save({"network_weights": {}, "evil": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_checkpoint(tmp_path / "evil.pth")


def test_run_folder_parts_reads_nnunets_folder_name_and_refuses_others(tmp_path):
    assert run_folder_parts(tmp_path / "ADTrainer__nnUNetPlans__3d_fullres") == ("ADTrainer", "nnUNetPlans",
                                                                                "3d_fullres")
    for name in ("ADTrainer__nnUNetPlans", "a__b__c__d", "ADTrainer____3d_fullres"):
        with pytest.raises(ADInputError, match=r"is not named <trainer>__<plans>__<configuration>.*Fix: pass"):
            run_folder_parts(tmp_path / name)
