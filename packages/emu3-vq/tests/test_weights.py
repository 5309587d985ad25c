"""safetensors I/O (emu3_vq.weights) against the safetensors library's own readers and writers."""

import json
import os

import numpy as np
import pytest

from emu3_vq import weights as W
from emu3_vq.weights import CheckpointError

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")
st_numpy = pytest.importorskip("safetensors.numpy")


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "enc.weight": rng.standard_normal((5, 3, 3, 3)).astype(np.float32),
        "enc.bias": rng.standard_normal(5).astype(np.float32),
        "half": rng.standard_normal((4, 6)).astype(np.float16),
        "double": rng.standard_normal(3),
        "steps": np.array(7, dtype=np.int64),
        "ids": np.arange(-3, 9, dtype=np.int32),
        "mask": np.array([True, False, True]),
        "bytes": np.arange(10, dtype=np.uint8),
        "empty": np.zeros((0, 4), np.float32),
    }


def _tmp_files(directory):
    return [p for p in os.listdir(directory) if p.endswith(".tmp")]


# ---- file format ---------------------------------------------------------------------------

def test_round_trip_native_dtypes_readable_by_safetensors(tmp_path):
    tensors = _tensors()
    path = tmp_path / "a.safetensors"
    W.write_safetensors(path, tensors, metadata={"format": "pt", "note": "x"})
    for reader in (st_numpy.load_file, W.read_safetensors):
        back = reader(str(path))
        assert set(back) == set(tensors)
        for name, arr in tensors.items():
            assert back[name].dtype == arr.dtype, name
            assert back[name].shape == arr.shape, name
            np.testing.assert_array_equal(back[name], arr)
    assert W.read_metadata(path) == {"format": "pt", "note": "x"}
    keys = W.checkpoint_keys(path)
    assert keys["enc.weight"] == ("F32", (5, 3, 3, 3))
    assert keys["half"] == ("F16", (4, 6)) and keys["steps"] == ("I64", ())
    assert keys["mask"][0] == "BOOL" and keys["bytes"][0] == "U8" and keys["double"][0] == "F64"


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_float_conversion_on_write_matches_torch(tmp_path, dtype):
    tensors = _tensors()
    special = np.array([0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, 3.4e38, 1e-40,
                        1.00390625, 1.01171875, 1.0 + 2**-8 + 2**-9, -2.5], np.float32)
    tensors["special"] = special  # bf16 ties (1 + 2^-8) round to even; 3.4e38 overflows to inf
    path = tmp_path / "c.safetensors"
    W.write_safetensors(path, tensors, dtype=dtype)
    back = st_torch.load_file(str(path))
    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    for name, arr in tensors.items():
        if arr.dtype.kind == "f":
            expected = torch.from_numpy(np.ascontiguousarray(arr)).to(torch_dtype)
            assert back[name].dtype == torch_dtype, name
            assert torch.equal(back[name].isnan(), expected.isnan()), name
            ok = ~expected.isnan()
            assert torch.equal(back[name][ok], expected[ok]), name
        else:
            np.testing.assert_array_equal(back[name].numpy(), arr)
    ours = W.read_safetensors(path)
    if dtype == "BF16":  # widened back to float32, exactly the bf16 values
        expected = torch.from_numpy(special).bfloat16().float().numpy()
        assert ours["special"].dtype == np.float32
        np.testing.assert_array_equal(ours["special"], expected)


def test_reads_files_written_by_safetensors_torch(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "bf": torch.randn(3, 7, generator=g).bfloat16(),
        "f16": torch.randn(5, generator=g).half(),
        "f32": torch.randn(2, 2, generator=g),
        "i64": torch.arange(6).reshape(2, 3),
        "b": torch.tensor([True, False]),
    }
    path = tmp_path / "t.safetensors"
    st_torch.save_file(tensors, str(path), metadata={"format": "pt"})
    ours = W.read_safetensors(path)
    assert ours["bf"].dtype == np.float32
    np.testing.assert_array_equal(ours["bf"], tensors["bf"].float().numpy())
    for name in ("f16", "f32", "i64", "b"):
        np.testing.assert_array_equal(ours[name], tensors[name].numpy())
    assert W.checkpoint_keys(path)["bf"] == ("BF16", (3, 7))


