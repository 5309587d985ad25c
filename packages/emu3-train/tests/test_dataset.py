"""The sample format: round trips, files written the reference's way, errors that name the file."""

from __future__ import annotations

import json
import os

import mindspore as ms
import numpy as np
import pytest
from emu3_train import dataset
from emu3_train.dataset import read_list, read_sample, write_list, write_sample


def _codes(h=3, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 32, (h, w)).astype(np.int64)


def test_round_trip_t2i_and_vqa(tmp_path):
    codes = _codes()
    path = write_sample(tmp_path / "a.ckpt", "a", codes, "a red circle")
    sample = read_sample(path)
    assert (sample.name, sample.texts, sample.response, sample.path) == ("a", "a red circle", None, path)
    assert sample.images.dtype == np.int32 and np.array_equal(sample.images, codes)

    vqa = read_sample(write_sample(tmp_path / "b.ckpt", "id-7", codes[:2], "What is it?", "A circle."))
    assert (vqa.name, vqa.texts, vqa.response) == ("id-7", "What is it?", "A circle.")
    assert vqa.images.shape == (2, 5)
    # only the two samples: no temporary file left behind, and the files are not read-only
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt", "b.ckpt"]
    assert os.access(path, os.W_OK)


def test_empty_caption_round_trips(tmp_path):
    assert read_sample(write_sample(tmp_path / "e.ckpt", "e", _codes(), "")).texts == ""


def test_reads_a_file_written_the_reference_way(tmp_path):
    codes = _codes(4, 4, seed=1).astype(np.int32)
    path = tmp_path / "ref.ckpt"
    ms.save_checkpoint([], str(path), append_dict={"name": "ref", "images": ms.Tensor(codes),
                                                   "texts": "a question", "response": "an answer"})
    sample = read_sample(path)
    assert (sample.name, sample.texts, sample.response) == ("ref", "a question", "an answer")
    assert np.array_equal(sample.images, codes)
    # the reference writes a record's id as it comes: an integer id is stored as a number
    ms.save_checkpoint([], str(tmp_path / "num.ckpt"), append_dict={"name": 12, "images": ms.Tensor(codes),
                                                                    "texts": "t"})
    assert read_sample(tmp_path / "num.ckpt").name == "12"


def test_our_file_loads_the_reference_way(tmp_path):
    codes = _codes()
    data = ms.load_checkpoint(str(write_sample(tmp_path / "s.ckpt", "s", codes, "cap", "resp")))
    assert data["name"] == "s" and data["texts"] == "cap" and data["response"] == "resp"
    assert data["images"].dtype == ms.int32 and np.array_equal(data["images"].asnumpy(), codes)


@pytest.mark.parametrize("append, message", [
    ({"name": "x", "texts": "t"}, "has no 'images' field"),
    ({"name": "x", "images": None}, "has no 'texts' field"),
    ({"images": None, "texts": "t"}, "has no 'name' field"),
    ({"name": "x", "images": "not codes", "texts": "t"}, "'images' must be int32 VQ codes"),
    ({"name": "x", "images": None, "texts": 3}, "'texts' must be a string"),
    ({"name": "x", "images": None, "texts": "t", "response": 1.5}, "'response' must be a string"),
    ({"name": "x", "images": ms.Tensor(np.ones((2, 2), np.float32)), "texts": "t"}, "must hold integer VQ codes"),
    ({"name": "x", "images": ms.Tensor(np.ones(4, np.int32)), "texts": "t"}, "non-empty codes [h, w]"),
])
def test_bad_fields_name_the_file(tmp_path, append, message):
    path = tmp_path / "bad.ckpt"
    append = {k: (ms.Tensor(_codes().astype(np.int32)) if v is None else v) for k, v in append.items()}
    ms.save_checkpoint([], str(path), append_dict=append)
    with pytest.raises(ValueError) as info:
        read_sample(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.ckpt"):
        read_sample(tmp_path / "gone.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        read_sample(tmp_path / "junk.ckpt")


def test_write_checks_its_input(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.ckpt"):
        write_sample(tmp_path / "x.bin", "x", _codes(), "t")
    with pytest.raises(ValueError, match="integer VQ codes"):
        write_sample(tmp_path / "x.ckpt", "x", np.zeros((2, 2), np.float32), "t")
    with pytest.raises(ValueError, match="outside"):
        write_sample(tmp_path / "x.ckpt", "x", -np.ones((2, 2), np.int64), "t")
    with pytest.raises(ValueError, match="name"):
        write_sample(tmp_path / "x.ckpt", "", _codes(), "t")
    assert not list(tmp_path.iterdir())


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    real = ms.save_checkpoint

    def crash(obj, name, **kwargs):
        real(obj, name, **kwargs)  # the file is complete under its temporary name...
        raise KeyboardInterrupt  # ...when the run is stopped

    monkeypatch.setattr(ms, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        write_sample(tmp_path / "s.ckpt", "s", _codes(), "t")
    assert not list(tmp_path.iterdir())


def test_list_round_trip_and_prefixes(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_sample(dataset.feature_dir(out) / "a.ckpt", "a", _codes(), "t")
    lp = dataset.list_path(out)
    assert lp == out / "list" / "train.json"

    write_list(lp, dataset.feature_dir(out).resolve(), ["a.ckpt"])  # absolute
    assert json.loads(lp.read_text()) == {"prefix": str(dataset.feature_dir(out).resolve()), "path_list": ["a.ckpt"]}
    samples = read_list(lp)
    assert len(samples) == 1 and samples.read(0).name == "a"

    write_list(lp, "../feature", ["a.ckpt"])  # relative to the list file
    assert read_list(lp).sample_path(0) == out / "list" / "../feature" / "a.ckpt"

    # the reference scripts write the prefix relative to the directory they ran in
    write_list(lp, "out/feature", ["a.ckpt"])
    monkeypatch.chdir(tmp_path)
    assert read_list(lp).read(0).name == "a"
    monkeypatch.chdir(out)
    with pytest.raises(FileNotFoundError) as info:
        read_list(lp)
    assert str(lp) in str(info.value) and "out/feature" in str(info.value)


def test_bad_lists_name_the_file(tmp_path):
    lp = tmp_path / "train.json"
    with pytest.raises(FileNotFoundError, match="train.json"):
        read_list(lp)
    for text, message in [("{", "not valid JSON"), ('{"prefix": "."}', "'prefix' and 'path_list'"),
                          ('{"prefix": 1, "path_list": []}', "'prefix' must be a string"),
                          ('{"prefix": ".", "path_list": "a.ckpt"}', "'path_list' must be a list"),
                          ('{"prefix": ".", "path_list": [""]}', r"path_list\[0\]")]:
        lp.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            read_list(lp)
        assert str(lp) in str(info.value)


def test_missing_sample_is_named_when_read(tmp_path):
    lp = write_list(tmp_path / "list" / "train.json", tmp_path, ["nowhere.ckpt"])
    samples = read_list(lp)  # files are checked when read
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        samples.read(0)


def test_remove_list(tmp_path):
    lp = write_list(tmp_path / "train.json", tmp_path, [])
    dataset.remove_list(lp)
    assert not lp.exists()
    dataset.remove_list(lp)  # absent: nothing to do
