"""Convolution and GroupNorm kernels against torch: values, strides, asymmetric padding, gradients."""

import mindspore as ms
import numpy as np
import pytest
from emu3_vq import kernels
from emu3_vq.kernels import Conv2d, Conv3d, GroupNorm, conv2d_im2col, conv3d_im2col, upsample2x_conv3x3
from mindspore import Tensor

torch = pytest.importorskip("torch")
F = torch.nn.functional

RNG = np.random.default_rng(0)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def torch_conv2d(x, w, b, stride, pad):
    return F.conv2d(F.pad(torch.tensor(x), pad), torch.tensor(w), None if b is None else torch.tensor(b),
                    stride=stride).numpy()


def torch_conv3d(x, w, b, stride, pad):
    return F.conv3d(F.pad(torch.tensor(x), pad), torch.tensor(w), None if b is None else torch.tensor(b),
                    stride=stride).numpy()


def test_cells_pick_the_device_policys_conv_on_cpu():
    assert ms.get_context("device_target") == "CPU"
    assert Conv2d(4, 4, 3).impl == "im2col"
    assert Conv3d(4, 4, 3).impl == "im2col"
    assert Conv2d(4, 4, 3, impl="ops").impl == "ops"  # an explicit impl wins over the policy


@pytest.mark.parametrize("impl", ["im2col", "ops"])
@pytest.mark.parametrize("k,stride,pad,shape", [
    (3, 1, (1, 1, 1, 1), (2, 5, 9, 11)),     # resnet conv, non-square, batch 2
    (3, 2, (0, 1, 0, 1), (2, 5, 8, 12)),     # Emu3 downsample: asymmetric zero pad, stride 2
    (3, 2, (0, 1, 0, 1), (1, 5, 9, 7)),      # odd sides
    (1, 1, (0, 0, 0, 0), (2, 5, 6, 7)),      # 1x1 (attention projections, shortcuts)
    (1, 1, (0, 0, 0, 0), (1, 5, 6, 7)),
    (3, 1, (2, 0, 1, 0), (1, 3, 6, 5)),      # arbitrary asymmetric padding
])
def test_conv2d_matches_torch(impl, k, stride, pad, shape):
    conv = Conv2d(shape[1], 7, k, stride=stride, padding=pad, impl=impl)
    x = rand(*shape)
    y = conv(Tensor(x)).asnumpy()
    ref = torch_conv2d(x, conv.weight.asnumpy(), conv.bias.asnumpy(), stride, pad)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=2e-5, rtol=1e-5)


def test_conv_parameters_are_named_like_torch():
    conv = Conv2d(3, 8, 3, padding=1)
    assert [(n, tuple(p.shape)) for n, p in conv.parameters_and_names()] == [("weight", (8, 3, 3, 3)), ("bias", (8,))]
    conv3 = Conv3d(4, 6, (4, 3, 3))
    assert tuple(conv3.weight.shape) == (6, 4, 4, 3, 3)


def test_conv2d_in_graph_mode_with_row_bands():
    """Large maps are cut into bands of output rows; a tiny budget forces many bands."""
    x, w = rand(1, 6, 13, 10), rand(5, 6, 3, 3)

    @ms.jit
    def banded(x, w):
        return conv2d_im2col(x, w, (1, 1), (1, 1, 1, 1), chunk=200), conv2d_im2col(x, w, (2, 2), (0, 1, 0, 1), chunk=200)

    y1, y2 = banded(Tensor(x), Tensor(w))
    np.testing.assert_allclose(y1.asnumpy(), torch_conv2d(x, w, None, 1, (1, 1, 1, 1)), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(y2.asnumpy(), torch_conv2d(x, w, None, 2, (0, 1, 0, 1)), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["im2col", "ops"])
@pytest.mark.parametrize("k,stride,pad,shape", [
    ((4, 3, 3), (2, 1, 1), (1, 1, 1, 1, 2, 0), (2, 4, 4, 6, 5)),  # temporal downsample, causal pad
    ((4, 3, 3), (2, 1, 1), (1, 1, 1, 1, 2, 0), (1, 4, 2, 6, 5)),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1, 1, 2, 0), (2, 4, 4, 6, 5)),  # temporal res block / upsample conv
    ((3, 1, 1), (1, 1, 1), (0, 0, 0, 0, 2, 0), (2, 4, 4, 6, 5)),  # quant_conv / post_quant_conv
    ((1, 1, 1), (1, 1, 1), (0, 0, 0, 0, 0, 0), (2, 4, 3, 2, 5)),
])
def test_conv3d_matches_torch(impl, k, stride, pad, shape):
    conv = Conv3d(shape[1], 6, k, stride=stride, padding=pad, impl=impl)
    x = rand(*shape)
    y = conv(Tensor(x)).asnumpy()
    ref = torch_conv3d(x, conv.weight.asnumpy(), conv.bias.asnumpy(), stride, pad)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("n,chunk", [(1, kernels.IM2COL_CHUNK_ELEMENTS), (2, kernels.IM2COL_CHUNK_ELEMENTS), (1, 300)])
def test_fused_upsample_conv_matches_nearest_then_conv(n, chunk):
    x, w, b = rand(n, 6, 5, 7), rand(4, 6, 3, 3), rand(4)

    @ms.jit
    def run(x, w, b):
        return upsample2x_conv3x3(x, w, b, chunk=chunk)

    y = run(Tensor(x), Tensor(w), Tensor(b))
    ref = F.conv2d(F.interpolate(torch.tensor(x), scale_factor=2.0, mode="nearest"), torch.tensor(w),
                   torch.tensor(b), padding=1).numpy()
    assert y.shape == ref.shape
    np.testing.assert_allclose(y.asnumpy(), ref, atol=3e-5, rtol=1e-5)


