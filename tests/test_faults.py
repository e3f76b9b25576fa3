"""Fault injection on the tiny phantom: one test per fault class (docs/reliability.md has the table).

Each test injects a fault as a user would meet it, runs the command a user would run, and asserts the message
(``<command>: error: `` + the case or file + ``Fix:``), the exit status and that no output is half written.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ad_nnunet import console_command, ext_trainer_dir
from ad_nnunet.data.settings import load_settings, settings_path
from ad_nnunet.data.unlabeled_preprocessing import preprocess_unlabeled
from ad_nnunet.entrypoints.preparation import make_settings_entry, preprocess_unlabeled_entry
from ad_nnunet.errors import ADInputError

CFG = "3d_fullres"
TINY = "3d_tiny"


def snapshot(folder):
    """(mtime_ns, inode, size) of every file below ``folder``: equal snapshots mean nothing was written."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), folder)] = (st.st_mtime_ns, st.st_ino, st.st_size)
    return out


def assert_error(rc, err, prog, *needles):
    assert rc == 2, err
    assert err.startswith(f"{prog}: error: ") and "Fix:" in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture
def preprocessed(phantom_copy):
    """A phantom copy whose unlabeled cases are preprocessed (so a later failure has something to spoil)."""
    d = phantom_copy()
    d["unlabeled_folder"] = preprocess_unlabeled(d["dataset_id"], CFG, num_processes=1, verbose=False)
    d["unl"] = os.path.join(d["raw"], "imagesUnlabeled")
    return d


def _float_copy(src, dst, value):
    """``src`` as float32 with one voxel set to ``value`` (same geometry)."""
    img = sitk.ReadImage(src)
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    arr.flat[arr.size // 2] = value
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, dst)


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


FILE_FAULTS = {
    "truncated": (_truncate, "is truncated or corrupt"),
    "empty_file": (lambda p: open(p, "wb").close(), "no valid NIfTI header"),
    "random_bytes": (lambda p: open(p, "wb").write(os.urandom(400)), "truncated or corrupt"),
    "nan_voxel": (lambda p: _float_copy(p, p, np.nan), "1 NaN or infinite voxel(s)"),
    "inf_voxel": (lambda p: _float_copy(p, p, np.inf), "1 NaN or infinite voxel(s)"),
}


@pytest.mark.parametrize("fault", sorted(FILE_FAULTS))
def test_bad_unlabeled_image_file(preprocessed, capsys, fault):
    d = preprocessed
    inject, needle = FILE_FAULTS[fault]
    bad = os.path.join(d["unl"], "unl_002_0000.nii.gz")
    inject(bad)
    before = snapshot(d["unlabeled_folder"])
    rc = preprocess_unlabeled_entry(["-d", str(d["dataset_id"]), "-c", CFG, "-np", "1", "--quiet"])
    assert_error(rc, capsys.readouterr().err, "adnnunet_preprocess_unlabeled", "'unl_002'", bad, needle)
    after = snapshot(d["unlabeled_folder"])
    # the bad case's earlier output is gone (its source changed), every other case is untouched, no temp files
    assert not [f for f in after if f.startswith("unl_002")]
    assert {f: v for f, v in before.items() if not f.startswith(("unl_002", ".ad_meta"))} == \
        {f: v for f, v in after.items() if not f.startswith(".ad_meta")}
    assert not os.path.exists(os.path.join(d["unlabeled_folder"], ".ad_tmp"))


def _wrong_ending(d):
    shutil.copy(os.path.join(d["unl"], "unl_000_0000.nii.gz"), os.path.join(d["unl"], "unl_009_0000.nii"))
    return ("unl_009_0000.nii", "file_ending")


def _extra_channel(d):
    shutil.copy(os.path.join(d["unl"], "unl_000_0000.nii.gz"), os.path.join(d["unl"], "unl_000_0001.nii.gz"))
    return ("'unl_000'", "[0000, 0001]")


def _id_collision(d):
    shutil.copy(os.path.join(d["raw"], "imagesTr", "phantom_000_0000.nii.gz"),
                os.path.join(d["unl"], "phantom_000_0000.nii.gz"))
    return ("'phantom_000'", "same id as a labeled case")


