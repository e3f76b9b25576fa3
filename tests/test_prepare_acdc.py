"""ad_nnunet/dataset_conversion/prepare_acdc.py: the ACDC imbssl / uda / semidg datasets on a tiny synthetic ACDC-like
source."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ad_nnunet.benchmark.pipeline import Benchmark
from ad_nnunet.dataset_conversion import prepare_acdc
from ad_nnunet.dataset_conversion.domain_dataset import patient_group
from ad_nnunet.entrypoints.benchmark import build_parser
from ad_nnunet.entrypoints.datasets import prepare_acdc_entry
from ad_nnunet.errors import ADInputError
from conftest import shared_datasets_dir

GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
# small counts for the 15-patient source (3 per group)
SMALL = {"imbssl": dict(num_test=5, num_labeled=3), "uda": dict(num_test=3), "semidg": dict(fraction=0.25)}


def _fake_acdc(root: Path, per_group: int = 3) -> Path:
    """ACDC_patientXXX_frame01/02 of 4x16x16 uint16 voxels (spacing 1.5625 x 1.5625 x 10 mm), labels 0..3, and a
    pathology_groups.json with ``per_group`` patients per group."""
    src = root / "Dataset102_ACDC"
    for sub in ("imagesTr", "labelsTr"):
        (src / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    groups = {}
    for i in range(per_group * len(GROUPS)):
        for frame in ("frame01", "frame02"):
            case = f"ACDC_patient{i + 1:03d}_{frame}"
            groups[case] = GROUPS[i % len(GROUPS)]
            for arr, rel in ((rng.integers(0, 1000, (4, 16, 16)).astype(np.uint16), f"imagesTr/{case}_0000.nii.gz"),
                             (rng.integers(0, 4, (4, 16, 16)).astype(np.uint8), f"labelsTr/{case}.nii.gz")):
                img = sitk.GetImageFromArray(arr)
                img.SetSpacing((1.5625, 1.5625, 10.0))
                sitk.WriteImage(img, str(src / rel))
    (src / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
        "numTraining": len(groups), "file_ending": ".nii.gz"}))
    (src / "pathology_groups.json").write_text(json.dumps(groups))
    return src


@pytest.fixture(scope="module")
def fake_source(tmp_path_factory):
    return _fake_acdc(tmp_path_factory.mktemp("shared"))


def _ids(folder: Path):
    return sorted(f.name[: -len("_0000.nii.gz")] for f in folder.iterdir()) if folder.is_dir() else []


def _check_dataset(target: Path, source: Path):
    """Invariants every setting must satisfy; returns (split, dataset.json)."""
    split = json.loads((target / "benchmark_split.json").read_text())
    ds = json.loads((target / "dataset.json").read_text())
    labeled = (target / "splits" / "labeled.txt").read_text().split()
    unlabeled = (target / "splits" / "unlabeled.txt").read_text().split()
    test = split["test"]
    tr, ts, unl = _ids(target / "imagesTr"), _ids(target / "imagesTs"), _ids(target / "imagesUnlabeled")
    assert labeled == split["labeled"] and unlabeled == split["unlabeled"]
    # lists are disjoint and cover exactly the training cases; test cases are nowhere but imagesTs/labelsTs
    assert not set(labeled) & set(unlabeled) and sorted(labeled + unlabeled) == tr
    assert ts == sorted(test) and not unl and not set(test) & set(tr)
    assert sorted(f.name for f in (target / "labelsTs").iterdir()) == [f"{c}.nii.gz" for c in sorted(test)]
    assert sorted(f.name for f in (target / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in tr]
    assert ds["numTraining"] == len(tr)
    # both frames of a patient always together
    sets = {"labeled": labeled, "unlabeled": unlabeled, "test": test}
    owner = {}
    for name, cases in sets.items():
        for c in cases:
            assert owner.setdefault(patient_group(c), name) == name, c
    assert all(len([c for cs in sets.values() for c in cs if patient_group(c) == p]) == 2 for p in owner)
    assert sorted(c for cs in sets.values() for c in cs) == _ids(source / "imagesTr")
    assert split["seed"] is not None and split["recipe"] and split["command"]
    return split, ds


def _digest(folder: Path) -> dict:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file() and f.suffix != ".json"}


def test_imbssl_split_is_stratified_patient_level_and_leak_free(fake_source, tmp_path):
    target = prepare_acdc.prepare("imbssl", fake_source, tmp_path / "raw", seed=0, **SMALL["imbssl"])
    assert target.name == "Dataset121_ACDCimb"
    split, ds = _check_dataset(target, fake_source)
    assert len(split["patients"]["test"]) == 5 and len(split["patients"]["labeled"]) == 3
    assert split["patients_per_group"]["test"] == {g: 1 for g in GROUPS}  # 5 of 15: one per group
    assert ds["ad_simulated"] is False and set(ds["ad_domains"].values()) == set(GROUPS)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [target.name]  # no temp folder left behind
    with pytest.raises(ADInputError, match="already exists"):
        prepare_acdc.prepare("imbssl", fake_source, tmp_path / "raw", seed=0, **SMALL["imbssl"])
    with pytest.raises(ADInputError, match="--num_labeled"):
        prepare_acdc.prepare("imbssl", fake_source, tmp_path / "raw", seed=0, num_test=5, num_labeled=10,
                             overwrite=True)
    prepare_acdc.prepare("imbssl", fake_source, tmp_path / "raw", seed=1, overwrite=True, **SMALL["imbssl"])
    assert json.loads((target / "benchmark_split.json").read_text())["seed"] == 1
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [target.name]


def test_uda_target_never_labeled_and_marked_simulated(fake_source, tmp_path):
    target = prepare_acdc.prepare("uda", fake_source, tmp_path / "raw", seed=0, **SMALL["uda"])
    split, ds = _check_dataset(target, fake_source)
    dom = ds["ad_domains"]
    assert ds["ad_simulated"] is True and split["simulated"] is True
    assert {dom[c] for c in split["labeled"]} == {"A"}
    assert {dom[c] for c in split["unlabeled"]} == {"B"} and {dom[c] for c in split["test"]} == {"Bt"}
    assert ds["ad_heldout_domains"] == ["Bt"] and ds["ad_unlabeled_domains"] == ["B"]
    assert len(split["patients"]["labeled"]) in (7, 8) and len(split["patients"]["test"]) == 3
    recipe = json.loads((target / "domain_shift_recipe.json").read_text())
    assert recipe["domains"]["B"]["preset"] == recipe["domains"]["Bt"]["preset"] == "vendorC"
    # source files are the originals, target files are shifted
    c_src, c_tgt = split["labeled"][0], split["test"][0]
    read = lambda p: sitk.GetArrayFromImage(sitk.ReadImage(str(p)))  # noqa: E731
    assert np.array_equal(read(target / "imagesTr" / f"{c_src}_0000.nii.gz"),
                          read(fake_source / "imagesTr" / f"{c_src}_0000.nii.gz"))
    assert not np.array_equal(read(target / "imagesTs" / f"{c_tgt}_0000.nii.gz"),
                              read(fake_source / "imagesTr" / f"{c_tgt}_0000.nii.gz"))


def test_semidg_heldout_group_only_in_imagesTs(fake_source, tmp_path):
    target = prepare_acdc.prepare("semidg", fake_source, tmp_path / "raw", seed=0, heldout="NOR",
                                  **SMALL["semidg"])
    split, ds = _check_dataset(target, fake_source)
    dom = ds["ad_domains"]
    assert {dom[c] for c in split["test"]} == {"NOR"}
    assert "NOR" not in {dom[c] for c in _ids(target / "imagesTr")}
    assert len(split["test"]) == 6 and len(split["patients"]["labeled"]) == 3  # round(0.25 * 12)
    assert set(split["patients_per_group"]["labeled"]) <= {"DCM", "HCM", "MINF", "RV"}
    assert ds["ad_simulated"] is False
    with pytest.raises(ADInputError, match="not a group"):
        prepare_acdc.prepare("semidg", fake_source, tmp_path / "raw2", heldout="XYZ")


@pytest.mark.parametrize("setting", ["imbssl", "uda"])
def test_same_seed_same_dataset_other_seed_other_split(fake_source, tmp_path, setting):
    a = prepare_acdc.prepare(setting, fake_source, tmp_path / "a", seed=3, **SMALL[setting])
    b = prepare_acdc.prepare(setting, fake_source, tmp_path / "b", seed=3, **SMALL[setting])
    sa, sb = (json.loads((t / "benchmark_split.json").read_text()) for t in (a, b))
    assert sa == sb and _digest(a) == _digest(b)
    c = prepare_acdc.prepare(setting, fake_source, tmp_path / "c", seed=4, **SMALL[setting])
    assert json.loads((c / "benchmark_split.json").read_text())["patients"] != sa["patients"]


def test_cli_prints_next_command_and_runner_accepts_the_dataset(fake_source, tmp_path, capsys, monkeypatch):
    raw = tmp_path / "raw"
    assert prepare_acdc_entry(["semidg", "--source", str(fake_source), "--raw", str(raw), "--seed", "1",
                               "--fraction", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "--setting semidg" in out and "--preset acdc_cpu_2d" in out and "Dataset123_ACDCdg" in out
    # the printed command passes the runner's input checks (hold-out not in imagesTr, lists in imagesTr)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(raw if var == "nnUNet_raw" else tmp_path / var))
    cmd = out.strip().splitlines()[-1].split()
    assert cmd[0] == "adnnunet_benchmark"  # the installed command, not a source-checkout path
    cmd = cmd[1:]
    args = build_parser().parse_args([a if a != "benchmark_runs/acdc_semidg_cpu" else str(tmp_path / "o")
                                      for a in cmd])
    args.n_proc_da = 0
    bench = Benchmark(args, "cmd")
    assert bench.test == json.loads((raw / "Dataset123_ACDCdg" / "benchmark_split.json").read_text())["test"]
    split = json.loads((raw / "Dataset123_ACDCdg" / "benchmark_split.json").read_text())
    assert split["command"].startswith("adnnunet_prepare_acdc semidg")
    assert prepare_acdc_entry(["uda", "--source", str(fake_source), "--raw", str(raw), "--num_test", "99"]) == 2
    assert "--num_test 99" in capsys.readouterr().err


def test_inconsistent_groups_are_refused(tmp_path):
    src = _fake_acdc(tmp_path / "shared", per_group=1)
    groups = json.loads((src / "pathology_groups.json").read_text())
    groups["ACDC_patient001_frame02"] = "RV" if groups["ACDC_patient001_frame01"] != "RV" else "NOR"
    (src / "pathology_groups.json").write_text(json.dumps(groups))
    with pytest.raises(ADInputError, match="several groups"):
        prepare_acdc.load_source(src)
    del groups["ACDC_patient001_frame02"]
    (src / "pathology_groups.json").write_text(json.dumps(groups))
    with pytest.raises(ADInputError, match="have no group"):
        prepare_acdc.load_source(src)


def test_real_acdc_splits(tmp_path):
    """Read-only use of the shared ACDC: default imbssl and semidg datasets (hard links/copies in tmp_path)."""
    source = shared_datasets_dir() / "Dataset102_ACDC"
    if not (source / "imagesTr").is_dir() or not (source / "pathology_groups.json").is_file():
        pytest.skip(f"shared ACDC not found at {source} (set AD_SHARED_DATASETS to run this test)")
    target = prepare_acdc.prepare("imbssl", source, tmp_path / "raw", seed=0)
    split, _ = _check_dataset(target, source)
    assert len(split["patients"]["test"]) == 16 and len(split["patients"]["labeled"]) == 7
    assert len(split["labeled"]) == 14 and len(split["labeled"]) + len(split["unlabeled"]) == 128
    assert all(n >= 1 for n in split["patients_per_group"]["labeled"].values())
    target = prepare_acdc.prepare("semidg", source, tmp_path / "raw", seed=0)
    split, ds = _check_dataset(target, source)
    assert {ds["ad_domains"][c] for c in split["test"]} == {"HCM"}
    assert len(split["patients"]["labeled"]) == round(0.1 * (len(split["patients"]["labeled"])
                                                             + len(split["patients"]["unlabeled"])))
