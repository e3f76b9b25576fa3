"""make_variant: one way to configure A&D and nnU-Net trainers, checked where the values enter."""
import os
import pickle

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from ad_nnunet import ext_trainer_dir
from ad_nnunet.errors import ADInputError
from ad_nnunet.training.ad_trainer import ADTrainer
from ad_nnunet.training.variants import ADTrainer_finetune, ADTrainer_tiny, make_variant, settings_of

CONFIG = "3d_tiny"
# what the benchmark runner writes into a file on nnUNet_extTrainer: one line per trainer
BENCH_MODULE = '''
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerNoDeepSupervision import (
    nnUNetTrainerNoDeepSupervision)

from ad_nnunet.training.variants import ADTrainer_finetune, make_variant

BenchAD = make_variant("BenchAD", ADTrainer_finetune, num_epochs=8, num_iterations_per_epoch=50, ddim_steps=4, seed=7)
BenchNN = make_variant("BenchNN", nnUNetTrainer, num_epochs=3, initial_lr=1e-3)
BenchNN_5epochs = make_variant("BenchNN_5epochs", BenchNN, num_epochs=5)
BenchNoDS = make_variant("BenchNoDS", nnUNetTrainerNoDeepSupervision, num_iterations_per_epoch=7)
'''


def build(ds, name):
    from nnunetv2.run.run_training import get_trainer_from_args

    return get_trainer_from_args(str(ds["dataset_id"]), CONFIG, 0, name, "nnUNetPlans", device=torch.device("cpu"))


@pytest.fixture
def bench_folder(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "bench_trainers.py").write_text(BENCH_MODULE)
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([ext_trainer_dir(), str(folder)]))
    return folder


def test_variants_of_ad_and_nnunet_trainers_are_found_by_nnunets_lookup(tiny, bench_folder):
    ad = build(tiny, "BenchAD")
    assert type(ad).__module__ == "bench_trainers" and type(ad).__qualname__ == "BenchAD"
    assert isinstance(ad, ADTrainer_finetune)
    assert (ad.num_epochs, ad.num_iterations_per_epoch, ad.ddim_steps, ad.seed) == (8, 50, 4, 7)
    assert (ad.initial_lr, ad.mu_rampup_epochs) == (1e-3, 0)  # the base variant's settings stay
    after_seeding = torch.get_rng_state()
    torch.manual_seed(7)  # the seed setting counts: the trainer seeded with it
    assert torch.equal(after_seeding, torch.get_rng_state())

    plain = build(tiny, "BenchNN")
    assert (plain.num_epochs, plain.initial_lr, plain.num_iterations_per_epoch) == (3, 1e-3, 250)
    assert list(plain.my_init_kwargs) == ["plans", "configuration", "fold", "dataset_json", "device"]
    later = build(tiny, "BenchNN_5epochs")
    assert (later.num_epochs, later.initial_lr) == (5, 1e-3)
    no_ds = build(tiny, "BenchNoDS")
    assert (no_ds.num_iterations_per_epoch, no_ds.enable_deep_supervision) == (7, False)


def test_variants_pickle_by_reference(bench_folder, monkeypatch):
    import importlib

    assert pickle.loads(pickle.dumps(ADTrainer_tiny)) is ADTrainer_tiny
    monkeypatch.syspath_prepend(str(bench_folder))
    module = importlib.import_module("bench_trainers")
    assert pickle.loads(pickle.dumps(module.BenchNN)) is module.BenchNN


@pytest.mark.parametrize("base,overrides,message", [
    (nnUNetTrainer, {"ddim_steps": 4}, r"nnUNetTrainer has no setting 'ddim_steps'\. Fix: use one of .*num_epochs"),
    (ADTrainer, {"svda_labeled": True}, r"no setting 'svda_labeled'\. Fix: .* is a hook"),
    (ADTrainer, {"enable_deep_supervision": True}, r"ADTrainer has no setting 'enable_deep_supervision'"),
    (ADTrainer, {"num_epochs": "8"}, r"num_epochs='8' is not a valid value\. Fix: pass an int >= 1"),
    (ADTrainer, {"num_epochs": True}, r"num_epochs=True is not a valid value"),
    (ADTrainer_finetune, {"ddim_steps": 0}, r"'BenchX', ADTrainer_finetune\): ddim_steps=0 .* an int >= 1"),
    (nnUNetTrainer, {"initial_lr": -1e-3}, r"initial_lr=-0\.001 .* a number > 0"),
    (ADTrainer, {"svda_p_op": 1.5}, r"svda_p_op=1\.5 .* a number in \[0, 1\]"),
    (ADTrainer, {"smoothing_kernel_size": 4}, r"smoothing_kernel_size=4 .* an odd int >= 1"),
    (ADTrainer, {"mu_rampup_epochs": -1}, r"mu_rampup_epochs=-1 .* None \(the whole run\) or a number >= 0"),
    (ADTrainer, {"diffusion_timesteps": 10}, r"diffusion_timesteps=10 .* an int >= 20"),
])
def test_a_bad_setting_is_an_error_naming_it_and_the_fix(base, overrides, message):
    with pytest.raises(ADInputError, match=r"make_variant\('BenchX', " + base.__name__ + r"\)"):
        make_variant("BenchX", base, **overrides)
    with pytest.raises(ADInputError, match=message):
        make_variant("BenchX", base, **overrides)


def test_more_ddim_steps_than_diffusion_timesteps_is_an_error_when_the_trainer_is_built(tiny, bench_folder):
    (bench_folder / "ddim_trainers.py").write_text(
        "from ad_nnunet.training.ad_trainer import ADTrainer\n"
        "from ad_nnunet.training.variants import make_variant\n"
        "BenchTooManyDDIM = make_variant('BenchTooManyDDIM', ADTrainer, diffusion_timesteps=20, ddim_steps=21)\n"
        "BenchAllDDIM = make_variant('BenchAllDDIM', ADTrainer, diffusion_timesteps=20, ddim_steps=20)\n")
    # each setting is valid on its own (make_variant accepts both); together they are not
    with pytest.raises(ADInputError, match=r"BenchTooManyDDIM: ddim_steps=21 is more than diffusion_timesteps=20\. "
                                           r"Fix: set ddim_steps <= diffusion_timesteps"):
        build(tiny, "BenchTooManyDDIM")
    assert build(tiny, "BenchAllDDIM").ddim_steps == 20


def test_a_bad_name_or_base_is_an_error():
    with pytest.raises(ADInputError, match=r"'Bench-X'.* not a Python identifier.*Fix"):
        make_variant("Bench-X", ADTrainer, num_epochs=8)
    with pytest.raises(ADInputError, match=r"the base is not a trainer class\. Fix: pass ADTrainer"):
        make_variant("BenchX", torch.nn.Module, num_epochs=8)
    assert make_variant("BenchX", ADTrainer, mu_rampup_epochs=None, initial_lr=1).overrides == {
        "mu_rampup_epochs": None, "initial_lr": 1}


def test_every_setting_is_an_attribute_the_trainer_sets_and_its_default_is_accepted(tiny):
    for name, cls in (("nnUNetTrainer", nnUNetTrainer), ("ADTrainer", ADTrainer)):
        trainer = build(tiny, name)
        for key, (what, accepts) in settings_of(cls).items():
            assert key in vars(trainer), f"{name} sets no attribute {key}"
            assert accepts(getattr(trainer, key)), f"{name}.{key} = {getattr(trainer, key)!r} is not {what}"
