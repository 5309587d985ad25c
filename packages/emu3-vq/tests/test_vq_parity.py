"""Emu3VQModel against transformers' Emu3VQVAE: the same random checkpoint loaded in both.

The checkpoint is written by transformers itself (`save_pretrained`, the -hf layout) and, renamed
back with our table, in the original layout; both are loaded with `Emu3VQModel.from_pretrained`.
Norm affines, BatchNorm running statistics and the codebook are randomized so that a tensor that
failed to load would show. Also here: the model's input checks (no transformers needed).
"""

import json

import mindspore as ms
import numpy as np
import pytest
from emu3_vq import weights
from emu3_vq.checkpoint import hf_config_dict, state_to_original
from emu3_vq.config import Emu3VQConfig
from emu3_vq.model import BatchNorm3d, Emu3VQModel

# every kind of layer and key of the real model (two blocks per level, attention at level 3),
# small widths
PARITY_CONFIG = dict(codebook_size=64, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(3,))


def _peer(config: Emu3VQConfig, seed: int = 0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = {k: v for k, v in hf_config_dict(config).items() if k not in ("model_type", "architectures")}
    torch.manual_seed(seed)
    model = transformers.Emu3VQVAE(transformers.Emu3VQVAEConfig(**hf)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "embedding" not in name:  # conv / linear: variance-preserving
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:  # biases, norm shifts
                p.copy_(0.2 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
            elif name.endswith("num_batches_tracked"):
                b.fill_(11)
        # a codebook spread like the encoder's latents (a Gaussian fit), so images use many codes
        x = torch.rand(2, 4, 3, 32, 32) * 2 - 1
        z = model.quant_conv(model.encoder(x).permute(0, 2, 1, 3, 4)).permute(0, 2, 3, 4, 1).reshape(-1, 4)
        book = model.quantize.embedding.weight
        book.copy_(z.mean(0) + z.std(0) * torch.randn_like(book))
    return model


def _save_original(peer, config: Emu3VQConfig, directory) -> None:
    state = {k: v.detach().numpy() for k, v in peer.state_dict().items()}
    weights.write_checkpoint(directory, state_to_original(state))
    (directory / "config.json").write_text(json.dumps(config.to_dict("original")))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    config = Emu3VQConfig(**PARITY_CONFIG)
    peer = _peer(config)
    hf_dir = tmp_path_factory.mktemp("vq_hf")
    orig_dir = tmp_path_factory.mktemp("vq_original")
    peer.save_pretrained(hf_dir)
    _save_original(peer, config, orig_dir)
    return peer, Emu3VQModel.from_pretrained(hf_dir), Emu3VQModel.from_pretrained(orig_dir)


def _pixels(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _peer_encode(peer, x):
    import torch

    with torch.no_grad():
        sizes = torch.tensor([list(x.shape[-2:])] * x.shape[0])
        return np.stack([t.numpy() for t in peer.encode(torch.tensor(x), sizes).image_tokens])


def _peer_decode(peer, codes):
    import torch

    with torch.no_grad():
        return peer.decode(torch.tensor(codes.astype(np.int64))).numpy()


@pytest.mark.parity
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 3, 48, 64)])
def test_images_match_transformers(models, shape):
    peer, ours, _ = models
    x = _pixels(shape)
    codes = ours.encode(x)
    assert codes.dtype == ms.int32
    codes = codes.asnumpy()
    ref = _peer_encode(peer, x)
    assert codes.shape == ref.shape == (shape[0], shape[2] // 8, shape[3] // 8)
    np.testing.assert_array_equal(codes, ref)
    assert len(np.unique(codes)) > 3  # the codebook is really in use
    img = ours.decode(codes).asnumpy()
    ref_img = _peer_decode(peer, codes)
    assert img.shape == ref_img.shape == shape
    diff = np.abs(img - ref_img).max()
    print(f"image {shape}: codes equal, decode max |diff| {diff:.2e} (|pixels| up to {np.abs(ref_img).max():.2f})")
    assert diff < 1e-4


@pytest.mark.parity
def test_video_matches_transformers(models):
    peer, ours, _ = models
    x = _pixels((1, 8, 3, 32, 32), seed=1)
    codes = ours.encode(ms.Tensor(x)).asnumpy()  # a Tensor in, as well as numpy
    ref = _peer_encode(peer, x)
    assert codes.shape == ref.shape == (1, 2, 4, 4)
    np.testing.assert_array_equal(codes, ref)
    video = ours.decode(ms.Tensor(codes)).asnumpy()
    ref_video = _peer_decode(peer, codes)
    assert video.shape == ref_video.shape == (1, 8, 3, 32, 32)
    diff = np.abs(video - ref_video).max()
    print(f"video (1, 8, 3, 32, 32): codes equal, decode max |diff| {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.parity
def test_original_layout_loads_the_same_model(models):
    peer, from_hf, from_orig = models
    a = dict(from_hf.parameters_and_names())
    b = dict(from_orig.parameters_and_names())
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name].asnumpy(), b[name].asnumpy(), err_msg=name)
    # the BatchNorm statistics really came from the checkpoint
    rm = b["encoder.time_res_stack.1.norm2.running_mean"].asnumpy()
    np.testing.assert_array_equal(rm, peer.encoder.time_res_stack[1].norm2.running_mean.numpy())
    assert int(b["decoder.time_res_stack.0.norm1.num_batches_tracked"].asnumpy()) == 11
    x = _pixels((1, 3, 32, 32), seed=2)
    np.testing.assert_array_equal(from_orig.encode(x).asnumpy(), _peer_encode(peer, x))


@pytest.mark.parity
def test_batchnorm3d_training_mode_matches_torch():
    torch = pytest.importorskip("torch")
    bn = BatchNorm3d(4)
    ref = torch.nn.BatchNorm3d(4)
    x = _pixels((2, 4, 3, 5, 6)) * 3 + 1
    bn.set_train(True)
    y = bn(ms.Tensor(x)).asnumpy()
    ref.train()
    y_ref = ref(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean.asnumpy(), ref.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(bn.running_var.asnumpy(), ref.running_var.numpy(), atol=1e-6)
    assert int(bn.num_batches_tracked.asnumpy()) == 1
    bn.set_train(False)
    ref.eval()
    np.testing.assert_allclose(bn(ms.Tensor(x)).asnumpy(), ref(torch.tensor(x)).detach().numpy(), atol=1e-5)


@pytest.mark.slow  # real-size layers; the small ones match transformers by default
@pytest.mark.parity
def test_real_channel_sizes_match_transformers(tmp_path):
    """The released architecture (ch 256, ch_mult [1,2,2,4], codebook 32768) on one 64x64 image
    (about 20 s on 2 cores: building, saving and loading 271 M parameters, compiling)."""
    config = Emu3VQConfig.from_name("emu3-visiontokenizer")
    peer = _peer(config, seed=1)
    peer.save_pretrained(tmp_path)
    ours = Emu3VQModel.from_pretrained(tmp_path)
    x = _pixels((1, 3, 64, 64), seed=3)
    codes = ours.encode(x).asnumpy()
    np.testing.assert_array_equal(codes, _peer_encode(peer, x))
    diff = np.abs(ours.decode(codes).asnumpy() - _peer_decode(peer, codes)).max()
    print(f"real sizes, 64x64: codes equal, decode max |diff| {diff:.2e}")
    assert diff < 1e-4


# ---- input checks (no transformers needed) -----------------------------------------------

@pytest.fixture(scope="module")
def micro():
    return Emu3VQModel(Emu3VQConfig.from_name("micro"))


def test_encode_rejects_bad_input(micro):
    f = micro.config.spatial_factor
    with pytest.raises(ValueError, match="multiple of 4 frames"):
        micro.encode(np.zeros((1, 6, 3, 4 * f, 4 * f), np.float32))
    with pytest.raises(ValueError, match="multiples of 2"):
        micro.encode(np.zeros((1, 3, 4 * f + 1, 4 * f), np.float32))
    with pytest.raises(ValueError, match="channels"):
        micro.encode(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="images"):
        micro.encode(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="floating point"):
        micro.encode(np.zeros((1, 3, 8, 8), np.uint8))


def test_decode_rejects_bad_codes(micro):
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        micro.decode(np.full((1, 2, 2), 32))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        micro.decode(np.full((1, 2, 2), -1))
    with pytest.raises(ValueError, match="integers"):
        micro.decode(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="codes"):
        micro.decode(np.zeros((2, 2), np.int64))


def test_shapes_and_types(micro):
    x = _pixels((3, 3, 8, 12))  # three images: frame_batch 1 on CPU runs them one by one
    codes = micro.encode(x)
    assert isinstance(codes, ms.Tensor) and codes.dtype == ms.int32 and codes.shape == (3, 4, 6)
    assert np.array_equal(micro.encode(ms.Tensor(x)).asnumpy(), codes.asnumpy())
    img = micro.decode(codes)
    assert img.dtype == ms.float32 and img.shape == (3, 3, 8, 12)
    video = micro.decode(np.zeros((1, 2, 4, 6), np.int32))
    assert video.shape == (1, 8, 3, 8, 12)
    # one image and one 4-frame clip of it are the same input to the encoder
    clip = np.repeat(x[:1, None], 4, axis=1)
    assert np.array_equal(micro.encode(clip).asnumpy()[:, 0], codes.asnumpy()[:1])


def test_frame_batch_does_not_change_results():
    config = Emu3VQConfig.from_name("micro")
    a = Emu3VQModel(config, frame_batch=1, jit=False)
    b = Emu3VQModel(config, frame_batch=4, jit=False)
    for (_, pa), (_, pb) in zip(a.parameters_and_names(), b.parameters_and_names()):
        pb.set_data(pa.copy())
    x = _pixels((1, 8, 3, 8, 8), seed=4)
    np.testing.assert_array_equal(a.encode(x).asnumpy(), b.encode(x).asnumpy())
    codes = a.encode(x).asnumpy()
    np.testing.assert_allclose(a.decode(codes).asnumpy(), b.decode(codes).asnumpy(), atol=1e-5)