def test_iter_checkpoint_views_and_name_filter(tmp_path):
    tensors = _tensors()
    path = tmp_path / "m.safetensors"
    W.write_safetensors(path, tensors)
    got = dict(W.iter_checkpoint(path, names=["enc.bias", "half"]))
    assert set(got) == {"enc.bias", "half"}
    np.testing.assert_array_equal(got["half"], tensors["half"])
    assert not got["half"].flags.writeable  # a view of the mapped file, not a copy
    with pytest.raises(CheckpointError, match="not.in the checkpoint: nope"):
        list(W.iter_checkpoint(path, names=["enc.bias", "nope"]))


# ---- sharded checkpoints -------------------------------------------------------------------

def test_sharded_checkpoint_layout_matches_huggingface_hub(tmp_path):
    from huggingface_hub import split_torch_state_dict_into_shards

    rng = np.random.default_rng(1)
    tensors = {f"layers.{i}.w": rng.standard_normal((i + 1, 40)).astype(np.float32) for i in range(8)}
    tensors["big"] = rng.standard_normal((30, 40)).astype(np.float32)  # over the limit: own shard
    limit = 1200  # bytes as stored (bf16: 80 per row)
    files = W.write_checkpoint(tmp_path, tensors, max_shard_bytes=limit, dtype="BF16")

    split = split_torch_state_dict_into_shards(
        {k: torch.from_numpy(v).bfloat16() for k, v in tensors.items()}, max_shard_size=limit)
    assert split.is_sharded
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == split.tensor_to_filename
    assert index["metadata"]["total_size"] == split.metadata["total_size"]
    assert index["metadata"]["total_parameters"] == sum(v.size for v in tensors.values())
    expected_files = [*split.filename_to_tensors, "model.safetensors.index.json"]
    assert sorted(p.name for p in files) == sorted(expected_files)

    keys = W.checkpoint_keys(tmp_path)
    assert keys == {k: ("BF16", v.shape) for k, v in tensors.items()}
    loaded = dict(W.iter_checkpoint(tmp_path))
    assert set(loaded) == set(tensors)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(loaded[name], torch.from_numpy(arr).bfloat16().float().numpy())
    for shard in split.filename_to_tensors:  # every shard readable by safetensors itself
        part = st_torch.load_file(str(tmp_path / shard))
        assert st_torch.load_file(str(tmp_path / shard)).keys() == set(split.filename_to_tensors[shard])
        assert all(t.dtype == torch.bfloat16 for t in part.values())


def test_single_file_checkpoint_and_stale_shards_removed(tmp_path):
    tensors = _tensors()
    W.write_checkpoint(tmp_path, tensors, max_shard_bytes=64)
    assert (tmp_path / "model.safetensors.index.json").exists()
    W.write_checkpoint(tmp_path, tensors)  # now fits in one file: old shards would be ambiguous
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    assert set(W.checkpoint_keys(tmp_path)) == set(tensors)
    assert st_numpy.load_file(str(tmp_path / "model.safetensors")).keys() == tensors.keys()
    assert W.read_metadata(tmp_path / "model.safetensors")["format"] == "pt"


