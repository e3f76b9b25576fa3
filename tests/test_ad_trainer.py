"""ADTrainer through nnU-Net's own entry points, on the tiny phantom configuration."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ad_nnunet import console_command, ext_trainer_dir
from ad_nnunet.errors import ADInputError
from ad_nnunet.plans_presets import apply_preset

CONFIG = "3d_tiny"


def make_trainer(ds, name="ADTrainer_tiny", continue_training=False):
    from nnunetv2.run.run_training import get_trainer_from_args

    return get_trainer_from_args(str(ds["dataset_id"]), CONFIG, 0, name, "nnUNetPlans",
                                 continue_training=continue_training, device=torch.device("cpu"))


def output_folder(ds, trainer="ADTrainer_tiny"):
    return os.path.join(os.environ["nnUNet_results"], ds["dataset_name"], f"{trainer}__nnUNetPlans__{CONFIG}",
                        "fold_0")


def run_cli(args, **kwargs):
    return subprocess.run([console_command(args[0])] + list(args[1:]), env=dict(os.environ), capture_output=True,
                          text=True, **kwargs)


def test_stock_commands_train_validate_and_predict(tiny, tmp_path):
    train = run_cli(["nnUNetv2_train", str(tiny["dataset_id"]), CONFIG, "0", "-tr", "ADTrainer_tiny",
                     "-device", "cpu"])
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    out = output_folder(tiny)
    for f in ("checkpoint_final.pth", "progress.png", "ad_progress.png", "ad_split.json",
              "validation/summary.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    log = open(next(os.path.join(out, f) for f in os.listdir(out) if f.startswith("training_log"))).read()
    assert "A&D: L_deno" in log and "class_weights" in log
    split = json.load(open(os.path.join(out, "ad_split.json")))
    assert len(split["labeled"]) > 0 and len(split["unlabeled"]) > 0

    val = run_cli(["nnUNetv2_train", str(tiny["dataset_id"]), CONFIG, "0", "-tr", "ADTrainer_tiny",
                   "-device", "cpu", "--val"])
    assert val.returncode == 0, val.stderr[-3000:]

    images = os.path.join(tiny["raw"], "imagesTs")
    pred = run_cli(["nnUNetv2_predict", "-i", images, "-o", str(tmp_path), "-d", str(tiny["dataset_id"]),
                    "-c", CONFIG, "-tr", "ADTrainer_tiny", "-f", "0", "-device", "cpu", "--disable_tta"])
    assert pred.returncode == 0, pred.stderr[-3000:]
    for name in sorted(os.listdir(images)):
        src = sitk.ReadImage(os.path.join(images, name))
        seg = sitk.ReadImage(str(tmp_path / name.replace("_0000", "")))
        assert seg.GetSize() == src.GetSize()
        np.testing.assert_allclose(seg.GetSpacing(), src.GetSpacing())
        np.testing.assert_allclose(seg.GetOrigin(), src.GetOrigin())
        np.testing.assert_allclose(seg.GetDirection(), src.GetDirection())

    # export as a stock nnU-Net model; plain nnU-Net, with ad_nnunet unimportable, predicts exactly the same
    exported = tmp_path / "exported"
    done = run_cli(["adnnunet_export", "-d", str(tiny["dataset_id"]), "-c", CONFIG, "-f", "0", "-tr", "ADTrainer_tiny",
                    "-o", str(exported)])
    assert done.returncode == 0, done.stderr
    model = exported / tiny["dataset_name"] / f"nnUNetTrainer__nnUNetPlans__{CONFIG}"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file() and (model / "plans.json").is_file()
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env["nnUNet_results"] = str(exported)
    stock = tmp_path / "stock"
    block = ("import sys; sys.modules['ad_nnunet'] = None; "  # any import of the plugin fails
             "from nnunetv2.inference.predict_from_raw_data import predict_entry_point; "
             "sys.argv = ['nnUNetv2_predict'] + sys.argv[1:]; predict_entry_point()")
    plain = subprocess.run([sys.executable, "-c", block, "-i", images, "-o", str(stock), "-d", str(tiny["dataset_id"]),
                            "-c", CONFIG, "-f", "0", "-device", "cpu", "--disable_tta"],
                           env=env, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr[-3000:]
    for name in sorted(os.listdir(images)):
        case = name.replace("_0000", "")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(stock / case))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / case))))
    # an existing export is not overwritten by accident; a fold that was not trained is a clear error
    again = run_cli(["adnnunet_export", "-d", str(tiny["dataset_id"]), "-c", CONFIG, "-f", "0", "-tr",
                     "ADTrainer_tiny", "-o", str(exported)])
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
    nofold = run_cli(["adnnunet_export", "-d", str(tiny["dataset_id"]), "-c", CONFIG, "-f", "3", "-tr",
                      "ADTrainer_tiny", "-o", str(tmp_path / "other")])
    assert nofold.returncode == 2 and "fold_3" in nofold.stderr and not (tmp_path / "other" / tiny["dataset_name"]).exists()
    # another interpolation weight needs a final_interpolation run, which records both ends
    mixed = run_cli(["adnnunet_export", "-d", str(tiny["dataset_id"]), "-c", CONFIG, "-f", "0", "-tr",
                     "ADTrainer_tiny", "-o", str(tmp_path / "mixed"), "--interpolation", "0.5"])
    assert mixed.returncode == 2 and "does not record the start and trained weights" in mixed.stderr
    assert not (tmp_path / "mixed" / tiny["dataset_name"]).exists()


class Interrupt(Exception):
    pass


def test_resume_restores_every_piece_of_state(tiny, monkeypatch):
    trainer = make_trainer(tiny)
    original_epoch_start = trainer.on_epoch_start

    def stop_in_second_epoch():
        if trainer.current_epoch == 1:
            raise Interrupt
        original_epoch_start()

    monkeypatch.setattr(trainer, "on_epoch_start", stop_in_second_epoch)
    with pytest.raises(Interrupt):
        trainer.run_training()
    checkpoint = torch.load(os.path.join(output_folder(tiny), "checkpoint_latest.pth"), weights_only=False)
    saved_weights = {k: v.clone() for k, v in trainer.core.state_dict().items()}
    saved_rng = checkpoint["ad_state"]["rng"]["torch"]
    assert checkpoint["current_epoch"] == 1
    assert any(k.startswith("difficulty.") for k in checkpoint["network_weights"])

    for key in ("L_theta", "pseudo_ignored_fraction"):  # as a checkpoint written before they were logged
        del checkpoint["logging"][key]
    torch.save(checkpoint, os.path.join(output_folder(tiny), "checkpoint_latest.pth"))
    from nnunetv2.run.run_training import maybe_load_checkpoint

    resumed = make_trainer(tiny, continue_training=True)
    maybe_load_checkpoint(resumed, True, False, None)
    assert resumed.current_epoch == 1
    for k, v in resumed.core.state_dict().items():
        torch.testing.assert_close(v, saved_weights[k], msg=k)
    assert torch.equal(resumed.core.difficulty.weights, trainer.core.difficulty.weights)
    assert torch.equal(torch.get_rng_state(), saved_rng)
    opt_a, opt_b = trainer.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        torch.testing.assert_close(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"])
    log = resumed.logger.local_logger.my_fantastic_logging
    assert len(log["L_u"]) == 1 and len(log["class_weights"]) == 1
    resumed.run_training()
    assert resumed.current_epoch == 2
    log = resumed.logger.local_logger.my_fantastic_logging
    assert len(log["L_u"]) == 2 and np.isnan(log["L_theta"][0]) and np.isfinite(log["pseudo_ignored_fraction"][1])


def test_nan_loss_skips_the_step_and_training_goes_on(tiny):
    trainer = make_trainer(tiny)
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    real_terms = trainer.loss_terms

    def nan_terms(*args):
        terms = real_terms(*args)
        terms["L_u"] = terms["L_u"] * float("nan")
        return terms

    trainer.loss_terms = nan_terms
    before = {k: v.clone() for k, v in trainer.core.named_parameters() if not k.startswith("decoder.")}
    out = trainer.train_step(next(trainer.dataloader_train))
    assert out["skipped"] == 1.0 and trainer.skipped_steps == 1
    for k, v in trainer.core.named_parameters():
        if k in before:  # D_theta's EMA update happens before the loss; everything else must be untouched
            assert torch.equal(v, before[k]), k
    trainer.loss_terms = real_terms
    out = trainer.train_step(next(trainer.dataloader_train))
    assert out["skipped"] == 0.0 and np.isfinite(out["loss"])
    trainer.on_train_end()


@pytest.mark.parametrize("strong_view", [False, True], ids=["same_view", "strong_view"])
def test_pseudo_labels_carry_no_gradient_and_L_u_reaches_theta_and_encoder(tiny, strong_view):
    import types

    from ad_nnunet.training.variants import ADTrainer_strongView

    trainer = make_trainer(tiny)
    if strong_view:  # ADTrainer_strongView's hook, on the tiny schedule
        trainer.forward_and_pseudo_label = types.MethodType(ADTrainer_strongView.forward_and_pseudo_label, trainer)
    trainer.on_train_start()
    batch = next(trainer.dataloader_train)
    unlabeled = next(trainer.dataloader_unlabeled)["data"]
    logits_xi = trainer.diffusion.sample(unlabeled)
    assert not logits_xi.requires_grad
    terms = trainer.loss_terms(batch["data"], [t.long() for t in batch["target"]], unlabeled)
    trainer.optimizer.zero_grad(set_to_none=True)
    terms["L_u"].backward()
    grads = {k: p.grad for k, p in trainer.core.named_parameters() if p.requires_grad}
    assert all(grads[k] is not None for k in grads if k.startswith(("encoder.", "decoder.")))
    assert all(grads[k] is None for k in grads if k.startswith(("decoder_psi.", "decoder_xi.", "stem_diffusion.")))
    trainer.on_train_end()


def test_min_confidence_setting_leaves_unsure_pseudo_label_voxels_out_of_L_u(tiny):
    trainer = make_trainer(tiny)
    trainer.on_train_start()
    batch = next(trainer.dataloader_train)
    target = [t.long() for t in batch["target"]]
    unlabeled = next(trainer.dataloader_unlabeled)["data"]
    assert trainer.pseudo_label_min_confidence is None  # the paper's RS: every voxel
    assert trainer.loss_terms(batch["data"], target, unlabeled)["pseudo_ignored_fraction"] == 0.0
    trainer.pseudo_label_min_confidence = 1.0  # the fused score never reaches full agreement: every voxel is out
    terms = trainer.loss_terms(batch["data"], target, unlabeled)
    assert terms["pseudo_ignored_fraction"] == 1.0 and terms["L_u"].item() == 0.0
    assert terms["L_diff"].item() != 0.0  # the labeled terms are untouched
    trainer.on_train_epoch_end([trainer.train_step(batch)])  # a threshold that leaves most voxels out is flagged
    with open(trainer.log_file) as f:
        assert "warning: pseudo_label_min_confidence 1.0 left 100% of the unlabeled voxels out of L_u" in f.read()
    trainer.pseudo_label_min_confidence = 0.75
    ignored = trainer.loss_terms(batch["data"], target, unlabeled)["pseudo_ignored_fraction"]
    assert 0.0 < ignored < 1.0
    trainer.on_train_end()


ABLATIONS = {  # the hook each overrides (without the diffusion stream, the pseudo-label must do without D_xi)
    "ADTrainer_noSVDA": {"svda_augmentation"},
    "ADTrainer_noDRS": {"class_weights"},
    "ADTrainer_noRS": {"pseudo_label"},
    "ADTrainer_noDiffusion": {"diffusion_stream_class", "pseudo_label"},
}
IGNORED = {"logger", "log_file", "my_init_kwargs", "output_folder", "output_folder_base", "network",
           "optimizer", "lr_scheduler", "grad_scaler", "loss", "label_manager", "plans_manager",
           "configuration_manager", "dataset_json", "plans", "smoothing", "diffusion", "dataset_class",
           "supervised_loss"}


def _differing_attributes(trainer, reference) -> dict:
    ours, theirs = vars(trainer), vars(reference)
    return {k: ours[k] for k in ours if k not in IGNORED and ours[k] != theirs.get(k)}


def _own_members(cls) -> set:
    """What a class body defines besides its docstring and module: the class attributes and hooks it changes."""
    return {k for k in vars(cls) if not k.startswith("__")}


def test_paper_recipe_differs_from_ADTrainer_in_the_supervised_half_only(tiny):
    from ad_nnunet.method.svda import SVDATransform

    paper, default = make_trainer(tiny, "ADTrainer_paper"), make_trainer(tiny, "ADTrainer")
    assert _differing_attributes(paper, default) == {}
    assert _own_members(type(paper)) == {"psi_deep_supervision", "labeled_augmentation", "class_weights"}
    assert type(default).psi_deep_supervision and not type(paper).psi_deep_supervision
    paper.on_train_start()  # SVDA on the labeled batches, D_psi's loss weighted by DRS
    assert any(isinstance(t, SVDATransform) for t in paper.dataloader_train.data_loader.transforms.transforms)
    num_classes = paper.label_manager.num_segmentation_heads
    logits, labels = torch.randn(2, num_classes, 8, 8, 8), torch.randint(0, num_classes, (2, 1, 8, 8, 8))
    assert default.class_weights(logits, labels) is None
    assert paper.class_weights(logits, labels).shape == (num_classes,)
    assert int(paper.core.difficulty.num_updates) == 1
    paper.on_train_end()


def test_finetune_recipe_is_the_strong_view_with_four_settings(tiny):
    from ad_nnunet.training.variants import ADTrainer_strongView

    finetune, default = make_trainer(tiny, "ADTrainer_finetune"), make_trainer(tiny, "ADTrainer")
    assert _differing_attributes(finetune, default) == {"initial_lr": 1e-3, "mu_rampup_epochs": 0, "num_epochs": 50,
                                                        "final_interpolation": 0.5}
    assert type(finetune).__bases__ == (ADTrainer_strongView,)
    assert _own_members(ADTrainer_strongView) == {"forward_and_pseudo_label"}
    assert finetune.unlabeled_weight() == finetune.unlabeled_loss_weight  # no ramp: full weight at epoch 0


def test_confident_variant_is_the_finetune_recipe_with_a_confidence_threshold(tiny):
    from ad_nnunet.training.variants import ADTrainer_finetune

    confident, finetune = make_trainer(tiny, "ADTrainer_finetune_confident"), make_trainer(tiny, "ADTrainer_finetune")
    assert _differing_attributes(confident, finetune) == {"pseudo_label_min_confidence": 0.8}
    assert type(confident).__bases__ == (ADTrainer_finetune,)


def test_dropunsure_variant_is_the_finetune_recipe_leaving_out_each_samples_least_sure_voxels(tiny):
    from ad_nnunet.training.variants import ADTrainer_finetune

    dropunsure, finetune = make_trainer(tiny, "ADTrainer_finetune_dropunsure"), make_trainer(tiny, "ADTrainer_finetune")
    assert _differing_attributes(dropunsure, finetune) == {"pseudo_label_ignore_fraction": 0.05}
    assert type(dropunsure).__bases__ == (ADTrainer_finetune,)
    dropunsure.final_interpolation = None  # no warm start here
    dropunsure.on_train_start()
    batch = next(dropunsure.dataloader_train)
    terms = dropunsure.loss_terms(batch["data"], [t.long() for t in batch["target"]],
                                  next(dropunsure.dataloader_unlabeled)["data"])
    assert abs(terms["pseudo_ignored_fraction"] - 0.05) < 0.005  # rounding to whole voxels per sample
    dropunsure.on_train_end()


def test_thetaSupervised_variant_adds_D_thetas_labeled_loss_to_the_step(tiny):
    from ad_nnunet.training.variants import ADTrainer_finetune

    supervised, finetune = (make_trainer(tiny, "ADTrainer_finetune_thetaSupervised"),
                            make_trainer(tiny, "ADTrainer_finetune"))
    assert _differing_attributes(supervised, finetune) == {"theta_supervised_weight": 1.0}
    assert type(supervised).__bases__ == (ADTrainer_finetune,)
    supervised.final_interpolation = finetune.final_interpolation = None  # no warm start here
    for trainer in (supervised, finetune):
        trainer.on_train_start()
    batch = next(supervised.dataloader_train)
    target = [t.long() for t in batch["target"]]
    unlabeled = next(supervised.dataloader_unlabeled)["data"]
    assert finetune.loss_terms(batch["data"], target, unlabeled)["L_theta"].item() == 0.0  # the paper: no label
    supervised.core.eval()  # no dropout / batch statistics: L_theta is the loss of what prediction computes
    terms = supervised.loss_terms(batch["data"], target, unlabeled)
    with torch.no_grad():
        expected = supervised.supervised_loss.loss(supervised.core(batch["data"]), target[0])
    torch.testing.assert_close(terms["L_theta"].detach(), expected)
    for trainer in (supervised, finetune):
        trainer.on_train_end()


def test_default_trains_D_psi_with_nnunets_deep_supervised_loss_and_augmentation(tiny):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from ad_nnunet.method.svda import SVDATransform

    trainer = make_trainer(tiny)
    trainer.on_train_start()
    batch = next(trainer.dataloader_train)
    assert isinstance(batch["target"], list) and len(batch["target"]) > 1  # nnU-Net's deep-supervision targets
    assert isinstance(trainer.supervised_loss, DeepSupervisionWrapper)
    assert not any(isinstance(t, SVDATransform) for t in trainer.dataloader_train.data_loader.transforms.transforms)
    targets = [t.long() for t in batch["target"]]
    out = trainer.network(batch["data"], mode="train", **trainer.diffusion.noisy_labels(targets[0]))
    assert isinstance(out["psi"], list) and [o.shape[2:] for o in out["psi"]] == [t.shape[2:] for t in targets]
    # L_diff is exactly nnU-Net's loss of the same outputs
    assert torch.allclose(trainer.supervised_loss_of_psi(out["psi"], targets, None), trainer.supervised_loss(out["psi"], targets))
    # nnU-Net's validation path (D_theta, one output) is untouched
    assert trainer.network(batch["data"]).shape[2:] == batch["target"][0].shape[2:]
    trainer.on_train_end()


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_differs_from_the_paper_recipe_only_in_its_part(tiny, name):
    from ad_nnunet.network.ad_net import ADNetWithoutDiffusion

    reference, ablation = make_trainer(tiny, "ADTrainer_paper"), make_trainer(tiny, name)
    assert _differing_attributes(ablation, reference) == {}
    assert _own_members(type(ablation)) == ABLATIONS[name]
    # it trains (a few tiny steps)
    for key in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "ddim_steps"):
        setattr(ablation, key, {"num_epochs": 1, "num_iterations_per_epoch": 2,
                                "num_val_iterations_per_epoch": 1, "ddim_steps": 2}[key])
    ablation.run_training()
    log = ablation.logger.local_logger.my_fantastic_logging
    assert len(log["L_u"]) == 1
    assert isinstance(ablation.core, ADNetWithoutDiffusion) == (name == "ADTrainer_noDiffusion")
    if name == "ADTrainer_noDiffusion":
        assert log["L_deno"] == [0.0]
    if name == "ADTrainer_noDRS":
        assert torch.equal(ablation.core.difficulty.weights, torch.ones_like(ablation.core.difficulty.weights))
    if name == "ADTrainer_noSVDA":
        from ad_nnunet.method.svda import SVDATransform
        assert not any(isinstance(t, SVDATransform) for t in ablation.dataloader_train.data_loader.transforms.transforms)
        assert not any(isinstance(t, SVDATransform)
                       for t in ablation.dataloader_unlabeled.data_loader.transforms.transforms)
    if name in ("ADTrainer_noRS", "ADTrainer_noDiffusion"):  # a plain argmax of D_xi's logits (of D_psi's)
        logits_xi, logits_psi = torch.randn(2, 2, 3, 8, 8, 8)
        taken = logits_xi if name == "ADTrainer_noRS" else logits_psi
        assert torch.equal(ablation.pseudo_label(logits_xi, logits_psi, torch.randn(2, 1, 8, 8, 8)),
                           taken.argmax(1, keepdim=True))


def test_dataset_without_unlabeled_cases_is_a_clear_error(tiny):
    import shutil

    shutil.rmtree(os.path.join(tiny["raw"], "imagesUnlabeled"))
    trainer = make_trainer(tiny)
    with pytest.raises(ADInputError, match="no unlabeled cases"):
        trainer.on_train_start()
    assert trainer.dataloader_train is None  # failed before the data-loading workers were started


def test_2d_configuration_trains_and_predicts(phantom_copy, monkeypatch, tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    ds = phantom_copy()
    configuration = apply_preset(ds["dataset_id"], "tiny_2d", preprocess=True)
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_dir())
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(ds["dataset_id"]), configuration, 0, "ADTrainer_tiny", "nnUNetPlans",
                                    device=torch.device("cpu"))
    trainer.num_epochs = 1
    trainer.run_training()
    assert len(trainer.configuration_manager.patch_size) == 2
    assert len(trainer.logger.local_logger.my_fantastic_logging["L_u"]) == 1
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(trainer.output_folder_base, (0,), "checkpoint_final.pth")
    images = os.path.join(ds["raw"], "imagesTs")
    case = sorted(os.listdir(images))[0]
    predictor.predict_from_files([[os.path.join(images, case)]], [str(tmp_path / "seg")], save_probabilities=False,
                                 overwrite=True, num_processes_preprocessing=1,
                                 num_processes_segmentation_export=1)
    seg = sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    assert seg.GetSize() == sitk.ReadImage(os.path.join(images, case)).GetSize()


def test_hidden_label_cases_reach_training_only_as_images(tiny):
    """With ad_settings.json hiding labels of imagesTr cases, the labeled loader sees only the labeled cases and the
    unlabeled loader reads only image-only preprocessed data (poisoned labels change nothing: test_loaders)."""
    from ad_nnunet.data.settings import load_fold, make_settings
    from ad_nnunet.data.unlabeled_preprocessing import unlabeled_folder

    make_settings(tiny["dataset_id"], "ssl", num_labeled=2, num_val=1, seed=3)
    fold = load_fold(tiny["dataset_id"], 0)
    hidden = set(fold.unlabeled) - {c for c in fold.unlabeled if c.startswith("unl_")}
    assert hidden, "the phantom's imagesTr cases beyond the 2 labeled ones must be hidden"
    trainer = make_trainer(tiny)
    trainer.on_train_start()
    assert set(trainer.dataloader_train.data_loader._data.identifiers) == set(fold.labeled)
    assert set(trainer.dataloader_unlabeled.data_loader._data.identifiers) == set(fold.unlabeled)
    assert trainer.dataloader_unlabeled.data_loader._data.source_folder == \
        unlabeled_folder(tiny["dataset_id"], CONFIG)
    assert not set(fold.val) & (set(fold.labeled) | set(fold.unlabeled))
    trainer.on_train_end()
    recorded = json.load(open(os.path.join(output_folder(tiny), "ad_split.json")))
    assert sorted(recorded["unlabeled"]) == sorted(fold.unlabeled)


def test_training_without_raw_data_uses_the_preprocessed_unlabeled_cases(tiny, tmp_path):
    """A GPU box may receive preprocessed data only: the unlabeled data is then used as it is."""
    import shutil

    from ad_nnunet.data.settings import make_settings

    make_settings(tiny["dataset_id"], "ssl", num_labeled=3, seed=1)
    first = make_trainer(tiny)
    first.on_train_start()  # preprocesses the unlabeled cases
    first.on_train_end()
    shutil.move(tiny["raw"], tmp_path / "raw_elsewhere")
    try:
        trainer = make_trainer(tiny)
        trainer.on_train_start()
        trainer.on_train_end()
        log = open(trainer.log_file).read()
        assert "not found under nnUNet_raw" in log
    finally:
        shutil.move(tmp_path / "raw_elsewhere", tiny["raw"])


def trained_nnunet_model(ds):
    """An nnUNetTrainer model (not nnU-Net's initialisation) saved as fold 0's checkpoint_final.pth."""
    nnunet = make_trainer(ds, "nnUNetTrainer")
    nnunet.initialize()
    with torch.no_grad():
        for p in nnunet.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    source = os.path.join(nnunet.output_folder, "checkpoint_final.pth")
    nnunet.save_checkpoint(source)
    return nnunet, source


def test_warm_start_from_an_nnunet_model_then_stock_resume(tiny):
    """adnnunet_warm_start writes an epoch-0 checkpoint whose D_theta is the nnU-Net model; `nnUNetv2_train --c`
    then trains every epoch of the A&D schedule from it."""
    nnunet, source = trained_nnunet_model(tiny)
    cmd = ["adnnunet_warm_start", "-d", str(tiny["dataset_id"]), "-c", CONFIG, "-f", "0", "-i", source,
           "-tr", "ADTrainer_tiny"]
    done = run_cli(cmd)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--c" in done.stdout
    out = output_folder(tiny)
    assert json.load(open(os.path.join(out, "warm_start.json")))["source_checkpoint"] == source

    trainer = make_trainer(tiny)
    trainer.initialize()
    trainer.load_checkpoint(os.path.join(out, "checkpoint_latest.pth"))
    assert trainer.current_epoch == 0
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size)
    nnunet.network.eval(), trainer.network.eval()
    with torch.no_grad():
        torch.testing.assert_close(trainer.network(x), nnunet.network(x)[0])

    # an existing run is not overwritten by accident; a missing source is a clear error
    again = run_cli(cmd)
    assert again.returncode == 2 and "already holds checkpoint_latest.pth" in again.stderr and "--overwrite" in again.stderr
    missing = run_cli(cmd[:-4] + ["-i", source + ".nope", "-tr", "ADTrainer_tiny", "--overwrite"])
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    train = run_cli(["nnUNetv2_train", str(tiny["dataset_id"]), CONFIG, "0", "-tr", "ADTrainer_tiny", "-device", "cpu",
                     "--c"])
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    final = torch.load(os.path.join(out, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert len(final["logging"]["L_u"]) == trainer.num_epochs  # no epoch skipped


def test_final_interpolation_saves_a_mix_of_the_warm_start_and_the_trained_model(tiny, tmp_path):
    """final_interpolation = a: the warm start records the start's U-Net in every checkpoint of the run, and the
    final checkpoint holds (1 - a) * start + a * trained for the encoder and D_theta (D_xi, D_psi as trained), and
    both ends, so that the export can give any other a; a run with it but without a warm start is refused before
    training."""
    from ad_nnunet.export import export_stock_model
    from ad_nnunet.training.warm_start import read_nnunet_checkpoint, write_warm_start_checkpoint
    from ad_nnunet.training.weight_interpolation import unet_state

    cold = make_trainer(tiny)
    cold.final_interpolation = 0.25
    with pytest.raises(ADInputError, match="holds no warm start. Fix: start the run with adnnunet_warm_start"):
        cold.on_train_start()

    _, source = trained_nnunet_model(tiny)
    first = make_trainer(tiny)
    first.final_interpolation = 0.25
    write_warm_start_checkpoint(first, source, read_nnunet_checkpoint(source), overwrite=True)
    start = unet_state(first.core.state_dict())

    trainer = make_trainer(tiny, continue_training=True)  # what nnUNetv2_train --c builds and loads
    trainer.final_interpolation = 0.25
    trainer.initialize()
    trainer.load_checkpoint(os.path.join(output_folder(tiny), "checkpoint_latest.pth"))
    assert set(trainer.start_unet) == set(start)
    trainer.on_train_start()
    with torch.no_grad():  # stands in for the training epochs
        for p in trainer.core.parameters():
            p.add_(0.1 * torch.randn_like(p))
    trained = {k: v.clone() for k, v in trainer.core.state_dict().items()}
    trainer.on_train_end()
    final = torch.load(os.path.join(output_folder(tiny), "checkpoint_final.pth"), map_location="cpu",
                       weights_only=False)["network_weights"]
    for k, v in start.items():
        torch.testing.assert_close(final[k], 0.75 * v + 0.25 * trained[k])
    assert torch.equal(final["decoder_psi.seg_layers.0.weight"], trained["decoder_psi.seg_layers.0.weight"])
    assert not torch.equal(final["decoder_psi.seg_layers.0.weight"], start["decoder.seg_layers.0.weight"])

    # both ends are recorded: the model at any other a is exported without training again
    for a, expected in ((1.0, lambda k: trained[k]), (0.25, lambda k: final[k]), (0.0, lambda k: start[k])):
        model = export_stock_model(os.path.dirname(output_folder(tiny)), [0], tmp_path / f"a{a}", interpolation=a)
        exported = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                              weights_only=False)["network_weights"]
        for k in start:
            torch.testing.assert_close(exported[k], expected(k))
        assert json.loads((model / "ad_export.json").read_text())["interpolation"] == a
    with pytest.raises(ADInputError, match="must be in \\[0, 1\\]"):
        export_stock_model(os.path.dirname(output_folder(tiny)), [0], tmp_path / "bad", interpolation=1.5)


def test_warm_start_of_a_plain_nnunet_trainer_continues_the_model(tiny):
    """The matched control of A&D fine-tuning: a stock nnU-Net trainer starts at epoch 0 from the model itself,
    output layers included; a U-Net of other plans is an error naming the file."""
    nnunet, source = trained_nnunet_model(tiny)
    cmd = ["adnnunet_warm_start", "-d", str(tiny["dataset_id"]), "-c", CONFIG, "-f", "0", "-i", source,
           "-tr", "nnUNetTrainer_1epoch"]
    done = run_cli(cmd)
    assert done.returncode == 0, done.stdout + done.stderr
    control = make_trainer(tiny, "nnUNetTrainer_1epoch")
    control.initialize()
    control.load_checkpoint(os.path.join(output_folder(tiny, "nnUNetTrainer_1epoch"), "checkpoint_latest.pth"))
    assert control.current_epoch == 0
    for key, value in nnunet.network.state_dict().items():
        torch.testing.assert_close(control.network.state_dict()[key], value)

    from ad_nnunet.training.warm_start import load_unet_weights

    state = nnunet.network.state_dict()
    other = {**state, "decoder.seg_layers.0.weight": torch.zeros(5, *state["decoder.seg_layers.0.weight"].shape[1:])}
    with pytest.raises(ADInputError, match=r"model.pth has decoder.seg_layers.0.weight of shape .*same -p plans"):
        load_unet_weights(control.network, other, "model.pth")


def test_anchored_variant_lets_the_frozen_warm_start_vote_in_the_pseudo_label(tiny):
    """start_model_vote = w: RS adds w x softmax of the model the run started from, a frozen copy that training does
    not move; a run without a warm start is refused before training."""
    from ad_nnunet.pseudolabels import StartModelLogits
    from ad_nnunet.training.variants import ADTrainer_finetune_thetaSupervised
    from ad_nnunet.training.warm_start import read_nnunet_checkpoint, write_warm_start_checkpoint

    anchored = make_trainer(tiny, "ADTrainer_finetune_anchored")
    assert _differing_attributes(anchored, make_trainer(tiny, "ADTrainer_finetune_thetaSupervised")) == \
        {"start_model_vote": 1.0}
    assert type(anchored).__bases__ == (ADTrainer_finetune_thetaSupervised,)
    anchored.initialize()
    with pytest.raises(ADInputError, match=r"uses the model it started from \(final_interpolation=0.5, "
                                           r"start_model_vote=1.0\), but .* holds no warm start"):
        anchored.on_train_start()

    nnunet, source = trained_nnunet_model(tiny)
    write_warm_start_checkpoint(make_trainer(tiny, "ADTrainer_finetune_anchored"), source,
                                read_nnunet_checkpoint(source), overwrite=True)
    trainer = make_trainer(tiny, "ADTrainer_finetune_anchored", continue_training=True)
    trainer.initialize()
    trainer.load_checkpoint(os.path.join(output_folder(tiny, "ADTrainer_finetune_anchored"), "checkpoint_latest.pth"))
    trainer.on_train_start()
    with torch.no_grad():  # stands in for training: the start model must not follow
        for p in trainer.core.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    nnunet.network.eval()
    with torch.no_grad():
        torch.testing.assert_close(trainer.start_model_logits(x), nnunet.network(x)[0])
        # adnnunet_pseudolabels' stream of the start model: the start U-Net wins over the fold parameters it loads
        stream = StartModelLogits(trainer.core, trainer.start_unet).eval()
        stream.load_state_dict(trainer.core.state_dict())
        torch.testing.assert_close(stream(x), nnunet.network(x)[0])
    assert not any(p.requires_grad for p in trainer.start_model.parameters())
    assert not any(p is q for p in trainer.start_model.parameters() for q in trainer.network.parameters())
    batch = next(trainer.dataloader_train)
    terms = trainer.loss_terms(batch["data"], [t.long() for t in batch["target"]],
                               next(trainer.dataloader_unlabeled)["data"])
    assert torch.isfinite(terms["L_u"]) and 0 <= terms["pseudo_fg_fraction"] <= 1
    trainer.on_train_end()
    assert make_trainer(tiny, "ADTrainer_finetune").start_model_logits(x) is None  # w = 0: no extra pass


def test_every_variant_is_found_by_nnunets_trainer_lookup():
    import inspect

    from ad_nnunet.training import variants
    from ad_nnunet.training.ad_trainer import ADTrainer

    shim = open(os.path.join(ext_trainer_dir(), "ad_trainers.py")).read()
    names = [n for n, c in inspect.getmembers(variants, inspect.isclass) if issubclass(c, ADTrainer)]
    assert "ADTrainer_finetune" in names and not [n for n in names if n not in shim]