def _torch_grads(fn, *arrays):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    (fn(*ts) ** 2).sum().backward()
    return [t.grad.numpy() for t in ts]


def _ms_grads(fn, x, w):
    """d/d(x, w) of sum(fn(x, w)^2), with ms.grad called inside an ms.jit graph."""
    def loss(x, w):
        return (fn(x, w) ** 2).sum()

    @ms.jit
    def grads(x, w):
        return ms.grad(loss, grad_position=(0, 1))(x, w)

    return [g.asnumpy() for g in grads(Tensor(x), Tensor(w))]


def _close_rel(a, b, tol=1e-5):
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max()), np.abs(a - b).max()


def test_gradients_flow_through_strided_asymmetric_conv2d():
    x, w = rand(2, 5, 8, 6), rand(7, 5, 3, 3, scale=0.3)
    def strided(x, w):
        return conv2d_im2col(x, w, (2, 2), (0, 1, 0, 1))

    ours = _ms_grads(strided, x, w)
    ref = _torch_grads(lambda x, w: F.conv2d(F.pad(x, (0, 1, 0, 1)), w, stride=2), x, w)
    for a, b in zip(ours, ref):
        _close_rel(a, b)


def test_gradients_flow_through_banded_conv2d_and_conv3d():
    x, w = rand(1, 4, 9, 6), rand(3, 4, 3, 3, scale=0.3)
    def banded(x, w):
        return conv2d_im2col(x, w, (1, 1), (1, 1, 1, 1), chunk=150)

    ours = _ms_grads(banded, x, w)
    ref = _torch_grads(lambda x, w: F.conv2d(x, w, padding=1), x, w)
    for a, b in zip(ours, ref):
        _close_rel(a, b)
    x3, w3 = rand(2, 4, 4, 5, 6), rand(4, 4, 4, 3, 3, scale=0.3)
    pad = (1, 1, 1, 1, 2, 0)
    def temporal(x, w):
        return conv3d_im2col(x, w, (2, 1, 1), (1, 1, 1, 1, 2, 0))

    ours = _ms_grads(temporal, x3, w3)
    ref = _torch_grads(lambda x, w: F.conv3d(F.pad(x, pad), w, stride=(2, 1, 1)), x3, w3)
    for a, b in zip(ours, ref):
        _close_rel(a, b)


def test_gradients_flow_through_fused_upsample():
    x, w = rand(1, 4, 5, 6), rand(3, 4, 3, 3, scale=0.3)
    def up(x, w):
        return upsample2x_conv3x3(x, w)

    ours = _ms_grads(up, x, w)
    ref = _torch_grads(lambda x, w: F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, padding=1), x, w)
    for a, b in zip(ours, ref):
        _close_rel(a, b)


def test_gradients_reach_conv_cell_parameters():
    conv = Conv2d(3, 4, 3, stride=2, padding=(0, 1, 0, 1))
    x = rand(1, 3, 8, 8)
    def loss(x):
        return (conv(x) ** 2).sum()

    grad_fn = ms.grad(loss, grad_position=None, weights=conv.trainable_params())
    gw, gb = grad_fn(Tensor(x))
    tw = torch.tensor(conv.weight.asnumpy(), requires_grad=True)
    tb = torch.tensor(conv.bias.asnumpy(), requires_grad=True)
    (F.conv2d(F.pad(torch.tensor(x), (0, 1, 0, 1)), tw, tb, stride=2) ** 2).sum().backward()
    _close_rel(gw.asnumpy(), tw.grad.numpy())
    _close_rel(gb.asnumpy(), tb.grad.numpy())


@pytest.mark.parametrize("impl", ["im2col", "ops"])
def test_group_norm_matches_torch(impl):
    gn = GroupNorm(4, 8, eps=1e-6, impl=impl)
    gn.weight.set_data(Tensor(rand(8)))
    gn.bias.set_data(Tensor(rand(8)))
    x = rand(2, 8, 5, 6) * 3 + 2
    ref = F.group_norm(torch.tensor(x), 4, torch.tensor(gn.weight.asnumpy()), torch.tensor(gn.bias.asnumpy()), 1e-6)
    np.testing.assert_allclose(gn(Tensor(x)).asnumpy(), ref.numpy(), atol=1e-5)


def test_compute_dtype_casts_and_stays_close():
    conv = Conv2d(4, 4, 3, padding=1, dtype=ms.float16)
    x = rand(1, 4, 6, 6)
    y = conv(Tensor(x))
    assert y.dtype == ms.float16
    ref = torch_conv2d(x, conv.weight.asnumpy(), conv.bias.asnumpy(), 1, (1, 1, 1, 1))
    np.testing.assert_allclose(y.astype(ms.float32).asnumpy(), ref, atol=3e-2, rtol=1e-2)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="padding"):
        Conv2d(3, 3, 3, padding=(1, 1))
    with pytest.raises(ValueError, match="impl"):
        Conv2d(3, 3, 3, impl="cudnn")
    with pytest.raises(ValueError, match="divisible"):
        GroupNorm(32, 48)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv2d_im2col(Tensor(rand(1, 2, 2, 2)), Tensor(rand(2, 2, 3, 3)))
