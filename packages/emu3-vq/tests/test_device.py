"""The device policy: one table of the three targets, and the modules that read it."""

import dataclasses
import json
import pathlib
import re

import mindspore as ms
import pytest
from emu3_vq import device
from emu3_vq.config import Emu3VQConfig
from emu3_vq.device import DevicePolicy, policy

SRC = pathlib.Path(device.__file__).parent


ALL_COLLECTIVES = frozenset({"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "sub_groups"})


@pytest.mark.parametrize("target,dtype,conv,attention,transposed_head,frame_batch,jit_small,collectives", [
    ("CPU", ms.float32, "im2col", "matmul", True, 1, False, {"all_reduce", "all_gather"}),
    ("GPU", ms.float16, "ops", "matmul", False, 16, True, ALL_COLLECTIVES),
    ("Ascend", ms.bfloat16, "mint", "flash", False, 16, True, ALL_COLLECTIVES),
])
def test_policy_of_each_target(target, dtype, conv, attention, transposed_head, frame_batch, jit_small,
                               collectives):
    p = policy(target)
    assert isinstance(p, DevicePolicy)
    assert p == DevicePolicy(target, dtype, conv, attention, transposed_head, frame_batch, jit_small,
                             frozenset(collectives))


def test_policy_without_a_target_is_the_contexts():
    assert ms.get_context("device_target") == "CPU"
    assert policy() is policy("CPU")
    assert device.device_target() == "CPU"
    assert device.is_cpu() is True
    assert device.default_dtype() == ms.float32


@pytest.mark.parametrize("target", ["TPU", "cpu", ""])
def test_unknown_target_is_an_error_naming_it(target):
    with pytest.raises(ValueError, match=re.escape(repr(target))):
        policy(target)


def test_policy_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy("CPU").conv = "ops"


def test_only_device_py_reads_the_device_target():
    readers = [p.name for p in sorted(SRC.rglob("*.py")) if "get_context(\"device_target\")" in p.read_text()
               or "get_context('device_target')" in p.read_text()]
    assert readers == ["device.py"]


@pytest.fixture
def on_gpu(monkeypatch):
    """Every reader of `device.policy()` sees the GPU policy (still running on CPU)."""
    real = device.policy
    monkeypatch.setattr(device, "policy", lambda target=None: real("GPU" if target is None else target))


def test_conv_cells_follow_the_policy(on_gpu):
    from emu3_vq.kernels import Conv2d, Conv3d, GroupNorm

    assert Conv2d(4, 4, 3).impl == "ops"
    assert Conv3d(4, 4, 3).impl == "ops"
    assert GroupNorm(2, 4).explicit is False  # the written-out GroupNorm is the im2col (CPU) path's


def test_cpu_policy_is_what_kernels_and_model_pick_here():
    from emu3_vq.kernels import Conv2d, GroupNorm
    from emu3_vq.model import Emu3VQModel

    assert Conv2d(4, 4, 3).impl == policy("CPU").conv == "im2col"
    assert GroupNorm(2, 4).explicit is True
    model = Emu3VQModel(Emu3VQConfig.from_name("micro"), jit=False)
    assert model.frame_batch == policy("CPU").vq_frame_batch == 1
    assert model.encoder.conv_in.impl == "im2col"


def test_model_frame_batch_follows_the_policy(on_gpu):
    from emu3_vq.model import Emu3VQModel

    model = Emu3VQModel(Emu3VQConfig.from_name("micro"), impl="im2col", jit=False)
    assert model.frame_batch == 16  # the policy's, whatever kernel is forced
    assert Emu3VQModel(Emu3VQConfig.from_name("micro"), jit=False, frame_batch=3).frame_batch == 3


def _auto_jit(tmp_path, monkeypatch, preset):
    from emu3_vq import commands
    from emu3_vq.model import Emu3VQModel
    from emu3_vq.processor import Emu3ImageProcessor

    directory = tmp_path / preset  # only config.json and preprocessor_config.json are read here
    directory.mkdir()
    config = Emu3VQConfig.from_name(preset)
    (directory / "config.json").write_text(json.dumps(config.to_dict()))
    Emu3ImageProcessor(spatial_factor=config.spatial_factor).save_pretrained(directory)
    seen = {}
    monkeypatch.setattr(Emu3VQModel, "from_pretrained",
                        classmethod(lambda cls, path, **kw: seen.update(kw) or "model"))
    commands._Tokenizer(str(directory), "auto").model
    return seen["jit"]


def test_auto_jit_compiles_small_models_where_the_policy_says(tmp_path, monkeypatch, on_gpu):
    assert _auto_jit(tmp_path, monkeypatch, "micro") is True


def test_auto_jit_keeps_small_models_eager_on_cpu(tmp_path, monkeypatch):
    assert _auto_jit(tmp_path, monkeypatch, "micro") is False