def _empty_folder(d):
    for f in os.listdir(d["unl"]):
        os.remove(os.path.join(d["unl"], f))
    return ("imagesUnlabeled",)


@pytest.mark.parametrize("inject", [_wrong_ending, _extra_channel, _id_collision, _empty_folder],
                         ids=["wrong_ending", "wrong_channels", "id_collision", "empty_folder"])
def test_bad_unlabeled_folder_touches_nothing(preprocessed, capsys, inject):
    d = preprocessed
    needles = inject(d)
    before = snapshot(d["unlabeled_folder"])
    rc = preprocess_unlabeled_entry(["-d", str(d["dataset_id"]), "-c", CFG, "-np", "1", "--quiet"])
    assert_error(rc, capsys.readouterr().err, "adnnunet_preprocess_unlabeled", *needles)
    assert snapshot(d["unlabeled_folder"]) == before


def test_unknown_cases_in_case_lists_and_domain_files(phantom_copy, tmp_path, capsys):
    d = phantom_copy()
    ds = str(d["dataset_id"])
    # a domains file naming a case that does not exist, whose domain no real case has: used to give 0 unlabeled cases
    domains = json.load(open(os.path.join(d["raw"], "dataset.json")))["ad_domains"]
    domains["ghost_001"] = "Z"
    domains_file = tmp_path / "domains.json"
    domains_file.write_text(json.dumps(domains))
    rc = make_settings_entry(["-d", ds, "--setting", "uda", "--source", "A", "--target", "Z", "--domains",
                               str(domains_file)])
    assert_error(rc, capsys.readouterr().err, "adnnunet_make_settings", "ghost_001", str(domains_file))
    # a target domain that only an imagesTs case has: nothing to adapt to
    del domains["ghost_001"]
    domains["test_000"] = "Z"
    domains_file.write_text(json.dumps(domains))
    rc = make_settings_entry(["-d", ds, "--setting", "uda", "--source", "A", "--target", "Z", "--domains",
                               str(domains_file)])
    assert_error(rc, capsys.readouterr().err, "adnnunet_make_settings", "target domain(s) ['Z']")
    # case lists naming a case that does not exist
    labeled, unlabeled = tmp_path / "labeled.txt", tmp_path / "unlabeled.txt"
    labeled.write_text("phantom_000\nphantom_404\n")
    rc = make_settings_entry(["-d", ds, "--setting", "ssl", "--labeled_list", str(labeled)])
    assert_error(rc, capsys.readouterr().err, "adnnunet_make_settings", "phantom_404")
    labeled.write_text("phantom_000\nphantom_001\n")
    unlabeled.write_text("phantom_002\nunl_404\n")
    rc = make_settings_entry(["-d", ds, "--setting", "ssl", "--labeled_list", str(labeled), "--unlabeled_list",
                               str(unlabeled)])
    assert_error(rc, capsys.readouterr().err, "adnnunet_make_settings", "unl_404")
    assert not os.path.exists(settings_path(d["dataset_id"]))
    assert not os.path.exists(os.path.join(d["preprocessed"], "splits_final.json"))
    # a settings file edited by hand to name a case that does not exist: loading it (as training does) fails
    assert make_settings_entry(["-d", ds, "--setting", "ssl", "--labeled_list", str(labeled)]) == 0
    capsys.readouterr()
    settings = json.load(open(settings_path(d["dataset_id"])))
    settings["folds"][0]["unlabeled"].append("ghost_002")
    json.dump(settings, open(settings_path(d["dataset_id"]), "w"))
    with pytest.raises(ADInputError, match=r"ghost_002.*exist neither in imagesTr nor in imagesUnlabeled.*Fix"):
        load_settings(d["dataset_id"])


def _train(ds, *extra, env=None, trainer="ADTrainer_tiny", timeout=300):
    return subprocess.run([console_command("nnUNetv2_train"), str(ds["dataset_id"]), TINY, "0", "-tr", trainer,
                           "-device", "cpu", *extra], env=env or dict(os.environ), capture_output=True, text=True,
                          timeout=timeout)


