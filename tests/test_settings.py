"""ad_settings.json / splits_final.json: ssl, uda, semidg rules, validation, loading, CLI."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from ad_nnunet import console_command
from ad_nnunet.data.raw import UNLABELED_DIRNAME
from ad_nnunet.data.settings import (FoldSplit, default_fold, hidden_label_cases, load_fold, make_settings,
                                     settings_path, validate_settings)
from ad_nnunet.entrypoints.preparation import make_settings_entry
from ad_nnunet.errors import ADInputError

SHARED = Path(os.environ.get("AD_SHARED_DATASETS") or Path(__file__).resolve().parents[2] / "shared" / "datasets")


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Private nnUNet_raw/nnUNet_preprocessed (nnunetv2.paths reads the env vars lazily)."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    raw.mkdir()
    pre.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    return raw, pre


def fake_raw(raw_root, dataset_id, tr_ids, unl_ids=(), domains=None, name="Fake", ts_ids=()):
    """Empty image files suffice: settings only need the case ids."""
    root = raw_root / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", UNLABELED_DIRNAME, "imagesTs"):
        (root / sub).mkdir(parents=True)
    for c in ts_ids:
        (root / "imagesTs" / f"{c}_0000.nii.gz").touch()
    for c in tr_ids:
        (root / "imagesTr" / f"{c}_0000.nii.gz").touch()
        (root / "labelsTr" / f"{c}.nii.gz").touch()
    for c in unl_ids:
        (root / UNLABELED_DIRNAME / f"{c}_0000.nii.gz").touch()
    dj = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1}, "numTraining": len(tr_ids),
          "file_ending": ".nii.gz"}
    if domains is not None:
        dj["ad_domains"] = domains
    (root / "dataset.json").write_text(json.dumps(dj))
    return root


def read(path):
    with open(path) as f:
        return json.load(f)


def outputs(pre, name):
    return sorted(os.listdir(pre / name)) if (pre / name).is_dir() else []


TR = [f"c{i:02d}" for i in range(10)]
UNL = [f"u{i}" for i in range(3)]


def test_ssl_num_labeled(dirs):
    raw, pre = dirs
    fake_raw(raw, 501, TR, UNL)
    path = make_settings(501, "ssl", num_labeled=3, seed=1)
    assert path == settings_path(501) == str(pre / "Dataset501_Fake" / "ad_settings.json")
    s = read(path)
    assert s["format_version"] == 1 and s["setting"] == "ssl" and s["seed"] == 1 and "make_settings" in s["command"]
    (fold,) = s["folds"]
    assert len(fold["labeled"]) == 3 and set(fold["labeled"]) <= set(TR)
    assert sorted(fold["labeled"] + fold["unlabeled"]) == sorted(TR + UNL)
    assert fold["val"] == fold["labeled"]  # paper protocol
    assert read(pre / "Dataset501_Fake" / "splits_final.json") == [{"train": fold["labeled"], "val": fold["val"]}]
    # deterministic, seed-dependent
    assert read(make_settings(501, "ssl", num_labeled=3, seed=1))["folds"] == s["folds"]
    other = read(make_settings(501, "ssl", num_labeled=3, seed=2, overwrite=True))["folds"][0]["labeled"]
    assert other != fold["labeled"]
    fs = load_fold(501, 0)
    assert isinstance(fs, FoldSplit) and fs.labeled == tuple(other) and fs.source == path
    assert set(hidden_label_cases(fs, TR)) == set(TR) - set(other)
    assert not set(hidden_label_cases(fs, TR)) & set(UNL)


def test_ssl_fraction_folds_and_val(dirs):
    raw, pre = dirs
    fake_raw(raw, 502, TR, UNL)
    s = read(make_settings(502, "ssl", fraction=0.25, num_val=2, seed=5, num_folds=3))
    assert len(s["folds"]) == 3
    for k, f in enumerate(s["folds"]):
        assert len(f["labeled"]) == 2  # round(0.25 * 10) = 2 (banker's rounding of 2.5)
        assert len(f["val"]) == 2 and set(f["val"]) <= set(TR) - set(f["labeled"])
        assert not set(f["val"]) & set(f["unlabeled"])  # validation labels are never trained on, not even as images
        assert sorted(f["labeled"] + f["unlabeled"] + f["val"]) == sorted(TR + UNL)
        # fold k is the seed+k draw
        single = read(make_settings(502, "ssl", fraction=0.25, num_val=2, seed=5 + k, overwrite=True))["folds"][0]
        assert single == f
    assert len({tuple(f["labeled"]) for f in s["folds"]}) > 1
    assert read(make_settings(502, "ssl", fraction=0.01, overwrite=True))["folds"][0]["labeled"].__len__() == 1


@pytest.mark.parametrize("frac,n_lab", [("0.1", 8), ("0.05", 4)])
def test_la_paper_splits(dirs, frac, n_lab):
    la = SHARED / "Dataset101_LA"
    if not (la / "splits").is_dir():
        pytest.skip(f"{la} not available (../shared/datasets absent); set AD_SHARED_DATASETS to run this test")
    raw, pre = dirs
    ids = sorted(f[: -len("_0000.nii.gz")] for f in os.listdir(la / "imagesTr"))
    assert len(ids) == 80
    fake_raw(raw, 101, ids, name="LA")
    lab = (la / "splits" / f"labeled_{frac}.txt").read_text().split()
    unl = (la / "splits" / f"unlabeled_{frac}.txt").read_text().split()
    assert len(lab) == n_lab and len(unl) == 80 - n_lab
    make_settings(101, "ssl", labeled_list=str(la / "splits" / f"labeled_{frac}.txt"),
                  unlabeled_list=str(la / "splits" / f"unlabeled_{frac}.txt"))
    fold = load_fold(101, 0)
    assert list(fold.labeled) == lab and list(fold.unlabeled) == unl and list(fold.val) == lab
    assert read(pre / "Dataset101_LA" / "splits_final.json") == [{"train": lab, "val": lab}]
    # only the labeled list: unlabeled = the rest of imagesTr, the same set as the paper's list
    make_settings(101, "ssl", labeled_list=str(la / "splits" / f"labeled_{frac}.txt"), overwrite=True)
    assert sorted(load_fold(101, 0).unlabeled) == sorted(unl)


def test_uda(dirs):
    raw, pre = dirs
    dom = {**{c: ("S" if i < 6 else "T") for i, c in enumerate(TR)}, "u0": "T", "u1": "T", "u2": "S"}
    fake_raw(raw, 503, TR, UNL, domains=dom)
    f = read(make_settings(503, "uda", source_domains=["S"]))["folds"][0]
    assert f["labeled"] == TR[:6] and f["val"] == TR[:6]
    assert sorted(f["unlabeled"]) == sorted(TR[6:] + ["u0", "u1"])  # all target cases, no source imagesUnlabeled
    f = read(make_settings(503, "uda", source_domains=["S"], target_domains=["T"], num_val=2, seed=3,
                           overwrite=True))["folds"][0]
    assert set(f["val"]) <= set(TR[6:]) and len(f["val"]) == 2 and not set(f["val"]) & set(f["unlabeled"])
    assert all(dom[c] == "S" for c in f["labeled"])  # target images are never labeled
    fs = load_fold(503, 0)
    assert fs.domains == dom
    with pytest.raises(ADInputError, match=r"unknown domain name\(s\) \['Z'\].*known domains: \['S', 'T'\]"):
        make_settings(503, "uda", source_domains=["Z"], overwrite=True)
    with pytest.raises(ADInputError, match="both source and target"):
        make_settings(503, "uda", source_domains=["S"], target_domains=["S", "T"], overwrite=True)


def test_uda_case_without_domain(dirs):
    raw, pre = dirs
    fake_raw(raw, 504, TR, UNL, domains={c: "S" for c in TR})
    with pytest.raises(ADInputError, match=r"u0.*no domain.*ad_domains"):
        make_settings(504, "uda", source_domains=["S"])
    assert outputs(pre, "Dataset504_Fake") == []


def test_semidg(dirs):
    raw, pre = dirs
    dom = {c: "ABC"[i % 3] for i, c in enumerate(TR)}
    dom.update({"u0": "A", "u1": "B", "u2": "C"})
    fake_raw(raw, 505, TR, UNL, domains=dom)
    with pytest.raises(ADInputError) as e:
        make_settings(505, "semidg", num_labeled=2, heldout_domains=["C"])
    msg = str(e.value)
    assert "4 case(s) of the held-out domain(s) ['C']" in msg and "c02" in msg and "imagesTs/labelsTs" in msg
    assert outputs(pre, "Dataset505_Fake") == []

    # after moving domain C out of imagesTr/imagesUnlabeled (its cases stay in ad_domains as test cases)
    tr = [c for c in TR if dom[c] != "C"]
    fake_raw(raw, 506, tr, ["u0", "u1"], domains=dom, ts_ids=[c for c in dom if dom[c] == "C"])
    s = read(make_settings(506, "semidg", num_labeled=4, heldout_domains=["C"], seed=0, num_folds=2))
    for f in s["folds"]:
        assert f["heldout_domains"] == ["C"]
        assert sorted(dom[c] for c in f["labeled"]) == ["A", "A", "B", "B"]  # stratified per domain
        assert sorted(f["labeled"] + f["unlabeled"]) == sorted(tr + ["u0", "u1"])
        assert f["val"] == f["labeled"]
    with pytest.raises(ADInputError, match=r"unknown domain name\(s\) \['D'\].*known domains: \['A', 'B', 'C'\]"):
        make_settings(506, "semidg", num_labeled=4, heldout_domains=["D"], overwrite=True)


def test_case_both_labeled_and_unlabeled(dirs, tmp_path):
    raw, pre = dirs
    fake_raw(raw, 507, TR, UNL)
    (tmp_path / "lab.txt").write_text("c01\nc02\n")
    (tmp_path / "unl.txt").write_text("c02\nc03\n")
    with pytest.raises(ADInputError, match=r"c02 listed both as labeled and unlabeled"):
        make_settings(507, "ssl", labeled_list=str(tmp_path / "lab.txt"), unlabeled_list=str(tmp_path / "unl.txt"))
    assert outputs(pre, "Dataset507_Fake") == []


def test_case_that_does_not_exist(dirs, tmp_path):
    raw, pre = dirs
    fake_raw(raw, 508, TR, UNL)
    (tmp_path / "lab.txt").write_text("c01\nnope_17\n")
    with pytest.raises(ADInputError, match=r"Fold 0: case\(s\) nope_17 in 'labeled' exist neither in imagesTr"):
        make_settings(508, "ssl", labeled_list=str(tmp_path / "lab.txt"))
    assert outputs(pre, "Dataset508_Fake") == []


def test_labeled_case_without_label(dirs, tmp_path):
    raw, pre = dirs
    fake_raw(raw, 509, TR, UNL)
    (tmp_path / "lab.txt").write_text("c01\nu1\n")
    with pytest.raises(ADInputError, match=r"labeled case\(s\) u1 are in imagesUnlabeled and have no label"):
        make_settings(509, "ssl", labeled_list=str(tmp_path / "lab.txt"))
    assert outputs(pre, "Dataset509_Fake") == []


def test_zero_labeled(dirs, tmp_path):
    raw, pre = dirs
    fake_raw(raw, 510, TR, UNL)
    (tmp_path / "lab.txt").write_text("\n")
    with pytest.raises(ADInputError, match="Fold 0 has zero labeled cases"):
        make_settings(510, "ssl", labeled_list=str(tmp_path / "lab.txt"))
    assert outputs(pre, "Dataset510_Fake") == []
    with pytest.raises(ADInputError, match=r"--num_labeled 0 is not in 1\.\.10"):
        make_settings(510, "ssl", num_labeled=0)
    with pytest.raises(ADInputError, match="--num_labeled N, --fraction F"):
        make_settings(510, "ssl")


def test_validate_settings_direct():
    base = {"format_version": 1, "setting": "ssl", "command": "x", "seed": 0, "domains": {},
            "folds": [{"labeled": ["a"], "unlabeled": ["b", "u"], "val": ["a"], "heldout_domains": []}]}
    validate_settings(base, ["a", "b"], ["u"])
    bad = json.loads(json.dumps(base))
    bad["folds"].append({"labeled": [], "unlabeled": ["b"], "val": [], "heldout_domains": []})
    with pytest.raises(ADInputError, match="Fold 1 has zero labeled cases"):
        validate_settings(bad, ["a", "b"], ["u"])
    bad = json.loads(json.dumps(base))
    bad["folds"][0]["val"] = ["ghost"]
    with pytest.raises(ADInputError, match=r"Fold 0: case\(s\) ghost in 'val' exist neither"):
        validate_settings(bad, ["a", "b"], ["u"])
    bad = json.loads(json.dumps(base))
    bad["folds"][0]["heldout_domains"] = ["X"]
    with pytest.raises(ADInputError, match=r"unknown domain name\(s\) \['X'\]; known domains: \[\]"):
        validate_settings(bad, ["a", "b"], ["u"])
    bad = json.loads(json.dumps(base))
    bad["setting"] = "uda"
    bad["domains"] = {"a": "S", "b": "T"}
    with pytest.raises(ADInputError, match=r"case\(s\) u have no domain"):
        validate_settings(bad, ["a", "b"], ["u"])


def test_load_validates_and_fold_range(dirs):
    raw, pre = dirs
    fake_raw(raw, 511, TR, UNL)
    assert load_fold(511, 0) is None  # no settings file
    path = make_settings(511, "ssl", num_labeled=2)
    with pytest.raises(ADInputError, match=r"Fold 1 requested.*folds 0\.\.0"):
        load_fold(511, 1)
    s = read(path)
    s["folds"][0]["unlabeled"].append(s["folds"][0]["labeled"][0])  # hand-edited into an inconsistent state
    Path(path).write_text(json.dumps(s))
    with pytest.raises(ADInputError, match="listed both as labeled and unlabeled"):
        load_fold(511, 0)
    # a raw case that disappeared after the settings were made
    make_settings(511, "ssl", num_labeled=2, overwrite=True)
    (raw / "Dataset511_Fake" / UNLABELED_DIRNAME / "u2_0000.nii.gz").unlink()
    with pytest.raises(ADInputError, match=r"Fold 0: case\(s\) u2 in 'unlabeled' exist neither"):
        load_fold(511, 0)


def test_default_fold():
    fs = default_fold(["a", "b"], ["c"], ["u2", "u1"])
    assert fs.labeled == ("a", "b") and fs.val == ("c",) and fs.unlabeled == ("u1", "u2") and fs.domains == {}


def test_splits_final_protection(dirs):
    raw, pre = dirs
    fake_raw(raw, 512, TR, UNL)
    (pre / "Dataset512_Fake").mkdir()
    nnunet_default = [{"train": TR[:8], "val": TR[8:]}]
    (pre / "Dataset512_Fake" / "splits_final.json").write_text(json.dumps(nnunet_default))
    with pytest.raises(ADInputError, match="splits_final.json exists with a different split.*--overwrite"):
        make_settings(512, "ssl", num_labeled=2)
    assert read(pre / "Dataset512_Fake" / "splits_final.json") == nnunet_default
    assert not (pre / "Dataset512_Fake" / "ad_settings.json").exists()
    make_settings(512, "ssl", num_labeled=2, overwrite=True)
    make_settings(512, "ssl", num_labeled=2)  # identical content: no refusal
    assert sorted(os.listdir(pre / "Dataset512_Fake")) == ["ad_settings.json", "splits_final.json"]  # no temp files


def test_cli(dirs, capsys):
    raw, pre = dirs
    dom = {c: "AB"[i % 2] for i, c in enumerate(TR + UNL)}
    fake_raw(raw, 513, TR, UNL, domains=dom)
    make_settings_entry(["-d", "513", "--setting", "ssl", "--num_labeled", "4", "--num_val", "1", "--num_folds", "2"])
    out = capsys.readouterr().out
    assert "fold 0: labeled 4, unlabeled 8, val 1" in out and "fold 1:" in out and "domain A:" in out
    assert out.strip().endswith("ad_settings.json")
    s = read(settings_path(513))
    assert s["command"].startswith("adnnunet_make_settings -d 513 --setting ssl --num_labeled 4")
    assert make_settings_entry(["-d", "513", "--setting", "uda", "--source", "Q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adnnunet_make_settings: error: ") and "'Q'" in err and "known domains" in err and "Traceback" not in err


def test_cli_subprocess_exit_code(dirs):
    raw, pre = dirs
    fake_raw(raw, 514, TR, UNL)
    r = subprocess.run([console_command("adnnunet_make_settings"), "-d", "514", "--setting", "ssl",
                        "--num_labeled", "99"], capture_output=True, text=True, env=dict(os.environ),
                       cwd=str(Path(__file__).resolve().parents[1]))
    assert r.returncode == 2
    assert "--num_labeled 99 is not in 1..10" in r.stderr and "Traceback" not in r.stderr
