"""ad_nnunet.publishing: atomic files, staged datasets, link-or-copy and dataset folder names."""
import json
import os

import pytest

from ad_nnunet.errors import ADInputError
from ad_nnunet.publishing import (describe_file_modes, existing_raw_dataset, link_or_copy, new_dataset_folder,
                                  raw_root_or_env, staged_dataset, write_atomic, write_json_atomic)


def test_write_json_atomic_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"b": 1, "a": 2})
    write_json_atomic(path, {"b": 3, "a": 4}, indent=1, sort_keys=True)
    assert path.read_text(encoding="utf-8") == '{\n "a": 4,\n "b": 3\n}\n'
    assert os.listdir(tmp_path) == ["a.json"]


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")
    seen = []

    def fail(tmp):
        seen.append(tmp.name)
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(path, fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["figure.png"]
    assert seen[0].startswith(".figure.tmp") and seen[0].endswith(".png")  # hidden, file ending kept


def test_staged_dataset_publishes_replaces_and_rolls_back(tmp_path):
    target = tmp_path / "raw" / "Dataset001_A"
    with staged_dataset(target) as staged:
        assert not staged.exists() and staged.name == target.name and staged.parent.name.startswith(".")
        staged.mkdir()
        (staged / "v").write_text("1")
    assert (target / "v").read_text() == "1"
    with staged_dataset(target) as staged:
        staged.mkdir()
        (staged / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    with pytest.raises(ValueError, match="builder failed"):
        with staged_dataset(target) as staged:
            staged.mkdir()
            (staged / "v").write_text("3")
            raise ValueError("builder failed")
    assert (target / "v").read_text() == "2"
    assert os.listdir(tmp_path / "raw") == ["Dataset001_A"]


def test_link_or_copy_and_file_modes(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("x")
    mode = link_or_copy(src, tmp_path / "dst.txt")
    assert mode in ("link", "copy") and (tmp_path / "dst.txt").read_text() == "x"
    assert describe_file_modes([mode, mode]) == {"link": "hard links", "copy": "copies"}[mode]
    assert describe_file_modes(["link", "copy"]) == "mixed"


def test_dataset_folder_names(tmp_path, monkeypatch):
    (tmp_path / "Dataset007_Old").mkdir()
    assert new_dataset_folder(tmp_path, 8, "New", overwrite=False) == tmp_path / "Dataset008_New"
    with pytest.raises(ADInputError, match="already used"):
        new_dataset_folder(tmp_path, 7, "Other", overwrite=False)
    with pytest.raises(ADInputError, match="already exists"):
        new_dataset_folder(tmp_path, 7, "Old", overwrite=False)
    with pytest.raises(ADInputError, match="not in 1..999"):
        new_dataset_folder(tmp_path, 1000, "X", overwrite=False)
    with pytest.raises(ADInputError, match="invalid"):
        new_dataset_folder(tmp_path, 9, "a/b", overwrite=False)
    (tmp_path / "Dataset007_Old" / "dataset.json").write_text(json.dumps({}))
    assert existing_raw_dataset(7, tmp_path) == existing_raw_dataset("Dataset007_Old", tmp_path) \
        == tmp_path / "Dataset007_Old"
    with pytest.raises(ADInputError, match="no raw folder"):
        existing_raw_dataset("9", tmp_path)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert raw_root_or_env(tmp_path, "--raw") == tmp_path
    with pytest.raises(ADInputError, match="nnUNet_raw is not set.*--raw"):
        raw_root_or_env(None, "--raw")