def test_directory_resolution(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        W.checkpoint_keys(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        W.checkpoint_keys(tmp_path / "absent")
    one = tmp_path / "one"
    W.write_safetensors(one / "weights.safetensors", {"x": np.ones(2, np.float32)})
    assert W.checkpoint_keys(one) == {"x": ("F32", (2,))}
    W.write_safetensors(one / "other.safetensors", {"y": np.ones(2, np.float32)})
    with pytest.raises(CheckpointError, match="several .safetensors"):
        W.checkpoint_keys(one)


# ---- corrupt files and failed writes ----------------------------------------------------------

def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    W.write_safetensors(good, _tensors())
    data = good.read_bytes()

    cases = {
        "truncated.safetensors": data[:-5],
        "headless.safetensors": data[:20],
        "tiny.safetensors": b"abc",
        "garbage.safetensors": (16).to_bytes(8, "little") + b"{not json at all",
        "hugeheader.safetensors": (10**12).to_bytes(8, "little") + b"{}",
    }
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            W.read_safetensors(bad)
        with pytest.raises(CheckpointError, match=name):
            W.checkpoint_keys(bad)

    header = {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}  # 4 floats need 16
    raw = json.dumps(header).encode()
    (tmp_path / "offsets.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(16))
    with pytest.raises(CheckpointError, match="offsets.safetensors.*'x'"):
        W.read_header(tmp_path / "offsets.safetensors")


def test_index_problems(tmp_path):
    tensors = _tensors()
    W.write_checkpoint(tmp_path, tensors, max_shard_bytes=64)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost"] = index["weight_map"]["enc.bias"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="ghost"):
        W.checkpoint_keys(tmp_path)
    # a shard the folder lacks is left out with its tensors (a hub snapshot of part of a
    # checkpoint); a model that needs them names them as missing keys in its strict check
    index["weight_map"]["ghost"] = "model-00099-of-00099.safetensors"
    index_path.write_text(json.dumps(index))
    assert "ghost" not in W.checkpoint_keys(tmp_path)
    assert sorted(k for k, _ in W.iter_checkpoint(tmp_path)) == sorted(tensors)
    index["weight_map"] = {k: "model-00099-of-00099.safetensors" for k in index["weight_map"]}
    index_path.write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="none of the shards"):
        W.checkpoint_keys(tmp_path)
    index_path.write_text("{")
    with pytest.raises(CheckpointError, match="index"):
        W.checkpoint_keys(tmp_path)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    W.write_safetensors(path, {"old": np.ones(3, np.float32)})
    before = path.read_bytes()
    real = W._to_bytes
    calls = []

    def failing(arr, dtype_name):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(arr, dtype_name)

    monkeypatch.setattr(W, "_to_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        W.write_safetensors(path, _tensors())
    assert path.read_bytes() == before  # the old file is untouched
    assert _tmp_files(tmp_path) == []
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        W.write_safetensors(tmp_path / "new.safetensors", _tensors())
    assert not (tmp_path / "new.safetensors").exists() and _tmp_files(tmp_path) == []


def test_bad_write_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        W.write_safetensors(tmp_path / "x.safetensors", {"a": np.ones(1)}, dtype="F8")
    with pytest.raises(ValueError, match="cannot store"):
        W.write_safetensors(tmp_path / "x.safetensors", {"a": np.array(["s"])})
    assert not (tmp_path / "x.safetensors").exists()


# ---- loading into MindSpore Cells -------------------------------------------------------------

@pytest.fixture(scope="module")
def ms():
    return pytest.importorskip("mindspore")


def _tiny_cell(ms):
    from mindspore import nn

    class Tiny(nn.Cell):
        def __init__(self):
            super().__init__()
            self.proj = nn.Dense(3, 4)
            self.norm = nn.BatchNorm2d(4)
            self.table = ms.Parameter(ms.Tensor(np.zeros((2, 2), np.float16)), name="table")

        def construct(self, x):
            return self.proj(x)

    return Tiny()


def _arrays_for(cell, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(p.shape).astype(np.float64) for name, p in cell.parameters_and_names()}


def test_load_into_assigns_and_casts(ms, tmp_path):
    cell = _tiny_cell(ms)
    arrays = _arrays_for(cell)
    assert {"proj.weight", "proj.bias", "norm.moving_mean", "norm.moving_variance", "table"} <= set(arrays)
    W.load_into(cell, arrays)  # float64 arrays cast to each parameter's dtype
    state = W.state_dict_numpy(cell)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(state[name], arr.astype(state[name].dtype))
    assert state["table"].dtype == np.float16 and state["proj.weight"].dtype == np.float32

    # save -> sharded bf16 checkpoint -> stream back in with a header pre-check
    W.write_checkpoint(tmp_path, state, max_shard_bytes=40, dtype="BF16")
    fresh = _tiny_cell(ms)
    W.load_into(fresh, W.iter_checkpoint(tmp_path), expected_names=W.checkpoint_keys(tmp_path))
    again = W.state_dict_numpy(fresh)
    for name, arr in state.items():
        expected = torch.from_numpy(arr.astype(np.float32)).bfloat16().float().numpy().astype(arr.dtype)
        np.testing.assert_array_equal(again[name], expected)


def test_load_into_from_bf16_bits(ms, tmp_path):
    cell = _tiny_cell(ms)
    arrays = {k: v.astype(np.float32) for k, v in _arrays_for(cell, seed=4).items()}
    W.write_checkpoint(tmp_path, arrays, dtype="BF16")
    bits = dict(W.iter_checkpoint(tmp_path, bf16="bits"))
    assert isinstance(bits["proj.weight"], W.BF16Bits) and bits["proj.weight"].dtype == np.uint16
    assert bits["proj.weight"].shape == (4, 3)
    W.load_into(cell, W.iter_checkpoint(tmp_path, bf16="bits"))  # into fp32 / fp16 parameters
    state = W.state_dict_numpy(cell)
    for name, arr in arrays.items():
        expected = torch.from_numpy(arr).bfloat16().float().numpy().astype(state[name].dtype)
        np.testing.assert_array_equal(state[name], expected)
    with pytest.raises(ValueError, match="bf16"):
        list(W.iter_checkpoint(tmp_path, bf16="int"))


def test_load_into_bf16_parameters(ms, tmp_path):
    cell = _tiny_cell(ms)
    cell.to_float(ms.bfloat16)
    for _, p in cell.parameters_and_names():
        p.set_dtype(ms.bfloat16)
    arrays = _arrays_for(cell, seed=3)
    W.load_into(cell, arrays)
    state = W.state_dict_numpy(cell)
    w = arrays["proj.weight"].astype(np.float32)
    np.testing.assert_array_equal(state["proj.weight"], torch.from_numpy(w).bfloat16().float().numpy())
    # bf16 file -> bf16 parameters straight from the bit patterns
    fresh = _tiny_cell(ms)
    for _, p in fresh.parameters_and_names():
        p.set_dtype(ms.bfloat16)
    W.write_checkpoint(tmp_path, state, dtype="BF16")
    W.load_into(fresh, W.iter_checkpoint(tmp_path, bf16="bits"))
    assert all(p.dtype == ms.bfloat16 for _, p in fresh.parameters_and_names())
    again = W.state_dict_numpy(fresh)
    assert all(np.array_equal(again[k], state[k]) for k in state)


def test_load_into_strict_errors_before_any_change(ms):
    cell = _tiny_cell(ms)
    before = W.state_dict_numpy(cell)
    arrays = _arrays_for(cell)
    del arrays["proj.bias"]
    arrays["extra.weight"] = np.ones(3)
    arrays["proj.weight"] = np.ones((3, 4))  # transposed
    with pytest.raises(CheckpointError) as info:
        W.load_into(cell, arrays, what="my.safetensors")
    msg = str(info.value)
    assert "my.safetensors" in msg
    assert "1 missing keys: proj.bias" in msg
    assert "1 unexpected keys: extra.weight" in msg
    assert "proj.weight (checkpoint [3, 4] vs model [4, 3])" in msg
    after = W.state_dict_numpy(cell)
    assert all(np.array_equal(before[k], after[k]) for k in before)

    # a stream with expected names is checked up front too
    good = _arrays_for(cell)
    names = {k: v.shape for k, v in good.items()}
    names["ghost"] = (1,)
    with pytest.raises(CheckpointError, match="unexpected keys: ghost"):
        W.load_into(cell, iter(good.items()), expected_names=names)
    after = W.state_dict_numpy(cell)
    assert all(np.array_equal(before[k], after[k]) for k in before)

    # a bare stream can only be judged at its end
    partial = [(k, v) for k, v in good.items() if k != "table"]
    with pytest.raises(CheckpointError, match="missing keys: table"):
        W.load_into(cell, iter(partial))


def test_error_lists_first_ten_names_with_counts(ms):
    cell = _tiny_cell(ms)
    arrays = _arrays_for(cell)
    arrays.update({f"junk.{i:02d}": np.ones(1) for i in range(25)})
    with pytest.raises(CheckpointError) as info:
        W.load_into(cell, arrays)
    msg = str(info.value)
    assert "25 unexpected keys" in msg and "junk.09" in msg and "junk.10" not in msg
    assert "(15 more)" in msg


def test_scalar_parameters_keep_their_shape(ms, tmp_path):
    # BatchNorm's num_batches_tracked is a 0-d tensor: a load + save + load must keep shape ().
    from mindspore import nn

    class Counter(nn.Cell):
        def __init__(self):
            super().__init__()
            self.num_batches_tracked = ms.Parameter(ms.Tensor(0, ms.int64), name="num_batches_tracked",
                                                    requires_grad=False)

    cell = Counter()
    W.load_into(cell, {"num_batches_tracked": np.array(7, np.int64)})
    assert tuple(cell.num_batches_tracked.shape) == ()
    W.write_checkpoint(tmp_path, W.state_dict_numpy(cell))
    assert W.checkpoint_keys(tmp_path)["num_batches_tracked"][1] == ()
    fresh = Counter()
    W.load_into(fresh, W.iter_checkpoint(tmp_path), expected_names=W.checkpoint_keys(tmp_path))
    assert int(fresh.num_batches_tracked.asnumpy()) == 7