def _poison_labels(ds):
    """Label value 7 (dataset.json has 0..2) in every labeled case's preprocessed segmentation."""
    import blosc2

    folder = os.path.join(ds["preprocessed"], "nnUNetPlans_3d_fullres")
    for f in sorted(os.listdir(folder)):
        if f.startswith("phantom_") and f.endswith("_seg.b2nd"):
            seg = blosc2.open(os.path.join(folder, f), mode="r")[:]
            seg.flat[0] = 7
            os.remove(os.path.join(folder, f))
            blosc2.asarray(np.ascontiguousarray(seg), urlpath=os.path.join(folder, f), mode="w")
    return ["its label map contains value(s) [7]", "--verify_dataset_integrity"]


def _remove_unlabeled(ds):
    shutil.rmtree(os.path.join(ds["raw"], "imagesUnlabeled"))
    return ["fold 0 of", "no unlabeled cases"]


def _unlabeled_extra_channel(ds):
    unl = os.path.join(ds["raw"], "imagesUnlabeled")
    shutil.copy(os.path.join(unl, "unl_000_0000.nii.gz"), os.path.join(unl, "unl_000_0001.nii.gz"))
    return ["'unl_000'", "[0000, 0001]"]


@pytest.mark.parametrize("inject", [_poison_labels, _remove_unlabeled, _unlabeled_extra_channel],
                         ids=["label_values", "no_unlabeled", "unlabeled_channels"])
def test_training_data_faults_stop_nnunetv2_train_with_a_message(tiny, inject):
    """Faults found when training starts: a message without traceback, before any data-loading worker, fast."""
    needles = inject(tiny)
    env = dict(os.environ, nnUNet_n_proc_DA="2")  # with workers: an error after their start would hang the exit
    start = time.time()
    r = _train(tiny, env=env)
    assert r.returncode != 0
    assert "nnUNetv2_train: error: " in r.stderr and "Fix" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr[-3000:]
    for n in needles:
        assert n in r.stderr, (n, r.stderr[-3000:])
    assert "Exception in background worker" not in r.stdout + r.stderr
    assert time.time() - start < 120
    assert not os.path.exists(os.path.join(os.environ["nnUNet_results"], tiny["dataset_name"],
                                           f"ADTrainer_tiny__nnUNetPlans__{TINY}", "fold_0", "checkpoint_latest.pth"))


def _children(pid):
    """Live (non-zombie) processes whose parent is ``pid``."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(entry))
    return kids


def _alive(pid):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the worker processes")
def test_sigkill_leaves_no_worker_behind_and_continue_resumes(tiny, tmp_path):
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "kill_test_trainers.py").write_text(
        "from ad_nnunet.training.variants import ADTrainer_tiny\n\n"
        "class ADTrainer_killtest(ADTrainer_tiny):\n"
        "    def __init__(self, plans, configuration, fold, dataset_json, device=None):\n"
        "        super().__init__(plans, configuration, fold, dataset_json, device)\n"
        "        self.num_epochs = 40\n")
    env = dict(os.environ, nnUNet_extTrainer=os.pathsep.join([str(ext), ext_trainer_dir()]), nnUNet_n_proc_DA="2")
    cmd = [console_command("nnUNetv2_train"), str(tiny["dataset_id"]), TINY, "0", "-tr", "ADTrainer_killtest",
           "-device", "cpu"]
    latest = os.path.join(os.environ["nnUNet_results"], tiny["dataset_name"],
                          f"ADTrainer_killtest__nnUNetPlans__{TINY}", "fold_0", "checkpoint_latest.pth")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not os.path.isfile(latest) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.5)  # let it get into a later epoch (and possibly into a checkpoint write)
    workers = _children(proc.pid)
    # labeled, validation and unlabeled augmenters: 2 + 1 + 2 worker processes
    assert len(workers) >= 5, workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)], "data-loading workers outlived the killed training"
    assert os.path.isfile(latest), "training never wrote checkpoint_latest.pth"
    killed_at = torch.load(latest, weights_only=False)["current_epoch"]  # loads: the write was atomic
    assert 1 <= killed_at < 40
    resume = subprocess.run(cmd + ["--c"], env=env, capture_output=True, text=True, timeout=500)
    assert resume.returncode == 0, resume.stderr[-3000:]
    final = torch.load(latest.replace("latest", "final"), weights_only=False)
    assert final["current_epoch"] == 40
    # the resumed run started where the checkpoint was, not from scratch
    assert len(final["logging"]["L_u"]) == 40
